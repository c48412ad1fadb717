"""Faults: a failing stride is retried from the same context, a new piece after a few, the end
only when failures persist; RADIO_FAULTS drills them."""
import asyncio
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from engine.codec.stitcher import StitchingDecoder
from engine.lm.window import SamplingParams, WindowGenerator
from engine.rt.ring import PcmRing
from engine.station.faults import FailurePolicy, FaultPlan, FaultSpecError
from engine.station.metrics import EngineMetrics
from engine.station.producer import GenerationFailed, Producer
from netutil import ROOT, RunningServer
from test_stitcher import SEAM_SNR_DB, one_shot, snr_db

SR = 32000


def test_the_fault_spec_parses_and_refuses_clearly():
    plan = FaultPlan.parse("raise@stride:3, nan@stride:5,slow@stride:7:3.0,raise@stride:3")
    assert [(f.kind, f.stride, f.seconds) for f in plan.faults] == [
        ("raise", 3, 0.0), ("nan", 5, 0.0), ("slow", 7, 3.0), ("raise", 3, 0.0)]
    assert [f.kind for f in plan.take(3)] == ["raise"] and [f.kind for f in plan.take(3)] == ["raise"]
    assert plan.take(3) == []  # each entry fires once
    for bad, message in (("explode@stride:1", "KIND@stride:N"), ("raise@3", "KIND@stride:N"),
                         ("slow@stride:2", "slow needs SECONDS"), ("nan@stride:x", "KIND@stride:N")):
        with pytest.raises(FaultSpecError, match=message):
            FaultPlan.parse(bad)


def run_producer(tiny_model, spec, failures=None, end_seconds=5.0):
    gen = WindowGenerator(tiny_model, context_frames=50, sampling=SamplingParams(), seed=4)
    attempts = []
    real = gen.next_stride

    def spy(conditioning, frames, progress=None, **drill):
        attempts.append((gen.stride_index, gen.frames_emitted, None if gen.context is None else gen.context.clone()))
        codes = real(conditioning, frames, progress, **drill)
        attempts[-1] += (codes,)
        return codes
    gen.next_stride = spy
    ring = PcmRing(20 * SR, 1)
    metrics = EngineMetrics(sample_rate=SR)
    producer = Producer(gen, StitchingDecoder(tiny_model.compression_model), ring, prompt="drums",
                        stride_frames=50, buffer_ahead_samples=20 * SR, playhead=lambda: 0, metrics=metrics,
                        end_sample=int(end_seconds * SR), faults=FaultPlan.parse(spec),
                        failures=failures or FailurePolicy(max_backoff_seconds=0.05))
    producer.run()
    return producer, ring, metrics, attempts[1:]  # after the warm-up


def test_failing_strides_are_retried_from_the_same_context_and_the_stream_stays_seam_exact(tiny_model):
    producer, ring, metrics, attempts = run_producer(tiny_model, "raise@stride:2,nan@stride:3,slow@stride:4:0.2")
    assert producer.error is None and ring.written_until == 5 * SR
    assert metrics.generation_errors == 2  # raise and nan; slow only delays
    done = [a for a in attempts if len(a) == 4]
    nan_attempts = [a for a in attempts if a[0] == 3]
    assert len(nan_attempts) == 2 and torch.equal(nan_attempts[0][2], nan_attempts[1][2])  # same context
    assert [a[0] for a in done] == [0, 1, 2, 3, 4]  # every stride made once, in order
    tokens = torch.cat([a[3] for a in done], dim=-1)
    stream = np.empty((5 * SR, 1), np.float32)
    assert ring.read_into(0, stream)
    assert snr_db(stream, one_shot(tiny_model.compression_model, tokens)[:5 * SR]) >= SEAM_SNR_DB


def test_a_new_piece_after_three_failures_in_a_row(tiny_model):
    producer, _, metrics, attempts = run_producer(tiny_model, ",".join(["raise@stride:2"] * 3), end_seconds=4.0)
    assert producer.error is None and metrics.generation_errors == 3
    made = [a for a in attempts if len(a) == 4 and a[0] == 2]
    assert len(made) == 1 and made[0][2] is None  # stride 2 was finally made from no context


def test_failures_that_persist_end_generation(tiny_model):
    producer, ring, metrics, _ = run_producer(tiny_model, ",".join(["raise@stride:1"] * 200),
                                              failures=FailurePolicy(give_up_after_seconds=0.5,
                                                                     max_backoff_seconds=0.05))
    assert isinstance(producer.error, GenerationFailed) and "InjectedFault" in str(producer.error)
    assert producer.done.is_set() and ring.closed and metrics.generation_errors >= 3


def test_listeners_stay_connected_through_injected_faults():
    env_faults = "raise@stride:3,nan@stride:4,slow@stride:5:1.0"
    os.environ["RADIO_FAULTS"] = env_faults
    try:
        server = RunningServer("--stride", "1", "--context", "1", "--seed", "2")
    finally:
        del os.environ["RADIO_FAULTS"]
    try:
        listening = asyncio.run(_listen_until(server, "stride 7:"))
        hello, packets, _, _ = listening
        seqs = [p[0] for p in packets]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # one listener, no gap, never dropped
        assert "stride 3 failed (InjectedFault" in server.log
        assert "FloatingPointError: the language model gave NaN or inf logits" in server.log
        assert "fault drill: slow at stride 5" in server.log
        status = server.status()
        assert status["generation_errors"] == 2 and status["failing_seconds"] == 0.0
        import json
        import urllib.request
        with urllib.request.urlopen(server.url + "/healthz", timeout=10) as response:
            assert response.status == 200 and json.loads(response.read())["state"] == "playing"
        assert server.proc.poll() is None
    finally:
        server.stop()


async def _listen_until(server, log_text):
    import json
    import time
    import websockets
    from engine.net import protocol
    packets, started = [], time.monotonic()
    async with websockets.connect(server.ws_url + "?codec=pcm", max_queue=None) as ws:
        hello = json.loads(await ws.recv())
        while log_text not in server.log:
            assert time.monotonic() - started < 120, server.log[-2000:]
            message = await asyncio.wait_for(ws.recv(), timeout=10)
            if isinstance(message, bytes):
                frame = protocol.parse(message)
                packets.append((frame.seq, frame.stream_sample, frame.payload))
    return hello, packets, [], time.monotonic() - started


def test_a_station_that_keeps_failing_exits_1():
    env = dict(os.environ, RADIO_FAULTS=",".join(["raise@stride:1"] * 100), PYTHONUNBUFFERED="1")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "server.py"), "--model", "tiny", "--no-play",
                             "--no-network", "--stride", "1", "--context", "1", "--give-up-after", "2"],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "giving up" in result.stderr and "Traceback" not in result.stderr


def test_a_bad_fault_spec_exits_2():
    env = dict(os.environ, RADIO_FAULTS="explode@stride:1")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "server.py"), "--model", "tiny", "--no-play"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2 and "KIND@stride:N" in result.stderr
