"""The station on the network, with real clients on loopback."""
import asyncio
import json
import socket
import subprocess
import time

import av
import numpy as np
import pytest
import websockets

from netutil import SR, RunningServer, receive

BURST = 1.0
MAX_LAG = 4.0


@pytest.fixture(scope="module")
def server():
    s = RunningServer("--stride", "3", "--context", "3", "--burst", str(BURST), "--max-lag", str(MAX_LAG),
                      "--seed", "9")
    yield s
    s.stop()


def run(coro):
    return asyncio.run(coro)


def test_hello_describes_the_stream(server):
    hello, packets, _, _ = run(receive(server.ws_url + "?codec=pcm", 0.5))
    assert hello["type"] == "hello" and hello["protocol"] == 1 and hello["codec"] == "pcm"
    assert hello["sample_rate"] == SR and hello["channels"] == 1 and hello["frame_samples"] == 1920
    assert hello["header_bytes"] == 16 and hello["station"]["model"] == "tiny"
    assert hello["station"]["seed"] == 9 and "lofi" in hello["station"]["prompt"]
    hello, _, _, _ = run(receive(server.ws_url, 0.2))  # default codec
    assert hello["codec"] == "opus" and hello["sample_rate"] == 48000 and hello["opus_head"]


def test_pcm_arrives_at_real_time_pace_and_equals_what_was_played(server):
    _, packets, statuses, elapsed = run(receive(server.ws_url + "?codec=pcm", 4.0))
    seqs = [p[0] for p in packets]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "gap in sequence numbers"
    samples = sum(len(p[2]) // 2 for p in packets)
    assert abs(samples / SR - (BURST + elapsed)) < 0.6, (samples / SR, elapsed)
    for (_, at, payload), (_, nxt, _) in zip(packets, packets[1:]):
        assert nxt == at + len(payload) // 2, "stream time is not contiguous"
    assert statuses and statuses[0]["type"] == "status" and "real_time_factor" in statuses[0]
    # The same stream time carries the same samples as the station's played program (stdout).
    first = packets[0][1]
    received = b"".join(p[2] for p in packets)
    server.wait_for_program(2 * first + len(received), timeout=5)
    assert bytes(server.program[2 * first:2 * first + len(received)]) == received


def test_opus_decodes_with_pyav(server):
    import base64
    hello, packets, _, _ = run(receive(server.ws_url + "?codec=opus", 2.0))
    ctx = av.CodecContext.create("libopus", "r")
    ctx.extradata = base64.b64decode(hello["opus_head"])
    ctx.sample_rate = 48000
    ctx.layout = "mono"
    decoded = []
    for _, _, payload in packets:
        for frame in ctx.decode(av.Packet(payload)):
            decoded.append(frame.to_ndarray().reshape(-1))
    audio = np.concatenate(decoded).astype(np.float64)
    audio = audio / (32768.0 if np.abs(audio).max() > 2 else 1.0)
    assert audio.size >= 48000 * 2.5  # burst + 2 s
    assert np.sqrt(np.mean(audio ** 2)) > 0.01


def test_two_listeners_joining_at_different_times_hear_the_same_audio(server):
    async def both():
        early_heard = asyncio.Event()  # the early listener has 1.5 s of packets (25 × 60 ms)
        early = asyncio.ensure_future(receive(server.ws_url + "?codec=pcm", 4.0,
                                              received=lambda n: n >= 25 and early_heard.set()))
        await early_heard.wait()
        late = asyncio.ensure_future(receive(server.ws_url + "?codec=pcm", 2.0))
        return await early, await late
    (_, a, _, _), (_, b, _, _) = run(both())
    by_time = {at: payload for _, at, payload in a}
    common = [at for _, at, _ in b if at in by_time]
    assert len(common) > 15
    assert all(by_time[at] == payload for _, at, payload in b if at in by_time)


def test_stalled_listener_is_dropped_and_others_play_on(server):
    async def scenario():
        import websockets
        dropped_before = server.status()["listeners_dropped"]
        stalled = await websockets.connect(server.ws_url + "?codec=pcm", max_queue=1)
        sock = stalled.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.transport.pause_reading()  # reads nothing from now on
        healthy = asyncio.ensure_future(receive(server.ws_url + "?codec=pcm", MAX_LAG + 8))
        started = time.monotonic()
        drops = server.log.count("listener dropped: ws-pcm, too slow")
        await asyncio.to_thread(server.wait_for_log, "listener dropped: ws-pcm, too slow",
                                MAX_LAG + 15, drops + 1)
        dropped_after = time.monotonic() - started
        assert server.status()["listeners_dropped"] > dropped_before
        _, packets, _, _ = await healthy
        stalled.transport.abort()
        return dropped_after, packets
    dropped_after, packets = run(scenario())
    assert dropped_after >= MAX_LAG - 0.5
    server.wait_for_log("dropped: ws-pcm, too slow", timeout=10)
    seqs = [p[0] for p in packets]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # the other listener had no gap
    assert sum(len(p[2]) for p in packets) / 2 / SR > MAX_LAG + 7


def test_malformed_client_messages_close_with_the_right_code(server):
    async def send_and_wait(payload):
        async with websockets.connect(server.ws_url + "?codec=pcm", max_queue=None) as ws:
            await ws.recv()
            await ws.send(payload)
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), timeout=5)
            except websockets.ConnectionClosed as closed:
                return closed.rcvd.code if closed.rcvd else None

    async def ping():
        async with websockets.connect(server.ws_url + "?codec=pcm", max_queue=None) as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "ping"}))
            while True:
                message = await asyncio.wait_for(ws.recv(), timeout=5)
                if isinstance(message, str) and json.loads(message)["type"] == "pong":
                    return True

    async def error_reply(payload):
        async with websockets.connect(server.ws_url + "?codec=pcm", max_queue=None) as ws:
            await ws.recv()
            await ws.send(payload)
            while True:
                message = await asyncio.wait_for(ws.recv(), timeout=5)
                if isinstance(message, str) and json.loads(message)["type"] == "error":
                    return json.loads(message)

    assert run(send_and_wait("hello?")) == 1008
    assert run(send_and_wait("[1, 2]")) == 1008
    error = run(error_reply(json.dumps({"type": "skip", "id": 5})))  # answered, connection kept
    assert error["id"] == 5 and "needs the station's token" in error["error"]  # asked first
    assert run(send_and_wait(b"\x00\x01")) == 1003
    assert run(send_and_wait("x" * 10000)) == 1009
    assert run(ping())
    assert server.status()["played_seconds"] > 0  # the station goes on
    with pytest.raises(websockets.InvalidStatus):
        run(receive(server.ws_url + "?codec=flac", 0.1))


def test_connect_disconnect_cycles_leak_nothing(server):
    async def cycles(n):
        for i in range(n):
            async with websockets.connect(server.ws_url + ("?codec=pcm" if i % 2 else ""), max_queue=None) as ws:
                await ws.recv()
                if i % 3 == 0:
                    await ws.recv()
            if i % 4 == 0:  # an abrupt disconnect, no close handshake
                ws2 = await websockets.connect(server.ws_url)
                ws2.transport.abort()

    def wait_until_everyone_left():
        joined = server.log.count("listener joined:")
        server.wait_for_log("listener left:", timeout=30, count=joined)

    run(cycles(20))  # warm up
    wait_until_everyone_left()
    fds_before, tasks_before = server.open_fds(), server.status()["network_tasks"]
    run(cycles(200))
    wait_until_everyone_left()
    status = server.status()
    assert status["listeners_total"] == 0
    assert server.open_fds() <= fds_before + 2
    assert status["network_tasks"] <= tasks_before + 2


@pytest.mark.parametrize("path, codec", [("/stream.opus", "opus"), ("/stream.mp3", "mp3")])
def test_http_streams_are_endless_and_decodable(server, path, codec):
    container = av.open(server.url + path, timeout=10)
    stream = container.streams.audio[0]
    assert stream.codec_context.name.startswith(codec)  # opus, mp3 or mp3float decoders
    samples, started = 0, time.monotonic()
    for frame in container.decode(stream):
        samples += frame.samples
        if time.monotonic() - started > 3:
            break
    container.close()
    seconds = samples / stream.codec_context.sample_rate
    assert seconds > BURST + 2.0  # still flowing after the burst: endless until closed
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,sample_rate",
                            "-of", "json", "-read_intervals", "%+2", server.url + path],
                           capture_output=True, timeout=30, text=True)
    info = json.loads(probe.stdout)["streams"][0]
    assert info["codec_name"] == codec


def test_status_reports_listeners_per_kind(server):
    async def with_listener():
        joined = server.log.count("listener joined: ws-pcm")
        async with websockets.connect(server.ws_url + "?codec=pcm", max_queue=None) as ws:
            await ws.recv()
            await asyncio.to_thread(server.wait_for_log, "listener joined: ws-pcm", 10, joined + 1)
            return server.status()
    status = run(with_listener())
    assert status["listeners"].get("ws-pcm") == 1
    for key in ("model", "prompt", "seed", "sample_rate", "buffered_seconds", "real_time_factor",
                "underruns", "uptime_seconds", "reader_overruns", "output_underflows", "channels"):
        assert key in status


def test_stalled_http_listener_is_dropped(server):
    dropped_before = server.status()["listeners_dropped"]
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(b"GET /stream.mp3 HTTP/1.1\r\nHost: localhost\r\n\r\n")  # then reads nothing
    drops = server.log.count("listener dropped: http-mp3, too slow")
    left = server.log.count("listener left: http-mp3")
    try:
        started = time.monotonic()
        server.wait_for_log("listener dropped: http-mp3, too slow", timeout=MAX_LAG + 30, count=drops + 1)
        assert time.monotonic() - started >= MAX_LAG - 0.5
        assert server.status()["listeners_dropped"] > dropped_before
        server.wait_for_log("listener left: http-mp3", timeout=5, count=left + 1)
        assert not server.status()["listeners"].get("http-mp3")
    finally:
        sock.close()
