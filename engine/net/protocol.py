"""The WebSocket protocol (version 1), in one place for the server and the tests.

The server first sends a JSON `hello`; then binary audio messages, each a 16-byte little-endian
header (`HEADER`: version u8, codec u8 (0 PCM, 1 Opus), reserved u16, sequence number u32, program
sample index i64 at the stream's rate of the packet's first sample) followed by the payload
(interleaved s16le PCM, or one raw Opus packet); and every few seconds a JSON `status`. The
client may send `{"type": "ping"}`. clients/listen.py keeps its own copy of `HEADER` so that it
stays a standalone script (tests/test_protocol.py pins the two together).
"""
from __future__ import annotations

import base64
import struct
import typing as tp

PROTOCOL_VERSION = 1
HEADER = struct.Struct("<BBHIq")
CODEC_IDS = {"pcm": 0, "opus": 1}
#: Close codes besides the standard ones (1003, 1008, 1009): a listener dropped for lagging.
CLOSE_TOO_SLOW = 4000
#: Standard codes the station closes with: it is shutting down; it is full (try again later).
CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN_LATER = 1013
#: Client messages longer than this are refused (close 1009).
MAX_CLIENT_MESSAGE_BYTES = 4096


class Frame(tp.NamedTuple):
    version: int
    codec_id: int
    seq: int
    stream_sample: int
    payload: bytes


def framer(codec: str) -> tp.Callable[[int, int, bytes], bytes]:
    """(seq, stream_sample, payload) → the binary message for `codec` ("pcm" | "opus")."""
    codec_id = CODEC_IDS[codec]

    def frame(seq: int, stream_sample: int, payload: bytes) -> bytes:
        return HEADER.pack(PROTOCOL_VERSION, codec_id, 0, seq & 0xFFFFFFFF, stream_sample) + payload
    return frame


def parse(message: bytes) -> Frame:
    """A binary audio message → its header fields and payload."""
    version, codec_id, _reserved, seq, stream_sample = HEADER.unpack_from(message)
    return Frame(version, codec_id, seq, stream_sample, bytes(message[HEADER.size:]))


def hello(*, codec: str, sample_rate: int, stream_sample_rate: int, channels: int,
          frame_samples: int, burst_seconds: float, max_lag_seconds: float, station: dict,
          opus_head: tp.Optional[bytes] = None) -> dict:
    """The first message of a connection: what the stream is and how to decode it."""
    message = {
        "type": "hello", "protocol": PROTOCOL_VERSION, "codec": codec, "sample_rate": sample_rate,
        "stream_sample_rate": stream_sample_rate, "channels": channels,
        "frame_samples": frame_samples, "header_bytes": HEADER.size,
        "burst_seconds": burst_seconds, "max_lag_seconds": max_lag_seconds, "station": station,
    }
    if opus_head is not None:
        message["opus_head"] = base64.b64encode(opus_head).decode()
    return message
