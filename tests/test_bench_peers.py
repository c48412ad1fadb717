"""bench_engine.py's peers run as their users run them (here on CPU, on the tiny shape, so that a
GPU session's device minutes are not spent finding a broken harness)."""
import argparse
import os
import sys

import pytest

from engine.models.random_musicgen import TINY_SHAPE

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import peers  # noqa: E402


@pytest.mark.parametrize("run", [peers.run_fast_musicgen, peers.run_transformers])
def test_a_peer_runs_a_stride_from_the_context(monkeypatch, run):
    monkeypatch.setitem(peers.RANDOM_SHAPES, "random-small", TINY_SHAPE)
    args = argparse.Namespace(model="random-small", device="cpu", context=0.5, stride=0.4, steps=0, seed=1)
    result = run(args)
    frames = round(args.stride * 50) + TINY_SHAPE.n_q - 1  # the stride's frames through the delays
    assert result["steps_timed"] == frames - 1  # (the first step's end closes the prefill)
    assert result["prefill_s"] > 0 and result["step_ms"] > 0 and result["stride_wall_s"] >= result["prefill_s"]
    assert result["dtype"] == "fp32"
    cut = run(argparse.Namespace(**{**vars(args), "steps": 5}))  # --steps: timed steps only, projected
    assert cut["steps_timed"] == 5 and cut["stride_wall_s"] is None


def test_the_step_clock_reads_the_bandwidth_between_steps_and_leaves_the_reads_out(monkeypatch):
    """bench_engine.py's floor beside the steps: a probe every N steps; the time it takes is not
    a step's (a fake clock: each step takes 0.01 s, each read 5 s)."""
    import stridetiming
    now = [100.0]
    monkeypatch.setattr(stridetiming.time, "perf_counter", lambda: now[0])

    def probe():
        now[0] += 5.0
        return 42.0
    clock = stridetiming.StepClock("cpu", probe=probe, probe_every=3)
    started = now[0]
    now[0] += 1.0  # the prefill
    for step in range(10):
        clock(step, 10)
        now[0] += 0.01
    figures = clock.figures(started)
    assert clock.bandwidths == [42.0] * 3  # after steps 3, 6 and 9
    assert clock.paused_s == pytest.approx(15.0)
    assert figures["prefill_s"] == pytest.approx(1.0) and figures["step_ms"] == pytest.approx(10.0)


def test_the_bandwidth_probe_reads_its_buffer():
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
    import bench_engine
    probe = bench_engine.BandwidthProbe("cpu", 0.01)
    assert probe.buffer.numel() == 2_500_000 and probe() > 0
    assert bench_engine.read_bandwidth_gbs("cpu", 0.01, repeats=2) > 0
