"""Several stations on one model through server.py (tiny model): each plays its own music under
/s/NAME/ (page, WebSocket, Opus stream, status), the lineup is at /, and a fault in one station
leaves the others playing."""
import asyncio
import json
import os
import re
import urllib.error
import urllib.request

import av
import pytest

from netutil import RunningServer, receive
from pageutil import ARTIFACTS, CHROMIUM, play_in_chromium

PROMPTS = {"a": "dusty boom bap", "b": "ambient drone with strings", "c": "fast breakbeat"}


@pytest.fixture(scope="module")
def lineup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lineup")
    stations = folder / "stations.toml"
    stations.write_text(f'[[station]]\nname = "c"\nprompt = "{PROMPTS["c"]}"\nseed = 11\ntemperature = 0.8\n'
                        f'top_k = 100\nstride = 2\nrecord = "{folder / "c.flac"}"\n')
    server = RunningServer("--station", f"a={PROMPTS['a']}", "--station", f"b={PROMPTS['b']}", "--stations",
                           str(stations), "--stride", "1", "--context", "1", "--seed", "5", "--max-stations", "4",
                           stdout=False,
                           env=dict(os.environ, RADIO_FAULTS="b/raise@stride:2,b/raise@stride:2"))
    for name in PROMPTS:
        server.wait_for_log(f"[{name}] pre-fill: done", timeout=120)
    yield server, folder
    server.stop()


def get(server, path):
    with urllib.request.urlopen(server.url + path, timeout=10) as response:
        return response.status, response.read()


def post(server, path, command, token=None, origin=None):
    """(HTTP status, JSON answer) of a control command."""
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    headers |= {"Origin": origin} if origin else {}
    request = urllib.request.Request(server.url + path, data=json.dumps(command).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_each_station_plays_its_own_music_under_its_routes(lineup):
    server, _ = lineup
    heard = {}
    for name, prompt in PROMPTS.items():
        hello, packets, _, _ = asyncio.run(receive(f"ws://127.0.0.1:{server.port}/s/{name}/ws?codec=pcm", 1.0))
        assert hello["station"]["prompt"] == prompt and packets, name
        heard[name] = b"".join(p[2] for p in packets)
        status = json.loads(get(server, f"/s/{name}/status")[1])
        assert status["prompt"] == prompt and status["strides"] >= 1
    assert len({bytes(v[:32000]) for v in heard.values()}) == 3  # three different streams
    everything = json.loads(get(server, "/status")[1])["stations"]
    assert {name: s["prompt"] for name, s in everything.items()} == PROMPTS
    assert everything["a"]["seed"] == 5 and everything["b"]["seed"] == 6 and everything["c"]["seed"] == 11
    code, page = get(server, "/")
    assert code == 200 and all(f'href="/s/{n}/"' in page.decode() and p in page.decode() for n, p in PROMPTS.items())
    code, station_page = get(server, "/s/a")  # redirected to /s/a/
    assert code == 200 and b"<html" in station_page.lower()
    assert json.loads(get(server, "/healthz")[1])["ok"] is True
    batch = json.loads(get(server, "/status")[1])["batch"]
    assert batch["slots"] == 4 and batch["stations"] == ["a", "b", "c"] and batch["stations_per_step"] > 1.0
    metrics = get(server, "/metrics")[1].decode()
    for name in PROMPTS:
        assert f'radio_strides_total{{station="{name}"}}' in metrics
    assert metrics.count("# TYPE radio_strides_total counter") == 1  # one family, labelled
    container = av.open(f"{server.url}/s/c/stream.opus", timeout=10)
    frames = [f for _, f in zip(range(20), container.decode(container.streams.audio[0]))]
    container.close()
    assert len(frames) == 20
    outputs = json.loads(get(server, "/s/c/status")[1])["outputs"]
    assert any(name.startswith("record") and o["state"] == "writing" for name, o in outputs.items()), outputs
    assert os.path.exists(str(lineup[1] / "c.flac") + ".json")  # the sidecar of how it is made, as --record's


def test_a_fault_in_one_station_leaves_the_others_playing(lineup):
    server, _ = lineup
    server.wait_for_log("[b] fault drill: raise at stride 2", count=2, timeout=60)
    server.wait_for_log("[b] stride 2:", timeout=60)  # b recovered: its stride 2 came on a retry
    statuses = json.loads(get(server, "/status")[1])["stations"]
    for name in ("a", "c"):
        assert statuses[name]["underruns"] == 0 and not statuses[name]["failed"], statuses[name]
        assert f"[{name}] fault drill" not in server.log
    assert "[b] stride 2 failed" in server.log or "[b] stride 2: " in server.log


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is not installed (.ci/run installs it)")
def test_a_stations_page_plays_in_chromium(lineup):
    server, _ = lineup
    os.makedirs(ARTIFACTS, exist_ok=True)
    result = asyncio.run(play_in_chromium(f"{server.url}/s/b/?codec=pcm", os.path.join(ARTIFACTS, "page-station-b.png")))
    assert not result["errors"], result["errors"]
    assert result["stats"]["audible"] > 48000 and result["figures"]["prompt"] == PROMPTS["b"]


def test_stations_are_added_and_removed_while_the_others_play(lineup):
    import aiohttp
    server, _ = lineup
    token = re.findall(r"\?token=(\S+)", server.log)[0]
    add = {"type": "add_station", "name": "d", "prompt": "rainy piano", "seed": 9, "id": 1}
    assert post(server, "/control", add)[0] == 401  # the control token is needed
    code, answer = post(server, "/control", add, token)
    assert code == 200 and answer["ok"] and "d" in answer["stations"] and answer["id"] == 1, answer
    server.wait_for_log("[d] pre-fill: done", timeout=60)
    status = json.loads(get(server, "/s/d/status")[1])
    assert status["prompt"] == "rainy piano" and status["seed"] == 9
    assert post(server, "/control", add, token)[0] == 409  # the name is taken
    full = post(server, "/control", {"type": "add_station", "name": "e", "prompt": "x"}, token)
    assert full[0] == 409 and "slots" in full[1]["error"]  # 4 slots: a, b, c, d
    assert post(server, "/control", {"type": "add_station", "name": "bad name", "prompt": "x"}, token)[0] == 400
    assert post(server, "/control", {"type": "set_prompt", "prompt": "x"}, token)[0] == 400  # a station's command
    cross_site = post(server, "/control", {"type": "stations"}, token, origin="https://elsewhere.example")
    assert cross_site[0] == 403 and "cross-site" in cross_site[1]["error"]

    async def listen_while_removed():
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"ws://127.0.0.1:{server.port}/s/d/ws?codec=pcm") as ws:
                await ws.receive()  # the hello
                removal = asyncio.get_running_loop().run_in_executor(
                    None, post, server, "/control", {"type": "remove_station", "name": "d"}, token)
                while (msg := await ws.receive(timeout=30)).type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                    pass
                return msg, await removal
    closed, (code, answer) = asyncio.run(listen_while_removed())
    assert code == 200 and answer["stations"] == ["a", "b", "c"], answer
    assert closed.data == 1001 and closed.extra == "the station was removed"
    with pytest.raises(urllib.error.HTTPError) as gone:
        get(server, "/s/d/status")
    assert gone.value.code == 404
    strides = json.loads(get(server, "/s/a/status")[1])["strides"]
    server.wait_for_log(f"[a] stride {strides + 1}:", timeout=30)  # the others play on
    statuses = json.loads(get(server, "/status")[1])["stations"]
    assert set(statuses) == {"a", "b", "c"} and statuses["a"]["underruns"] == 0 and statuses["c"]["underruns"] == 0
    mix = [{"text": "slow dub", "weight": 3}, {"text": "rain"}]
    code, answer = post(server, "/control", {"type": "add_station", "name": "e", "prompts": mix}, token)
    assert code == 200, answer  # the freed slot takes a new station, here from weighted prompts
    server.wait_for_log("[e] pre-fill: done", timeout=60)
    playing = json.loads(get(server, "/s/e/status")[1])["control"]["playing"]["prompts"]
    assert [(p["text"], p["weight"]) for p in playing] == [("slow dub", 0.75), ("rain", 0.25)]


def test_lineup_mistakes_fail_in_one_clear_line(tmp_path):
    import subprocess
    import sys

    from netutil import ROOT
    cases = {
        ("--stdout",): "--stdout carries one station",
        ("--no-network",): "drop --no-network",
        ("--max-stations", "1", "--station", "b=y"): "--max-stations 1 is fewer than the 2 stations given",
        ("--max-stations", "100000"): "100000 stations need",
        ("--station", "a=z"): "two stations are named 'a'",
    }
    for args, message in cases.items():
        result = subprocess.run([sys.executable, os.path.join(ROOT, "server.py"), "--model", "tiny", "--no-play",
                                 "--port", "0", "--station", "a=x", *args], cwd=ROOT, capture_output=True, timeout=120)
        err = result.stderr.decode()
        assert result.returncode == 2 and message in err, (args, err[-2000:])
        assert "Traceback" not in err
