"""Steering the producer: "next" changes condition the next stride, "now" changes cut in, and the
stream stays one one-shot decode of the tokens actually played."""
import contextlib
import threading
import time

import numpy as np
import torch

from engine.codec.stitcher import StitchingDecoder
from engine.lm.window import SamplingParams, WindowGenerator
from engine.rt.ring import PcmRing
from engine.station.metrics import EngineMetrics
from engine.station.producer import Producer, ProducerThread
from engine.station.steering import Change
from test_stitcher import SEAM_SNR_DB, one_shot, snr_db

SR, HOP = 32000, 640


class Recorded:
    """Every stride the generator makes: (first frame, prompt, context given, codes)."""

    def __init__(self, generator):
        self.strides = []
        self.changed = threading.Condition()
        real = generator.next_stride

        def spy(prompt, frames, progress=None):
            start, context = generator.frames_emitted, generator.context
            codes = real(prompt, frames, progress)
            with self.changed:
                self.strides.append((start, prompt, None if context is None else context.clone(), codes))
                self.changed.notify_all()
            return codes
        generator.next_stride = spy

    def wait_for(self, predicate, timeout=60):
        with self.changed:
            assert self.changed.wait_for(lambda: predicate(self.strides), timeout), self.strides

    def tokens(self, strides=None):
        """The tokens actually in the stream: later strides (the warm-up's first) replace
        earlier ones from their start."""
        strides = self.strides if strides is None else strides
        end = max(start + codes.shape[-1] for start, _, _, codes in strides)
        out = torch.zeros((1, strides[0][3].shape[1], end), dtype=torch.long)
        last_end = 0
        for start, _, _, codes in strides:
            out[..., start:start + codes.shape[-1]] = codes
            last_end = start + codes.shape[-1]
        return out[..., :last_end]


def make(tiny_model, playhead, *, buffer_ahead_seconds=4.0, stride_frames=50):
    gen = WindowGenerator(tiny_model, context_frames=100, sampling=SamplingParams(), seed=6)
    ring = PcmRing(40 * SR, 1)
    producer = Producer(gen, StitchingDecoder(tiny_model.compression_model), ring, prompt="ambient drone",
                        stride_frames=stride_frames, buffer_ahead_samples=int(buffer_ahead_seconds * SR),
                        playhead=playhead, metrics=EngineMetrics(sample_rate=SR), poll_seconds=0.005,
                        cut_stride_frames=10)
    return producer, ring, Recorded(gen)


@contextlib.contextmanager
def running(tiny_model):
    """A producer in its thread with the test's playhead, from the moment its buffer is full."""
    position = {"playhead": 0}
    producer, ring, recorded = make(tiny_model, lambda: position["playhead"])
    thread = ProducerThread(producer)
    thread.start()
    try:
        wait_until_full(producer)
        yield position, producer, ring, recorded
    finally:
        thread.stop()
    assert producer.error is None


def wait_until_full(producer, timeout=60):
    deadline = time.monotonic() + timeout
    while not producer.waiting_for_room:
        assert time.monotonic() < deadline and producer.error is None
        time.sleep(0.005)


def test_a_cut_in_replaces_the_buffer_and_the_stream_stays_one_one_shot_decode(tiny_model):
    with running(tiny_model) as (position, producer, ring, recorded):
        position["playhead"] = int(0.7 * SR)
        before_cut = np.empty((ring.written_until, 1), np.float32)
        assert ring.read_into(0, before_cut)
        strides_before = len(recorded.strides)
        producer.steering.submit(Change(prompts=(("heavy metal", 1.0),), when="now"))
        recorded.wait_for(lambda s: len(s) > strides_before and s[-1][1] == "heavy metal")
        wait_until_full(producer)
    cut_start, prompt, context, codes = recorded.strides[strides_before]
    assert prompt == "heavy metal" and codes.shape[-1] == 10  # the short stride after a cut
    cut_sample = (cut_start - producer.stitcher.holdback_frames) * HOP
    assert position["playhead"] + producer.safety_samples <= cut_sample < before_cut.shape[0]
    # The new stride continues the tokens that stay: its context is the kept codes before the cut.
    kept = recorded.tokens(recorded.strides[:strides_before])[..., :cut_start]
    assert torch.equal(context, kept[..., -100:])
    # Before the cut the stream is untouched; from it on it is new audio.
    stream = np.empty((ring.written_until, 1), np.float32)
    assert ring.read_into(0, stream)
    assert np.array_equal(stream[:cut_sample], before_cut[:cut_sample])
    assert not np.allclose(stream[cut_sample:cut_sample + SR // 2], before_cut[cut_sample:cut_sample + SR // 2])
    # Seam-exact: the stream is the one-shot decode of the tokens actually played.
    reference = one_shot(tiny_model.compression_model, recorded.tokens())[:stream.shape[0]]
    assert snr_db(stream, reference) >= SEAM_SNR_DB
    near = slice(cut_sample - SR // 5, cut_sample + SR // 5)
    assert snr_db(stream[near], reference[near]) >= SEAM_SNR_DB
    # /status's view: the change is heard from the cut sample.
    status = producer.steering.status(position["playhead"], producer.next_stride_sample, SR, HOP)
    assert status["playing"]["prompt"] == "ambient drone"
    assert status["upcoming"][0]["prompt"] == "heavy metal"
    assert status["upcoming"][0]["heard_in_seconds"] == round((cut_sample - position["playhead"]) / SR, 3)


def test_a_next_change_conditions_the_next_stride_after_the_buffer(tiny_model):
    with running(tiny_model) as (position, producer, ring, recorded):
        written = ring.written_until
        before = np.empty((written, 1), np.float32)
        assert ring.read_into(0, before)
        n = len(recorded.strides)
        change = producer.steering.submit(Change(prompts=(("jazz", 1.0),), sampling={"temperature": 0.5}, when="next"))
        status = producer.steering.status(0, producer.next_stride_sample, SR, HOP)
        assert status["upcoming"][0]["heard_in_seconds"] == round(written / SR, 3)  # taken yet or not
        position["playhead"] = int(1.5 * SR)  # room for one more stride
        recorded.wait_for(lambda s: len(s) > n)
    start, prompt, context, _ = recorded.strides[n]
    assert prompt == "jazz" and producer.generator.sampling.temperature == 0.5
    assert change.heard_from_sample == written  # heard right after what was buffered
    after = np.empty((written, 1), np.float32)
    assert ring.read_into(0, after) and np.array_equal(after, before)  # nothing buffered was replaced
    assert context is not None  # the music continues


def test_a_new_piece_starts_without_context_and_dips_instead_of_clicking(tiny_model):
    with running(tiny_model) as (position, producer, ring, recorded):
        join = ring.written_until
        n = len(recorded.strides)
        producer.steering.submit(Change(new_piece=True, when="next"))
        position["playhead"] = int(1.5 * SR)
        recorded.wait_for(lambda s: len(s) > n)
    assert recorded.strides[n][2] is None  # no token context
    audio = np.empty((ring.written_until, 1), np.float32)
    assert ring.read_into(0, audio)
    fade = producer.fade_samples
    level = np.abs(audio[join - 4 * fade:join - fade]).mean()
    assert level > 0.01
    assert np.abs(audio[join - 3:join + 3]).max() < 0.1 * np.abs(audio).max()  # a dip at the join
    def rms(a, b):
        return float(np.sqrt(np.mean(audio[a:b] ** 2)))
    w = fade // 4  # the level falls into the join and rises out of it
    assert rms(join - fade, join - fade + w) > 2 * rms(join - w, join)
    assert rms(join + fade - w, join + fade) > 2 * rms(join, join + w)


def test_a_cut_in_keeps_a_next_change_asked_for_before_it(tiny_model):
    with running(tiny_model) as (position, producer, ring, recorded):
        n = len(recorded.strides)
        producer.steering.submit(Change(sampling={"top_k": 7}, when="next"))
        deadline = time.monotonic() + 30
        while producer.generator.sampling.top_k != 7:  # taken: it waits for the next stride
            assert time.monotonic() < deadline
            time.sleep(0.005)
        position["playhead"] = int(0.5 * SR)
        producer.steering.submit(Change(prompts=(("dub", 1.0),), when="now"))
        recorded.wait_for(lambda s: len(s) > n and s[-1][1] == "dub")
    assert producer.generator.sampling.top_k == 7  # the earlier "next" change still holds
    playing = producer.steering.status(producer.next_stride_sample, producer.next_stride_sample, SR, HOP)["playing"]
    assert playing["prompt"] == "dub" and playing["top_k"] == 7
