"""--state-dir: the station saves what it needs after every stride, atomically, and a restart
continues the same music; a state it cannot use is refused and the station starts fresh."""
import os
import signal
import subprocess
import sys

import pytest
import torch

from engine.station.config import ModelConfig, StationConfig
from engine.station.state import FILE_NAME, StateError, StateStore, StationState
from engine.station.station import Station
from engine.station.steering import Change
from netutil import ROOT


def make_station(tiny_model, state_dir=None, seconds=3.0, **overrides):
    config = dict(stride_seconds=1, context_seconds=1, window_seconds=2, duration_seconds=seconds,
                  buffer_ahead_seconds=seconds + 1, seed=11, prompt="slow piano", state_dir=state_dir)
    config.update(overrides)
    return Station(StationConfig(**config), tiny_model, model_config=ModelConfig("tiny"))


def generate(station):
    """Run the producer to the station's end (the playhead stays at 0: nothing waits); returns
    {stride index: (context it was given, codes it made)}."""
    strides = {}
    real = station.generator.next_stride

    def spy(conditioning, frames, progress=None, **drill):
        index, context = station.generator.stride_index, station.generator.context
        codes = real(conditioning, frames, progress, **drill)
        strides[index] = (None if context is None else context.clone(), codes)
        return codes
    station.generator.next_stride = spy
    station.producer.run()
    assert station.producer.error is None
    return strides  # (the warm-up's entry is overwritten by the real stride of the same index)


def morph(station):
    """A 3.5 s morph to two prompts from the first stride: still under way after 3 strides."""
    station.steering.submit(Change(prompts=(("slow piano", 0.25), ("fast drums", 0.75)),
                                   morph_seconds=3.5, when="next", sampling={"temperature": 0.9}))


PROGRAMME = """loop = true
[[entries]]
prompt = "rain"
seconds = 1.5
[[entries]]
prompts = [{text = "rock", weight = 3}, {text = "rain", weight = 1}]
seconds = 2
morph_seconds = 1
"""


@pytest.mark.parametrize("steered_by", ["a morph", "a schedule"])
def test_a_restart_continues_exactly_where_the_saved_state_left_off(tiny_model, tmp_path, steered_by):
    extra = {}
    if steered_by == "a schedule":
        programme = tmp_path / "programme.toml"
        programme.write_text(PROGRAMME)
        extra = {"schedule_path": str(programme)}
    state_dir = str(tmp_path / "state")
    whole = make_station(tiny_model, seconds=5, **extra)
    first = make_station(tiny_model, state_dir, seconds=3, **extra)
    if steered_by == "a morph":
        morph(whole), morph(first)
    reference = generate(whole)
    generate(first)
    saved = StateStore(state_dir, first.state_store.signature).load()
    assert saved.stride_index == 3 and saved.stream_seconds == pytest.approx(3.0, abs=0.03)
    assert torch.equal(saved.context, first.generator.context)
    if steered_by == "a morph":
        assert saved.conditions.mix.morph_start_frame < 0 < saved.conditions.mix.morph_frames  # mid-morph
    else:
        assert saved.schedule["origin_frame"] == -150 and saved.schedule["scheduled_until_frame"] == 0

    resumed = make_station(tiny_model, state_dir, seconds=2, prompt="ignored on resume", seed=99, **extra)
    assert resumed.resumed is not None and resumed.status()["resumed"]["strides"] == 3
    assert torch.equal(resumed.generator.context, saved.context)
    strides = generate(resumed)
    for index in (3, 4):  # the same tokens as the run that never stopped: context, prompts, morph, seed
        assert torch.equal(strides[index][0], reference[index][0])
        assert torch.equal(strides[index][1], reference[index][1]), f"stride {index} differs"
    assert resumed.status()["strides"] == 5
    assert resumed.generator.sampling.temperature == (0.9 if steered_by == "a morph" else 1.0)
    assert StateStore(state_dir, first.state_store.signature).load().stride_index == 5


def test_a_damaged_or_foreign_state_is_refused_and_the_station_starts_fresh(tiny_model, tmp_path, caplog):
    station = make_station(tiny_model, str(tmp_path), seconds=1)
    generate(station)
    path = os.path.join(tmp_path, FILE_NAME)
    good = open(path, "rb").read()
    store = StateStore(str(tmp_path), station.state_store.signature)
    damaged = {"truncated": good[:-7], "a flipped byte": good[:-3] + bytes([good[-3] ^ 1]) + good[-2:],
               "not a state": b"hello", "empty": b""}
    for name, data in damaged.items():
        open(path, "wb").write(data)
        with pytest.raises(StateError, match="truncated or corrupt|not a station state"):
            store.load()
    other = StationState.from_bytes(good)
    other.signature = dict(other.signature, model="facebook/musicgen-large", card=4096)
    open(path, "wb").write(other.to_bytes())
    with pytest.raises(StateError, match="another model"):
        store.load()
    newer = good.replace(b'"version": 1', b'"version": 99')
    import hashlib
    from engine.station.state import MAGIC
    body = newer.split(b"\n", 2)[2]
    open(path, "wb").write(MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n" + body)
    with pytest.raises(StateError, match="another version"):
        store.load()

    open(path, "wb").write(good[: len(good) // 2])
    fresh = make_station(tiny_model, str(tmp_path), seconds=1)
    assert fresh.resumed is None and fresh.generator.stride_index == 0
    assert "state: refused" in caplog.text and "truncated or corrupt" in caplog.text
    assert os.path.exists(path + ".refused") and not os.path.exists(path)
    generate(fresh)
    assert store.load().stride_index == 1  # saving goes on


def test_a_save_that_fails_half_way_leaves_the_previous_state_whole(tiny_model, tmp_path, monkeypatch, caplog):
    station = make_station(tiny_model, str(tmp_path), seconds=2)
    generate(station)
    store = StateStore(str(tmp_path), station.state_store.signature)
    before = open(store.path, "rb").read()

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", full_disk)
    station.producer.on_stride_done()  # the station's save hook
    assert "cannot save" in caplog.text and "No space left" in caplog.text
    assert open(store.path, "rb").read() == before
    assert [n for n in os.listdir(tmp_path) if n != FILE_NAME] == []  # no temporary file left


def test_kill_9_during_a_stride_leaves_a_whole_state_and_the_restart_continues(tmp_path):
    """A real server.py, killed with SIGKILL inside a (slowed) stride, then started again."""
    args = [sys.executable, os.path.join(ROOT, "server.py"), "--model", "tiny", "--no-play", "--no-network",
            "--stride", "1", "--context", "1", "--window", "2", "--seed", "5", "--state-dir", str(tmp_path)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", RADIO_FAULTS="slow@stride:4:60")
    proc = subprocess.Popen(args, cwd=ROOT, stderr=subprocess.PIPE, env=env, text=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "fault drill: slow at stride 4" in line:
            break
    else:
        pytest.fail("".join(seen[-30:]))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    raw = open(os.path.join(tmp_path, FILE_NAME), "rb").read()
    saved = StationState.from_bytes(raw)  # whole: the checksum holds
    signature = saved.signature
    assert saved.stride_index == 4 and saved.seed == 5

    again = subprocess.run(args + ["--duration", "2"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "state: resuming from" in again.stderr and "stride 4" in again.stderr
    assert "stride 4: " in again.stderr and "stride 0: " not in again.stderr  # the count goes on
    after = StateStore(str(tmp_path), signature).load()
    assert after.stride_index == 6 and after.stream_seconds == pytest.approx(saved.stream_seconds + 2, abs=0.05)
