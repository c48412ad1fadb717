"""The listener page in real headless Chromium, and the Python listener, against a real station."""
import asyncio
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from netutil import ROOT, RunningServer
from pageutil import ARTIFACTS, CHROMIUM, play_in_chromium, tuned_in_page

@pytest.fixture(scope="module")
def server():
    s = RunningServer("--stride", "3", "--context", "3", "--seed", "3", "--prompt", "dusty boom bap")
    yield s
    s.stop()


async def steer_in_chromium(url: str, prompt: str, screenshot: str) -> dict:
    async with tuned_in_page(url) as (page, errors):
        hidden = await page.evaluate("document.getElementById('steer').hidden")
        if not hidden:
            await page.fill(".prompt-text", prompt)
            await page.click("#apply")
            await page.wait_for_function("window.radio.lastControl", timeout=10000)
            await page.wait_for_function(
                f"document.getElementById('prompt').textContent === {prompt!r}", timeout=30000)
        result = await page.evaluate("window.radio.lastControl || null")
        message = await page.inner_text("#steer-message")
        await page.screenshot(path=screenshot)
        return {"hidden": hidden, "result": result, "message": message, "errors": errors}


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is not installed (.ci/run installs it)")
def test_the_page_steers_with_the_printed_token_and_is_listen_only_without(server):
    import re
    token = re.findall(r"\?token=(\S+)", server.log)[0]
    os.makedirs(ARTIFACTS, exist_ok=True)
    steered = asyncio.run(steer_in_chromium(f"{server.url}/?codec=pcm&token={token}", "chromium jazz",
                                            os.path.join(ARTIFACTS, "page-steer.png")))
    assert not steered["errors"], steered["errors"]
    assert not steered["hidden"] and steered["result"]["type"] == "result", steered
    assert "accepted" in steered["message"]
    assert server.status()["prompt"] == "chromium jazz"
    listening = asyncio.run(steer_in_chromium(f"{server.url}/?codec=pcm", "x", os.path.join(ARTIFACTS, "page-listen.png")))
    assert listening["hidden"] and listening["result"] is None


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is not installed (.ci/run installs it)")
@pytest.mark.parametrize("codec", ["opus", "pcm"])
def test_page_plays_non_silent_audio_in_chromium(server, codec):
    os.makedirs(ARTIFACTS, exist_ok=True)
    shot = os.path.join(ARTIFACTS, f"page-{codec}.png")
    result = asyncio.run(play_in_chromium(f"{server.url}/?codec={codec}", shot))
    stats, figures = result["stats"], result["figures"]
    assert not result["errors"], result["errors"]
    assert stats["codec"] == codec and stats["packets"] > 20
    assert stats["audible"] > 48000 and stats["peak"] > 0.01  # the worklet played real samples
    assert figures["connection"] == "live"
    assert figures["prompt"] == server.status()["prompt"] and "tiny" in figures["model"]
    assert figures["codec"].startswith(codec)
    assert figures["rtf"].endswith("×") and figures["buffered"].endswith("s")
    assert int(figures["listeners"]) >= 1
    assert os.path.getsize(shot) > 5000


@pytest.mark.parametrize("codec", ["opus", "pcm"])
def test_python_listener_writes_a_file(server, tmp_path, codec):
    out = tmp_path / f"listen-{codec}.wav"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "clients", "listen.py"), server.ws_url,
                             "--codec", codec, "--out", str(out), "--duration", "3"],
                            capture_output=True, timeout=60, text=True)
    assert result.returncode == 0, result.stderr
    audio, rate = soundfile.read(str(out))
    assert rate == (48000 if codec == "opus" else 32000)
    assert audio.shape[0] == 3 * rate
    assert np.sqrt(np.mean(audio ** 2)) > 0.01
    assert "tuned in: tiny" in result.stderr
