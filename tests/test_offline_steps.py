"""README's "Offline, step by step" run as written: the connected machine's lines against a
Hugging Face hub on loopback (tests/fakehub.py) serving the published configs' test checkpoints,
then the offline machine's lines with the network cut and an empty Hugging Face cache."""
import os
import re
import subprocess
import sys

import pytest

from engine.models.stems import STEM_SPLITTER, hub_repo
from fakehub import FakeHub
from netutil import ROOT
from published import T5_NAME, write_checkpoint, write_htdemucs, write_melody_clip, write_t5

#: What each offline server line gets added, so that it stops after one second of audio.
ONE_SECOND = "--no-play --no-network --stdout --duration 1 --stride 1 --context 1"


def readme_steps():
    """The command lines of README's offline block: (connected-machine lines, offline lines)."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    block = re.search(r"\*\*Offline, step by step\.\*\*.*?```bash\n(.*?)```", text, re.S).group(1)
    lines = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    return ([line for line in lines if not line.startswith("HF_HUB_OFFLINE=1")],
            [line for line in lines if line.startswith("HF_HUB_OFFLINE=1")])


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    t5 = write_t5(str(root / T5_NAME))
    demucs = write_htdemucs(str(root / STEM_SPLITTER))
    repos = {T5_NAME: t5, hub_repo(): demucs}
    for seed, model in enumerate(("musicgen-small", "musicgen-melody")):
        repos[f"facebook/{model}"] = str(root / model)
        write_checkpoint(str(root / model), model, t5, seed=seed, demucs_folder=demucs)
    with FakeHub(repos) as served:
        yield served


def run_lines(lines, cwd, env):
    for line in lines:
        result = subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, timeout=600)
        yield line, result


def machine(tmp_path, name):
    """A working folder laid out as the project's root: .venv, server.py and engine."""
    folder = tmp_path / name
    folder.mkdir()
    for entry in (".venv", "server.py", "engine"):
        os.symlink(os.path.join(ROOT, entry), folder / entry)
    write_melody_clip(folder / "tune.wav", seconds=4.0)
    return folder


def test_the_readmes_offline_steps_work_as_written(hub, tmp_path, network_cut):
    connected, offline = readme_steps()
    assert any("engine.fetch_model" in line for line in connected) and any("hf download" in line for line in connected)
    assert len(offline) == 2 and any("--melody" in line for line in offline)
    online_env = dict(os.environ, **network_cut, HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-online"),
                      HF_HUB_DISABLE_UPDATE_CHECK="1")  # the hf CLI would ask PyPI for a newer version
    online_env.pop("HF_HUB_OFFLINE")  # connected: the hub on loopback is the only host there is
    offline_env = dict(os.environ, **network_cut, HF_HOME=str(tmp_path / "hf-empty"), PYTHONUNBUFFERED="1")
    everything = machine(tmp_path, "all-lines")
    for line, result in run_lines(connected, everything, online_env):
        assert result.returncode == 0, (line, result.stderr.decode()[-3000:])
    assert {"state_dict.bin", "compression_state_dict.bin", T5_NAME} <= set(os.listdir(everything / "musicgen-small"))
    assert {STEM_SPLITTER, T5_NAME} <= set(os.listdir(everything / "musicgen-melody"))
    for line, result in run_lines([f"{line} {ONE_SECOND}" for line in offline], everything, offline_env):
        err = result.stderr.decode()
        assert result.returncode == 0 and len(result.stdout) == 32000 * 2, (line, err[-3000:])
        assert "from the Hugging Face cache" not in err  # the folder alone
    assert "melody: tune.wav, 4.0 s, looped" in err
    by_hand = machine(tmp_path, "by-hand")  # the hf lines alone make a folder that plays
    for line, result in run_lines([line for line in connected if "hf download" in line], by_hand, online_env):
        assert result.returncode == 0, (line, result.stderr.decode()[-3000:])
    small = [f"{line} {ONE_SECOND}" for line in offline if "musicgen-small" in line]
    for line, result in run_lines(small, by_hand, offline_env):
        assert result.returncode == 0 and len(result.stdout) == 32000 * 2, (line, result.stderr.decode()[-3000:])
    assert any(r.startswith("GET /facebook/musicgen-melody/resolve/") for r in hub.requests)
    assert any(r.startswith(f"GET /{hub_repo()}/resolve/") for r in hub.requests)
