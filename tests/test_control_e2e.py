"""Steering a running station over POST /control and the WebSocket, with real clients."""
import asyncio
import json
import re
import time
import urllib.error
import urllib.request

import pytest
import websockets

from netutil import RunningServer


@pytest.fixture(scope="module")
def server():
    s = RunningServer("--stride", "2", "--context", "2", "--seed", "11")
    yield s
    s.stop()


def token_of(server) -> str:
    found = re.findall(r"Steer the station at http://127\.0\.0\.1:\d+/\?token=(\S+)", server.log)
    assert len(found) == 1, server.log[-2000:]  # printed once
    return found[0]


def post(server, command, token=None, raw=None):
    request = urllib.request.Request(server.url + "/control", method="POST",
                                     data=raw if raw is not None else json.dumps(command).encode(),
                                     headers={"Content-Type": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def wait_for_status(server, predicate, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        status = server.status()
        if predicate(status):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.05)


def test_the_generated_token_is_printed_once_and_never_logged(server):
    token = token_of(server)
    assert len(token) >= 16
    log_lines = [line for line in server.stderr_lines if " INFO " in line or " WARNING " in line]
    assert not any(token in line for line in log_lines)
    assert "control: a token was generated" in server.log


@pytest.mark.parametrize("command, token, code, message", [
    ({"type": "set_prompt", "prompt": "jazz"}, None, 401, "needs the station's token"),
    ({"type": "set_prompt", "prompt": "jazz"}, "wrong-token-123", 401, "needs the station's token"),
    ({"type": "fly"}, "TOKEN", 400, "unknown command 'fly'"),
    ({"type": "set_prompt", "prompt": "  \n "}, "TOKEN", 400, "non-empty"),
    ({"type": "set_prompt", "prompt": "x" * 2001}, "TOKEN", 400, "limit is 2000"),
    ({"type": "set_prompt", "prompt": "jazz", "when": "later"}, "TOKEN", 400, "when must be"),
    ({"type": "set_prompt", "prompt": "jazz", "tempo": 3}, "TOKEN", 400, "does not take tempo"),
    ({"type": "set_params", "temperature": 99}, "TOKEN", 400, "temperature must be between 0 and 10"),
    ({"type": "set_params", "top_k": 2.5}, "TOKEN", 400, "top_k must be an integer"),
    ({"type": "set_params", "cfg": "high"}, "TOKEN", 400, "cfg must be a number"),
    ({"type": "set_params"}, "TOKEN", 400, "needs at least one of"),
    (["set_prompt"], "TOKEN", 400, "a command is a JSON object"),
])
def test_bad_or_unauthorised_commands_are_refused_and_change_nothing(server, command, token, code, message):
    before = server.status()["control"]
    status, result = post(server, command, token_of(server) if token == "TOKEN" else token)
    assert status == code and result["type"] == "error" and message in result["error"], result
    assert server.status()["control"] == before


def test_set_params_next_and_status_say_when_it_will_be_heard(server):
    token = token_of(server)
    status, result = post(server, {"type": "set_params", "temperature": 0.7, "top_k": 100, "when": "next",
                                   "id": "a1"}, token)
    assert status == 200 and result["ok"] and result["id"] == "a1" and result["when"] == "next"
    upcoming = result["status"]["upcoming"]
    assert upcoming and upcoming[-1]["temperature"] == 0.7 and upcoming[-1]["heard_in_seconds"] > 0
    server.wait_for_log("control: temperature 0.7, top_k 100 from", timeout=30)
    playing = wait_for_status(server, lambda s: s["control"]["playing"]["temperature"] == 0.7, timeout=30)
    assert playing["control"]["playing"]["top_k"] == 100
    status, result = post(server, {"type": "status"}, token)
    assert status == 200 and result["status"]["playing"]["temperature"] == 0.7


def test_a_prompt_cut_in_over_the_websocket_is_heard_within_seconds(server):
    token = token_of(server)

    async def steer():
        async with websockets.connect(f"{server.ws_url}?codec=pcm&token={token}", max_queue=None) as ws:
            await ws.recv()
            sent = time.monotonic()
            await ws.send(json.dumps({"type": "set_prompt", "prompt": "Drum & bass \"live\"\n— ünïcödé",
                                      "when": "now", "id": 9}))
            while True:
                message = await asyncio.wait_for(ws.recv(), timeout=10)
                if isinstance(message, str) and json.loads(message).get("type") == "result":
                    return sent, json.loads(message)

    sent, result = asyncio.run(steer())
    assert result["id"] == 9 and result["when"] == "now"
    heard = wait_for_status(server, lambda s: s["prompt"] == 'Drum & bass "live" — ünïcödé', timeout=60)
    latency = time.monotonic() - sent
    print(f"cut-in latency (tiny model, CPU, command → playing): {latency:.2f} s")
    assert "cut in" in server.log
    assert heard["control"]["playing"]["prompt"] == heard["prompt"]
    assert server.proc.poll() is None


def test_a_new_piece_keeps_the_stream_playing(server):
    token = token_of(server)
    played = server.status()["played_seconds"]
    status, result = post(server, {"type": "new_piece", "when": "next"}, token)
    assert status == 200 and result["ok"]
    server.wait_for_log("new piece from", timeout=30)
    wait_for_status(server, lambda s: s["played_seconds"] > played + 2)
    assert server.status()["underruns"] == 0
