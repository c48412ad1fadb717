"""--schedule: a programme of prompts, in order, looped, hot-reloaded, bad files refused."""
import json
import os
import sys
import subprocess

import pytest

from engine.codec.stitcher import StitchingDecoder
from engine.lm.window import PromptMix, SamplingParams, WindowGenerator
from engine.rt.ring import PcmRing
from engine.station.metrics import EngineMetrics
from engine.station.producer import Producer
from engine.station.schedule import Schedule, ScheduleError, load_schedule
from engine.station.steering import Conditions, Steering
from netutil import ROOT, RunningServer

SR, HOP, FRAME_RATE = 32000, 640, 50

PROGRAMME = """
loop = true
[[entries]]
prompt = "jazz"
seconds = 1
[[entries]]
prompts = [{text = "rock", weight = 3}, {text = "rain", weight = 1}]
seconds = 1.5
morph_seconds = 0.5
[[entries]]
prompt = "ambient"
seconds = 1
"""


def write(tmp_path, text, name="programme.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_a_toml_or_json_programme_loads(tmp_path):
    schedule = load_schedule(write(tmp_path, PROGRAMME))
    assert schedule.loop and [e.seconds for e in schedule.entries] == [1, 1.5, 1]
    assert schedule.entries[1].prompts == (("rock", 0.75), ("rain", 0.25))
    assert schedule.entries[1].morph_seconds == 0.5
    as_json = load_schedule(write(tmp_path, json.dumps([{"prompt": "a", "seconds": 2}]), "p.json"))
    assert as_json == Schedule(entries=as_json.entries, loop=False) and as_json.entries[0].prompts == (("a", 1.0),)
    assert schedule.starts(0, 7) == [(0, 0), (1, 1), (2.5, 2), (3.5, 0), (4.5, 1), (6.0, 2)]
    assert schedule.entry_at(3.0) == (2, 0.5) and schedule.entry_at(3.6)[0] == 0
    assert as_json.entry_at(5.0) == (0, None)  # no loop: the last entry goes on


@pytest.mark.parametrize("text, message", [
    ('[[entries]]\nprompt = "a"\n', "entry 1: seconds is missing"),
    ('[[entries]]\nprompt = "a"\nseconds = 5\n[[entries]]\nprompt = "b"\nsecond = 5\n', "entry 2: unknown field second"),
    ('[[entries]]\nprompt = "a"\nprompts = []\nseconds = 5\n', "entry 1: give either prompt or prompts"),
    ('[[entries]]\nprompts = [{text = "a", weight = -1}]\nseconds = 5\n', "entry 1: each weight must be above 0"),
    ('[[entries]]\nprompt = ""\nseconds = 5\n', "entry 1: prompt must be a non-empty text"),
    ('[[entries]]\nprompt = "a"\nseconds = 0.5\n', "entry 1: seconds must be at least 1"),
    ('loop = "yes"\n[[entries]]\nprompt = "a"\nseconds = 5\n', "loop must be true or false"),
    ('entries = [\n', "not valid TOML"),
    ('entries = []\n', "a list of 1 to"),
])
def test_a_bad_programme_says_which_entry_and_field(tmp_path, text, message):
    with pytest.raises(ScheduleError, match=message):
        load_schedule(write(tmp_path, text))


def test_the_producer_plays_the_entries_in_order_at_their_frames_and_loops(tiny_model, tmp_path):
    schedule = load_schedule(write(tmp_path, PROGRAMME))
    sampling = SamplingParams()
    steering = Steering(Conditions(PromptMix(("jazz",), (1.0,)), sampling))
    steering.start_schedule(schedule)
    gen = WindowGenerator(tiny_model, context_frames=50, sampling=sampling, seed=2)
    stitcher = StitchingDecoder(tiny_model.compression_model)
    ring = PcmRing(20 * SR, 1)
    end = int(7.2 * SR)
    conditioned = []
    real = gen.next_stride
    gen.next_stride = lambda c, frames, progress=None: (conditioned.append((gen.frames_emitted, frames, c)),
                                                        real(c, frames, progress))[1]
    producer = Producer(gen, stitcher, ring, prompt="jazz", stride_frames=60, buffer_ahead_samples=10 * SR,
                        playhead=lambda: 0, metrics=EngineMetrics(sample_rate=SR), end_sample=end,
                        steering=steering)
    producer.run()
    assert producer.error is None and ring.written_until == end
    strides = conditioned[1:]  # after the warm-up
    # Entries 1, 2, 3, 1, 2, 3 (looped) start at these frames; at most one inside a stride.
    starts = [(0, 0), (50, 1), (125, 2), (175, 0), (225, 1), (300, 2)]

    def weights(frame):
        """The weights the stride that generates `frame` was given for it."""
        first, frames, conditioning = next(s for s in strides if s[0] <= frame < s[0] + s[1])
        if isinstance(conditioning, str):
            return {conditioning: 1.0}
        return {t: w for t, w in zip(conditioning.texts, conditioning.weights_at(frame)) if w > 0}

    for first, frames, _ in strides:
        assert sum(1 for f, _ in starts if first < f < first + frames) <= 1
    for (frame, index), (next_frame, _) in zip(starts[1:], starts[2:] + [(350, None)]):
        entry = schedule.entries[index]
        settled = frame + round(entry.morph_seconds * FRAME_RATE)
        assert weights(settled) == dict(entry.prompts), (frame, index)
        assert weights(next_frame - 1) == dict(entry.prompts)
        previous = dict(schedule.entries[index - 1].prompts)
        assert weights(frame - 1) == previous  # the switch (or the morph's start) is exactly here
        if entry.morph_seconds:  # entry 2 morphs in over 0.5 s, step by step
            rock = [weights(f).get("rock", 0.0) for f in range(frame, settled + 1)]
            assert rock == sorted(rock) and rock[0] == 0.0 and rock[-1] == 0.75 and len(set(rock)) > 10
    status = steering.schedule_status(160, FRAME_RATE)
    assert status == {"entry": 3, "entries": 3, "loop": True, "seconds_to_next": 0.3}


def test_bad_schedule_at_start_exits_2(tmp_path):
    path = write(tmp_path, '[[entries]]\nprompt = "a"\n')
    result = subprocess.run([sys.executable, os.path.join(ROOT, "server.py"), "--model", "tiny", "--no-play",
                             "--schedule", path], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "entry 1: seconds is missing" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_programme_is_hot_reloaded_and_a_bad_change_refused(tmp_path):
    path = write(tmp_path, '[[entries]]\nprompt = "first programme"\nseconds = 60\n')
    server = RunningServer("--schedule", path, "--stride", "2", "--context", "2")
    try:
        assert server.status()["prompt"] == "first programme"
        assert server.status()["control"]["schedule"]["entries"] == 1
        with open(path, "w") as f:
            f.write('loop = true\n[[entries]]\nprompt = "second programme"\nseconds = 2\n'
                    '[[entries]]\nprompt = "its second entry"\nseconds = 2\n')
        server.wait_for_log("changed: 2 entries (loop)", timeout=30)
        server.wait_for_log("schedule: entry 2 (prompt 'its second entry')", timeout=60)
        with open(path, "w") as f:
            f.write('[[entries]]\nprompt = "broken"\n')
        server.wait_for_log("change refused, the programme goes on", timeout=30)
        assert "entry 1: seconds is missing" in server.log
        server.wait_for_log("schedule: entry 1 (prompt 'second programme')", timeout=60, count=2)  # looping on
        assert server.proc.poll() is None
    finally:
        server.stop()
