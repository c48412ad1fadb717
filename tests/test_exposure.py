"""What the network may ask of a station: cross-site pages, listener caps, slow handshakes,
control floods; secrets never logged; encoders idle while nobody listens. Real clients on
loopback (127.0.0.x source addresses stand for different hosts)."""
import asyncio
import http.client
import json
import socket
import time

import pytest
import websockets

from netutil import RunningServer, free_port

TOKEN = "tok-8c1f-very-secret"
ICECAST_PASSWORD = "pw-3b7e-never-logged"
FRIEND = "https://friend.example"


@pytest.fixture(scope="module")
def server():
    s = RunningServer("--stride", "2", "--context", "2", "--control-token", TOKEN, "--allow-origin", FRIEND,
                      "--max-listeners", "3", "--max-listeners-per-ip", "2", "--handshake-timeout", "1",
                      "--control-rate", "2", "--icecast",
                      f"icecast://source:{ICECAST_PASSWORD}@127.0.0.1:{free_port()}/closed.mp3")
    yield s
    s.stop()


def request(server, method, path, body=None, headers=None, source="127.0.0.1"):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10, source_address=(source, 0))
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read() if method != "GET" or not path.startswith("/stream") else b""
    return response, data, conn


def control(server, command, source="127.0.0.1", headers=None):
    response, data, conn = request(server, "POST", "/control", json.dumps(command),
                                   dict({"Authorization": f"Bearer {TOKEN}"}, **(headers or {})), source)
    conn.close()
    return response.status, json.loads(data), response.headers


async def ws_hello(server, origin=None, source="127.0.0.1"):
    headers = {"Origin": origin} if origin else {}
    async with websockets.connect(server.ws_url + "?codec=pcm", additional_headers=headers,
                                  local_addr=(source, 0)) as ws:
        return json.loads(await ws.recv())


def test_cross_site_pages_are_refused_unless_allowed(server):
    with pytest.raises(websockets.InvalidStatus) as refused:
        asyncio.run(ws_hello(server, origin="https://evil.example"))
    assert refused.value.response.status_code == 403
    assert asyncio.run(ws_hello(server, origin=FRIEND))["type"] == "hello"
    assert asyncio.run(ws_hello(server, origin=server.url))["type"] == "hello"  # the station's own page
    assert asyncio.run(ws_hello(server))["type"] == "hello"  # not a browser

    code, result, _ = control(server, {"type": "status"}, source="127.0.0.9", headers={"Origin": "https://evil.example"})
    assert code == 403 and "--allow-origin" in result["error"]
    code, result, headers = control(server, {"type": "status"}, source="127.0.0.9", headers={"Origin": FRIEND})
    assert code == 200 and result["ok"] and headers["Access-Control-Allow-Origin"] == FRIEND
    for origin, expected in ((FRIEND, 204), ("https://evil.example", 403)):
        response, _, conn = request(server, "OPTIONS", "/control", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST"})
        conn.close()
        assert response.status == expected
        assert (response.headers.get("Access-Control-Allow-Origin") == origin) == (expected == 204)


def test_listener_caps_overall_and_per_address(server):
    async def scenario():
        stack, outcomes = [], {}
        for source in ("127.0.0.1", "127.0.0.1", "127.0.0.2"):  # 3: the cap; 2 from one address
            ws = await websockets.connect(server.ws_url + "?codec=pcm", local_addr=(source, 0))
            await ws.recv()
            stack.append(ws)
        for name, source in (("same address", "127.0.0.1"), ("full", "127.0.0.3")):
            ws = await websockets.connect(server.ws_url + "?codec=pcm", local_addr=(source, 0))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    await ws.recv()
            outcomes[name] = (closed.value.rcvd.code, closed.value.rcvd.reason)
        loop = asyncio.get_running_loop()
        response, _, conn = await loop.run_in_executor(None, lambda: request(server, "GET", "/stream.mp3",
                                                                             source="127.0.0.4"))
        outcomes["http"] = (response.status, response.headers.get("Retry-After"))
        conn.close()
        for ws in stack:
            await ws.close()
        return outcomes

    outcomes = asyncio.run(scenario())
    assert outcomes["same address"] == (1013, "too many listeners from your address (at most 2)")
    assert outcomes["full"] == (1013, "the station is full (3 listeners); try again later")
    assert outcomes["http"] == (503, "30")
    deadline = time.monotonic() + 10  # the slots are free again once they left
    while server.status()["listeners_total"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert asyncio.run(ws_hello(server, source="127.0.0.3"))["type"] == "hello"


def test_a_slow_or_silent_handshake_is_cut(server):
    slow, silent = socket.create_connection(("127.0.0.1", server.port)), socket.create_connection(("127.0.0.1", server.port))
    started = time.monotonic()
    slow.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n")  # headers never finished
    for sock in (slow, silent):
        sock.settimeout(10)
        try:
            assert sock.recv(1024) == b""  # closed by the server
        except ConnectionResetError:
            pass  # cut: equally closed
        sock.close()
    assert time.monotonic() - started < 8
    server.wait_for_log("cut a connection that sent no complete request within 1 s", count=2)
    assert server.status()["played_seconds"] > 0  # and a whole request is answered as ever


def test_control_is_rate_limited_per_client_and_a_refusal_changes_nothing(server):
    codes = [control(server, {"type": "set_prompt", "prompt": f"flood {i}", "when": "next"},
                     source="127.0.0.5")[0] for i in range(12)]
    assert codes[:8] == [200] * 8 and 429 in codes[8:]  # a burst of 4 × 2 per second, then refused
    code, result, _ = control(server, {"type": "status"}, source="127.0.0.5")
    assert code == 429 and "too many commands: at most 2 per second" in result["error"]
    assert control(server, {"type": "status"}, source="127.0.0.6")[0] == 200  # another client is unaffected
    status = server.status()["control"]
    seen = {c.get("prompt") for c in status["upcoming"]} | {status["playing"]["prompt"]}
    refused = {f"flood {i}" for i, code in enumerate(codes) if code == 429}
    assert refused and not refused & seen and "flood 0" not in refused

    async def over_websocket():
        async with websockets.connect(server.ws_url + f"?codec=pcm&token={TOKEN}", local_addr=("127.0.0.7", 0)) as ws:
            await ws.recv()
            answers = []
            for i in range(12):
                await ws.send(json.dumps({"type": "status", "id": i}))
                while True:
                    message = await ws.recv()
                    if isinstance(message, bytes):
                        continue  # audio
                    message = json.loads(message)
                    if message.get("id") == i:
                        answers.append(message)
                        break
            return answers
    answers = asyncio.run(over_websocket())
    assert [a["type"] for a in answers[:8]] == ["result"] * 8
    assert answers[-1]["type"] == "error" and "too many commands" in answers[-1]["error"]


def test_secrets_never_reach_the_log(server):
    control(server, {"type": "status"}, source="127.0.0.8")
    response, _, conn = request(server, "GET", f"/status?token={TOKEN}", source="127.0.0.8")
    conn.close()
    server.wait_for_log("closed.mp3", timeout=30)  # the Icecast source has failed to connect at least once
    assert f"icecast://source@127.0.0.1" in server.log
    assert TOKEN not in server.log and ICECAST_PASSWORD not in server.log


def test_encoders_do_no_work_while_nobody_listens(server):
    def encoder_states():
        return {name: o["state"] for name, o in server.status()["outputs"].items() if name.startswith("encoder")}

    deadline = time.monotonic() + 10
    # Earlier tests' listeners have left, and more than the burst has been played.
    while set(encoder_states().values()) != {"idle"} or server.status()["played_seconds"] < 3:
        assert time.monotonic() < deadline, encoder_states()
        time.sleep(0.05)

    async def listen():
        async with websockets.connect(server.ws_url + "?codec=opus", max_queue=None) as ws:
            hello = json.loads(await ws.recv())
            started, audio = time.monotonic(), 0
            while time.monotonic() - started < 0.5:
                message = await asyncio.wait_for(ws.recv(), 5)
                if isinstance(message, bytes):
                    audio += hello["frame_samples"]
            states = encoder_states()
            return audio / hello["sample_rate"], states

    seconds, states = asyncio.run(listen())
    assert states["encoder opus"] == "encoding" and states["encoder mp3"] == "idle" and states["encoder pcm"] == "idle"
    assert seconds >= 2.0  # its 2 s burst (encoded on waking) plus what came in 0.5 s
