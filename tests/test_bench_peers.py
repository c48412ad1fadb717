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
