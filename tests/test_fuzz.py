"""Fuzzing the control protocol and every HTTP path (hypothesis): random JSON, wrong types, huge
and deeply nested values, invalid UTF-8, binary frames, odd query strings. Every input gets an
error or a close, the server stays up, and a refused command changes nothing."""
import asyncio
import http.client
import json
import urllib.parse

import pytest
import websockets
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine.net.control import COMMAND_FIELDS, ControlAuth, Controller
from engine.station.config import ModelConfig, StationConfig
from engine.station.station import Station
from netutil import RunningServer

TOKEN = "fuzz-token-0123456789"
FIELDS = sorted(set().union(*COMMAND_FIELDS.values()) | {"id", "token"})

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20)
# Command-shaped objects reach the deeper checks: a known type or not, known fields with any value.
commands = st.builds(
    lambda kind, fields: dict(fields, type=kind),
    st.sampled_from(list(COMMAND_FIELDS) + ["", "ping ", "SET_PROMPT", "x" * 100]) | json_values,
    st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), json_values, max_size=5))
messages = commands | json_values


@pytest.fixture(scope="module")
def controller(tiny_model):
    station = Station(StationConfig(stride_seconds=1, context_seconds=1, window_seconds=2), tiny_model, model_config=ModelConfig("tiny"))
    return Controller(station, ControlAuth("127.0.0.1", TOKEN))


@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(message=messages, with_token=st.booleans())
def test_every_command_gets_a_result_or_an_error_and_a_refusal_changes_nothing(controller, message, with_token):
    steering = controller.station.steering
    before = steering.latest
    result = controller.handle(message, TOKEN if with_token else None)
    status = result.pop("http_status", 200)
    json.dumps(result, allow_nan=False)  # valid JSON for any client: no NaN or Infinity
    pending = steering.take()
    if result["type"] == "error":
        assert status in (400, 401, 403) and result["error"] and pending == []
        assert steering.latest == before
    else:
        assert with_token and result["ok"] and message["type"] in COMMAND_FIELDS
        assert len(pending) == (0 if message["type"] == "status" else 1)


@pytest.fixture(scope="module")
def server():
    s = RunningServer("--stride", "2", "--context", "2", "--control-token", TOKEN, "--control-rate", "10000")
    yield s
    s.stop()


def request(server, method, target, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body or b"")))
        conn.endheaders(body or None)
        response = conn.getresponse()
        streaming = response.getheader("Content-Type", "").startswith("audio/")
        return response.status, (response.read(2048) if streaming else response.read()), response.getheader("Content-Type", "")
    finally:
        conn.close()


paths = st.sampled_from(["/", "/status", "/healthz", "/metrics", "/control", "/ws", "/stream.mp3", "/stream.opus",
                         "/web/app.js", "/web/../server.py", "/web/%2e%2e/server.py", "/nope", "//", "/status/"])
queries = st.lists(st.tuples(st.text(max_size=12), st.text(max_size=30)), max_size=4)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(path=paths, query=queries, method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD"]),
       body=st.binary(max_size=600) | st.builds(lambda m: json.dumps(m).encode(), messages)
       | st.sampled_from([b"[" * 4000, b"[" * 5000, b"{\"a\":" * 800, b"\xff\xfe\xfd", b"x" * 9000]))
@example(path="/control", query=[], method="POST", body=b"[" * 4000)  # too deep for json: a RecursionError
def test_every_http_path_answers_without_a_server_error(server, path, query, method, body):
    target = path + ("?" + urllib.parse.urlencode(query) if query else "")
    status, data, content_type = request(server, method, target, body if method in ("POST", "PUT") else None,
                                      {"Authorization": f"Bearer {TOKEN}"})
    assert status < 500, (status, data[:300])
    assert not (path == "/web/../server.py" or "%2e" in path) or status in (403, 404)
    if path == "/control" and method == "POST":
        answer = json.loads(data)
        assert answer["type"] in ("result", "error") and (answer["type"] == "result") == (status == 200)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(frames=st.lists(st.binary(max_size=100) | st.text(max_size=200)
                       | st.builds(lambda m: json.dumps(m), messages) | st.sampled_from(["x" * 5000, "[" * 4000]),
                       min_size=1, max_size=4))
@example(frames=["[" * 4000, '{"type": "status"}'])
def test_every_websocket_message_gets_an_answer_or_a_close(server, frames):
    async def talk():
        async with websockets.connect(server.ws_url + f"?codec=pcm&token={TOKEN}", max_queue=None) as ws:
            await ws.recv()  # hello
            for frame in frames:
                try:
                    await ws.send(frame)
                    while True:  # skip audio and status messages until the answer
                        message = await asyncio.wait_for(ws.recv(), 10)
                        if isinstance(message, str) and json.loads(message)["type"] in ("result", "error", "pong"):
                            break
                except websockets.ConnectionClosed as closed:
                    assert closed.rcvd is not None and closed.rcvd.code in (1003, 1008, 1009), closed
                    return "closed"
            return "answered"
    assert asyncio.run(talk()) in ("answered", "closed")


def test_the_server_is_up_and_well_after_the_fuzzing(server):
    status, data, _ = request(server, "GET", "/healthz")
    assert status == 200 and json.loads(data)["ok"]
    assert "Traceback" not in server.log and "Error handling request" not in server.log, server.log[-3000:]
    assert server.status()["underruns"] == 0


def test_a_generated_token_goes_on_a_command_line_as_printed():
    """The printed token is pasted after `--token` (clients/control.py, curl): it must never
    look like a flag, nor need quoting in a URL or a shell."""
    import argparse
    import re
    tokens = {ControlAuth("127.0.0.1", None).token for _ in range(3000)}
    assert len(tokens) == 3000  # fresh each start
    parser = argparse.ArgumentParser()
    parser.add_argument("--token")
    for token in tokens:
        assert re.fullmatch(r"[0-9a-f]{32}", token), token
        assert parser.parse_args(["--token", token]).token == token
    assert ControlAuth("0.0.0.0", None).token is None  # off the loopback: no token, control off
