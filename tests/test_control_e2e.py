"""Steering a running station over POST /control and the WebSocket, with real clients."""
import asyncio
import json
import re
import subprocess
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

    underruns = server.status()["underruns"]
    sent, result = asyncio.run(steer())
    assert result["id"] == 9 and result["when"] == "now"
    heard = wait_for_status(server, lambda s: s["prompt"] == 'Drum & bass "live" — ünïcödé', timeout=60)
    latency = time.monotonic() - sent
    print(f"cut-in latency (tiny model, CPU, command → playing): {latency:.2f} s")
    assert "cut in" in server.log
    assert heard["control"]["playing"]["prompt"] == heard["prompt"]
    wait_for_status(server, lambda s: s["played_seconds"] > heard["played_seconds"] + 1.5)
    assert server.status()["underruns"] == underruns  # the cut-in left no gap
    # The MP3 stream's ICY title follows, quotes and Unicode intact (read by ffmpeg -icy 1).
    probe = subprocess.run(["ffmpeg", "-hide_banner", "-icy", "1", "-i", server.url + "/stream.mp3",
                            "-t", "1", "-f", "null", "-"], capture_output=True, text=True, timeout=60)
    assert "StreamTitle     : Drum & bass \"live\" — ünïcödé" in probe.stderr, probe.stderr[-2000:]
    assert server.proc.poll() is None


def test_weighted_prompts_morph_in_and_status_shows_the_weights(server):
    token = token_of(server)
    status, result = post(server, {"type": "set_prompts", "when": "now", "morph_seconds": 3,
                                   "prompts": [{"text": "cello drone", "weight": 3},
                                               {"text": "rain", "weight": 1}]}, token)
    assert status == 200 and result["ok"], result
    change = result["status"]["upcoming"][-1]
    assert [(p["text"], p["weight"]) for p in change["prompts"]] == [("cello drone", 0.75), ("rain", 0.25)]
    morphing = wait_for_status(server, lambda s: "morph_frames_left" in s["control"]["playing"]
                               and len(s["control"]["playing"]["prompts"]) == 3, timeout=30)
    assert "cello drone" in morphing["prompt"] and "%" in morphing["prompt"]
    assert morphing["control"]["playing"]["title"] == "cello drone (75%) + rain (25%)"  # the stream title
    done = wait_for_status(server, lambda s: "morph_frames_left" not in s["control"]["playing"]
                           and len(s["control"]["playing"]["prompts"]) == 2, timeout=30)
    assert {p["text"]: p["weight"] for p in done["control"]["playing"]["prompts"]} == {"cello drone": 0.75, "rain": 0.25}
    for bad, message in (([], "a list of 1 to 4"), ([{"text": "a", "weight": 0}], "above 0"),
                         ([{"text": str(i)} for i in range(5)], "a list of 1 to 4"),
                         ([{"text": "a", "loudness": 2}], "a list of 1 to 4")):
        status, result = post(server, {"type": "set_prompts", "prompts": bad}, token)
        assert status == 400 and message in result["error"], (bad, result)


def test_a_new_piece_keeps_the_stream_playing(server):
    token = token_of(server)
    before = server.status()
    status, result = post(server, {"type": "new_piece", "when": "next"}, token)
    assert status == 200 and result["ok"]
    server.wait_for_log("new piece from", timeout=30)
    wait_for_status(server, lambda s: s["played_seconds"] > before["played_seconds"] + 2)
    assert server.status()["underruns"] == before["underruns"]


def test_the_command_line_client_steers_and_reports_refusals(server):
    import subprocess
    import sys
    from netutil import ROOT
    script = [sys.executable, f"{ROOT}/clients/control.py", "--url", server.url]
    ok = subprocess.run(script + ["--token", token_of(server), "set-params", "--cfg", "4.5", "--when", "next"],
                        capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    answer = json.loads(ok.stdout)
    assert answer["ok"] and answer["command"] == "set_params"
    assert any(change.get("cfg") == 4.5 for change in answer["status"]["upcoming"])
    refused = subprocess.run(script + ["status"], capture_output=True, text=True, timeout=30)
    assert refused.returncode == 1 and "needs the station's token" in refused.stdout
    unreachable = subprocess.run([sys.executable, f"{ROOT}/clients/control.py", "--url", "http://127.0.0.1:9",
                                  "status"], capture_output=True, text=True, timeout=30)
    assert unreachable.returncode == 2 and "cannot reach the station" in unreachable.stderr


def scrape(server) -> dict:
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_metrics_parse_and_their_counters_move(server):
    before = scrape(server)
    for name in ("radio_stride_generation_seconds_count", "radio_real_time_factor", "radio_buffered_seconds",
                 "radio_underruns_total", "radio_listeners_dropped_total", "radio_generation_errors_total",
                 "radio_prompt_change_latency_seconds_count"):
        assert (name, ()) in before, name
    assert post(server, {"type": "status"}, token_of(server))[0] == 200
    assert post(server, {"type": "status"})[0] == 401

    async def listen():  # a listener, so that bytes are sent
        return await asyncio.wait_for(receive_some(f"{server.ws_url}?codec=pcm"), timeout=10)
    asyncio.run(listen())
    strides = server.log.count("(real-time factor")  # one line per stride
    server.wait_for_log("(real-time factor", count=strides + 1, timeout=30)
    after = scrape(server)

    def value(metrics, name, **labels):
        return metrics.get((name, tuple(sorted(labels.items()))), 0.0)
    assert value(after, "radio_control_commands_total", command="status", result="ok") == \
        value(before, "radio_control_commands_total", command="status", result="ok") + 1
    assert value(after, "radio_control_commands_total", command="status", result="refused") >= 1
    assert value(after, "radio_sent_bytes_total", stream="pcm") > value(before, "radio_sent_bytes_total", stream="pcm")
    assert after[("radio_stride_generation_seconds_count", ())] > before[("radio_stride_generation_seconds_count", ())]
    assert after[("radio_prompt_change_latency_seconds_count", ())] >= 1  # the changes made above were heard


async def receive_some(url, packets=20):
    async with websockets.connect(url, max_queue=None) as ws:
        await ws.recv()
        got = 0
        while got < packets:
            if isinstance(await ws.recv(), bytes):
                got += 1
