"""The WebSocket framing is defined once (engine/net/protocol.py); the standalone Python listener
keeps its own copy, pinned here to the same format."""
import importlib.util
import os

from engine.net import protocol

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_listener_script():
    spec = importlib.util.spec_from_file_location("listen", os.path.join(ROOT, "clients", "listen.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_framed_packet_parses_back_to_its_fields():
    message = protocol.framer("opus")(2**32 + 7, 123_456_789_012, b"payload")
    frame = protocol.parse(message)
    assert frame == (protocol.PROTOCOL_VERSION, protocol.CODEC_IDS["opus"], 7, 123_456_789_012, b"payload")
    assert len(message) == protocol.HEADER.size + len(b"payload") == 16 + 7


def test_the_python_listener_reads_the_servers_header():
    listen = load_listener_script()
    assert listen.HEADER.format == protocol.HEADER.format and listen.HEADER.size == protocol.HEADER.size
    message = protocol.framer("pcm")(41, 96_000, b"\x01\x00\x02\x00")
    version, codec_id, _, seq, stream_sample = listen.HEADER.unpack_from(message)
    assert (version, codec_id, seq, stream_sample) == (1, 0, 41, 96_000)
    assert message[listen.HEADER.size:] == b"\x01\x00\x02\x00"


def test_the_page_reads_the_same_header():
    with open(os.path.join(ROOT, "clients", "web", "app.js")) as f:
        app = f.read()
    assert f"const HEADER_BYTES = {protocol.HEADER.size};" in app
    # sequence u32 at byte 4, program sample index i64 at byte 8, little-endian
    assert "view.getUint32(4, true)" in app and "view.getBigInt64(8, true)" in app


def test_hello_says_how_to_decode():
    hello = protocol.hello(codec="opus", sample_rate=48000, stream_sample_rate=32000, channels=2,
                           frame_samples=2880, burst_seconds=2.0, max_lag_seconds=10.0,
                           station={"model": "tiny"}, opus_head=b"OpusHead")
    assert hello["protocol"] == 1 and hello["header_bytes"] == 16 and hello["opus_head"] == "T3B1c0hlYWQ="
    assert "opus_head" not in protocol.hello(
        codec="pcm", sample_rate=32000, stream_sample_rate=32000, channels=1, frame_samples=1920,
        burst_seconds=2.0, max_lag_seconds=10.0, station={})
