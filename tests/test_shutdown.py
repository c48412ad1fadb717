"""SIGTERM / SIGINT: listeners are told why (a close frame with a reason; HTTP streams end
cleanly), the recording is finalised, the state is saved; a second signal exits at once."""
import asyncio
import signal
import socket
import threading
import urllib.request

import pytest
import soundfile
import websockets

from engine.station.state import FILE_NAME, StationState
from netutil import SR, RunningServer


async def listen_until_closed(url: str, connected: threading.Event):
    async with websockets.connect(url, max_queue=None) as ws:
        connected.set()
        try:
            while True:
                await ws.recv()
        except websockets.ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None, closed.rcvd.reason if closed.rcvd else None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_closes_listeners_with_a_reason_and_saves_everything(tmp_path, sig):
    record, state_dir = tmp_path / "radio.flac", tmp_path / "state"
    server = RunningServer("--record", str(record), "--state-dir", str(state_dir), "--stride", "2",
                           "--context", "2")
    try:
        server.wait_for_program(2 * SR * 2)  # 2 s played
        ws_connected, http_result = threading.Event(), {}

        def http_listener():
            with urllib.request.urlopen(server.url + "/stream.mp3", timeout=30) as r:
                http_result["first"] = r.read(1000)
                http_result["rest"] = r.read()  # to the end: IncompleteRead if cut, not ended

        http = threading.Thread(target=http_listener)
        http.start()

        async def scenario():
            ws = asyncio.ensure_future(listen_until_closed(server.ws_url + "?codec=pcm", ws_connected))
            await asyncio.get_running_loop().run_in_executor(None, ws_connected.wait, 30)
            while "first" not in http_result:
                await asyncio.sleep(0.05)
            server.proc.send_signal(sig)
            return await asyncio.wait_for(ws, 30)

        code, reason = asyncio.run(scenario())
        http.join(30)
        with server.changed:
            server.changed.wait_for(lambda: server.stdout_closed, 60)
        rc = server.proc.wait(timeout=60)
    finally:
        server.stop()
    assert rc == 0, server.log[-3000:]
    assert (code, reason) == (1001, "the station is shutting down")
    assert len(http_result["first"]) == 1000 and "rest" in http_result  # the response ended cleanly
    assert "stopping cleanly (send it again to exit at once)" in server.log
    info = soundfile.info(str(record))
    assert info.frames == len(server.program) // 2 and info.frames >= 2 * SR
    saved = StationState.from_bytes(open(state_dir / FILE_NAME, "rb").read())
    assert saved.stride_index >= 2 and "state: saved in" in server.log


def test_a_second_signal_exits_at_once(tmp_path):
    server = RunningServer("--record", str(tmp_path / "radio.wav"))
    try:
        # A WebSocket peer that never answers a close frame: a clean stop waits on it a while.
        mute = socket.create_connection(("127.0.0.1", server.port))
        mute.sendall(b"GET /ws?codec=pcm HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        server.wait_for_log("listener joined: ws-pcm")
        server.proc.send_signal(signal.SIGTERM)
        server.wait_for_log("stopping cleanly")
        server.proc.send_signal(signal.SIGTERM)
        rc = server.proc.wait(timeout=30)
        mute.close()
    finally:
        server.stop()
    with server.changed:
        server.changed.wait_for(lambda: "exiting at once" in server.log, 10)
    assert rc == 130 and "SIGTERM again: exiting at once" in server.log
