"""The Icecast sink against a real Icecast server (Debian's icecast2) on loopback."""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import av
import pytest

from netutil import RunningServer, free_port

ICECAST = shutil.which("icecast2") or shutil.which("icecast")
PASSWORD = "test-source-pw"
WRONG = "not-the-pw-4711"


def icecast_config(folder, port) -> str:
    logdir = tempfile.mkdtemp(prefix="icecast-log-")  # outside pytest's private tmp: icecast
    os.chmod(logdir, 0o777)  # drops root for `nobody`, who must write here
    owner = ("<changeowner><user>nobody</user><group>nogroup</group></changeowner>"
             if os.getuid() == 0 else "")
    path = os.path.join(folder, "icecast.xml")
    with open(path, "w") as f:
        f.write(f"""<icecast>
  <limits><sources>4</sources><clients>20</clients><source-timeout>10</source-timeout></limits>
  <authentication><source-password>{PASSWORD}</source-password>
    <admin-user>admin</admin-user><admin-password>admin-pw</admin-password></authentication>
  <hostname>127.0.0.1</hostname>
  <listen-socket><port>{port}</port><bind-address>127.0.0.1</bind-address></listen-socket>
  <listen-socket><port>{port}</port><bind-address>::1</bind-address></listen-socket>
  <paths><basedir>/usr/share/icecast2</basedir><logdir>{logdir}</logdir>
    <webroot>/usr/share/icecast2/web</webroot><adminroot>/usr/share/icecast2/admin</adminroot></paths>
  <logging><errorlog>-</errorlog><loglevel>3</loglevel></logging>
  <security><chroot>0</chroot>{owner}</security>
</icecast>""")
    return path


class Icecast:
    def __init__(self, folder, port):
        self.port = port
        self.config = icecast_config(folder, port)
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([ICECAST, "-c", self.config], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=1)
                return
            except urllib.error.HTTPError:
                return  # it answers
            except OSError:
                time.sleep(0.1)
        raise AssertionError("icecast did not start")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)


def mount_status(port, mount) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status-json.xsl", timeout=10) as r:
        sources = json.loads(r.read())["icestats"].get("source", [])
    sources = sources if isinstance(sources, list) else [sources]
    return next((source for source in sources if source["listenurl"].endswith(mount)), {})


def decoded_seconds(url, seconds=2.5):
    container = av.open(url, timeout=10)
    stream = container.streams.audio[0]
    total, started = 0, time.monotonic()
    for frame in container.decode(stream):
        total += frame.samples
        if time.monotonic() - started > seconds:
            break
    container.close()
    return total / stream.codec_context.sample_rate, stream.codec_context.name


@pytest.mark.skipif(ICECAST is None, reason="icecast2 is not installed (.ci/run installs it)")
def test_icecast_mounts_play_and_the_source_reconnects(tmp_path):
    icecast = Icecast(str(tmp_path), free_port())
    icecast.start()
    base = f"icecast://source:{PASSWORD}@127.0.0.1:{icecast.port}"
    server = RunningServer("--stride", "3", "--context", "3", "--icecast", base + "/radio.opus",
                           "--icecast", base + "/radio.mp3", "--icecast",
                           f"icecast://source:{WRONG}@127.0.0.1:{icecast.port}/refused.mp3",
                           "--icecast", f"icecast://source:{PASSWORD}@[::1]:{icecast.port}/v6.opus")
    try:
        server.wait_for_log("radio.opus: connected", timeout=30)
        server.wait_for_log("radio.mp3: connected", timeout=30)
        server.wait_for_log(f"icecast://source@[::1]:{icecast.port}/v6.opus: connected", timeout=30)
        server.wait_for_log("refused.mp3: refused: wrong source user or password (HTTP 401)", timeout=30)
        outputs = server.status()["outputs"]
        refused = outputs[f"icecast icecast://source@127.0.0.1:{icecast.port}/refused.mp3"]
        assert refused["state"] == "retrying" and "401" in refused["error"] and refused["retry_in_seconds"] >= 1
        assert outputs[f"icecast icecast://source@[::1]:{icecast.port}/v6.opus"]["state"] == "connected"
        assert outputs["encoder mp3"]["state"] == "encoding" and outputs["encoder pcm"]["state"] == "idle"
        # The MP3 mount's title is the prompt playing (Icecast's admin metadata update).
        server.wait_for_log("radio.mp3: title updated", timeout=30)
        deadline = time.monotonic() + 15
        while "lofi" not in mount_status(icecast.port, "/radio.mp3").get("title", ""):
            assert time.monotonic() < deadline, mount_status(icecast.port, "/radio.mp3")
            time.sleep(0.2)  # Icecast publishes its statistics on its own schedule
        for mount, codec in (("/radio.opus", "opus"), ("/radio.mp3", "mp3")):
            seconds, name = decoded_seconds(f"http://127.0.0.1:{icecast.port}{mount}")
            assert name.startswith(codec)
            assert seconds > 1.5, (mount, seconds)
        # The server goes away and comes back: the source says so and reconnects.
        icecast.stop()
        server.wait_for_log("retrying in", timeout=30)
        icecast.start()
        server.wait_for_log("radio.opus: connected", timeout=60, count=2)
        server.wait_for_log("radio.mp3: connected", timeout=60, count=2)
        seconds, _ = decoded_seconds(f"http://127.0.0.1:{icecast.port}/radio.mp3")
        assert seconds > 1.5
        assert server.proc.poll() is None  # the station never stopped
        assert PASSWORD not in server.log and WRONG not in server.log  # secrets masked everywhere
    finally:
        server.stop()
        icecast.stop()


@pytest.mark.skipif(ICECAST is None, reason="icecast2 is not installed (.ci/run installs it)")
def test_two_machines_push_their_stations_to_one_icecast(tmp_path):
    """README "Several machines": two server processes (here on one machine) push different
    mounts to one Icecast master: a lineup of two stations with a mount each, and a single
    station; every mount plays from the master."""
    icecast = Icecast(str(tmp_path), free_port())
    icecast.start()
    base = f"icecast://source:{PASSWORD}@127.0.0.1:{icecast.port}"
    lineup_file = tmp_path / "machine-1.toml"
    lineup_file.write_text(f'[[station]]\nname = "lofi"\nprompt = "warm lofi"\nicecast = "{base}/lofi.opus"\n\n'
                           f'[[station]]\nname = "dub"\nprompt = "slow dub"\nicecast = ["{base}/dub.mp3"]\n')
    first = RunningServer("--stations", str(lineup_file), "--stride", "2", "--context", "2", stdout=False)
    second = RunningServer("--prompt", "late night jazz", "--stride", "2", "--context", "2",
                           "--icecast", base + "/jazz.opus")
    try:
        for server, mount in ((first, "lofi.opus"), (first, "dub.mp3"), (second, "jazz.opus")):
            server.wait_for_log(f"{mount}: connected", timeout=60)
        for mount, codec in (("/lofi.opus", "opus"), ("/dub.mp3", "mp3"), ("/jazz.opus", "opus")):
            seconds, name = decoded_seconds(f"http://127.0.0.1:{icecast.port}{mount}")
            assert name.startswith(codec) and seconds > 1.5, (mount, seconds)
        outputs = json.loads(urllib.request.urlopen(first.url + "/s/dub/status", timeout=10).read())["outputs"]
        assert outputs[f"icecast icecast://source@127.0.0.1:{icecast.port}/dub.mp3"]["state"] == "connected"
        assert PASSWORD not in first.log and PASSWORD not in second.log
    finally:
        first.stop()
        second.stop()
        icecast.stop()
