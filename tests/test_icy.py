"""ICY metadata blocks and their interleaving (engine/net/icy.py)."""
from engine.net.icy import IcyInterleaver, header_safe, title_block


def parse_blocks(stream: bytes, metaint: int):
    audio, titles, at = bytearray(), [], 0
    while at < len(stream):
        audio += stream[at:at + metaint]
        at += metaint
        if at >= len(stream):
            break
        length = stream[at] * 16
        titles.append(stream[at + 1:at + 1 + length].rstrip(b"\0").decode("utf-8"))
        at += 1 + length
    return bytes(audio), titles


def test_any_prompt_is_a_safe_title():
    block = title_block("it's a \"quoted\"\nünïcode; prompt")
    assert block[0] * 16 + 1 == len(block)
    text = block[1:].rstrip(b"\0").decode("utf-8")
    assert text == "StreamTitle='it\u2019s a \"quoted\" ünïcode, prompt';"
    long_block = title_block("ü" * 5000)  # cut to the largest block, on a character boundary
    assert len(long_block) <= 1 + 255 * 16 and long_block[1:].rstrip(b"\0").decode("utf-8").endswith("';")
    assert header_safe("a\r\nb ü") == "a  b  " and len(header_safe("x" * 999)) == 200


def test_blocks_come_every_metaint_bytes_and_only_when_the_title_changes():
    icy = IcyInterleaver(metaint=100)
    audio = bytes(range(256)) * 4
    out = b"".join(icy.wrap(audio[i:i + 70], "one" if i < 500 else "two") for i in range(0, len(audio), 70))
    got_audio, titles = parse_blocks(out, 100)
    assert got_audio == audio
    assert titles[0] == "StreamTitle='one';" and set(titles[1:4]) == {""}
    assert "StreamTitle='two';" in titles and titles[-1] == ""
