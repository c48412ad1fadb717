"""ICY (SHOUTcast) metadata: the prompt playing as the stream title of `/stream.mp3`, for players
that ask with `Icy-MetaData: 1` (VLC, ffmpeg's `-icy 1`, most internet-radio apps). Every
`metaint` bytes of audio the server inserts one length byte (× 16) and that many bytes of
`StreamTitle='...';`, zero-padded; an unchanged title is a single zero byte."""
from __future__ import annotations

#: Audio bytes between two metadata blocks (SHOUTcast's usual 16000).
ICY_METAINT = 16000
#: The longest metadata block ICY allows: 255 × 16 bytes.
MAX_BLOCK_BYTES = 255 * 16


def header_safe(text: str, limit: int = 200) -> str:
    """Any prompt text as an HTTP header value: printable ASCII, one line, at most `limit`."""
    return "".join(ch if 32 <= ord(ch) < 127 else " " for ch in text)[:limit]


def title_block(title: str) -> bytes:
    """`StreamTitle='title';` as one metadata block. Any text is safe: one line, no single
    quote (which would end the value: it becomes ’), UTF-8, cut to fit the block."""
    clean = " ".join(title.split()).replace("'", "\u2019").replace(";", ",")
    body = clean.encode("utf-8")[:MAX_BLOCK_BYTES - len("StreamTitle='';")]
    body = body.decode("utf-8", errors="ignore").encode("utf-8")  # no cut character at the end
    text = b"StreamTitle='" + body + b"';"
    blocks = -(-len(text) // 16)
    return bytes([blocks]) + text.ljust(blocks * 16, b"\0")


class IcyInterleaver:
    """Puts a metadata block after every `metaint` bytes of one listener's audio."""

    def __init__(self, metaint: int = ICY_METAINT):
        self.metaint = metaint
        self._until_block = metaint
        self._sent_title: str | None = None

    def wrap(self, audio: bytes, title: str) -> bytes:
        out = []
        while audio:
            take = min(len(audio), self._until_block)
            out.append(audio[:take])
            audio = audio[take:]
            self._until_block -= take
            if self._until_block == 0:
                out.append(title_block(title) if title != self._sent_title else b"\0")
                self._sent_title = title
                self._until_block = self.metaint
        return b"".join(out)
