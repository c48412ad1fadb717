import time

import numpy as np

from engine.generator import SamplingParams, WindowGenerator
from engine.metrics import EngineMetrics
from engine.producer import Producer
from engine.ring import PcmRing
from engine.stitcher import StitchingDecoder

SR = 32000


def make_producer(model, playhead, *, stride_frames=50, buffer_ahead_seconds=2.5, end_sample=None,
                  first_stride_frames=None):
    gen = WindowGenerator(model, context_frames=100, sampling=SamplingParams(), seed=2)
    stitcher = StitchingDecoder(model.compression_model)
    ring = PcmRing(int(6 * SR), 1)
    metrics = EngineMetrics(sample_rate=SR)
    producer = Producer(gen, stitcher, ring, prompt="test", stride_frames=stride_frames,
                        buffer_ahead_samples=int(buffer_ahead_seconds * SR), playhead=playhead,
                        metrics=metrics, end_sample=end_sample, poll_seconds=0.005,
                        first_stride_frames=first_stride_frames)
    return producer, ring, metrics


def test_producer_never_runs_more_than_buffer_ahead_in_front(tiny_model):
    position = {"playhead": 0}
    producer, ring, metrics = make_producer(tiny_model, lambda: position["playhead"])
    producer.start()
    try:
        limit = int(2.5 * SR)
        deadline = time.monotonic() + 60
        # Wait until it fills the buffer and stops for room.
        while not producer.waiting_for_room and time.monotonic() < deadline:
            assert ring.written_until - position["playhead"] <= limit
            time.sleep(0.005)
        assert producer.waiting_for_room
        full = ring.written_until
        time.sleep(0.3)
        assert ring.written_until == full, "producer wrote while the buffer was full"
        # Play 4 s in steps; it must follow without ever exceeding the limit.
        for _ in range(40):
            position["playhead"] = min(position["playhead"] + SR // 10, ring.written_until)
            for _ in range(20):
                assert ring.written_until - position["playhead"] <= limit
                time.sleep(0.002)
        assert producer.max_ahead_samples <= limit
        assert ring.written_until > full
        assert len(metrics.strides) >= 3
    finally:
        producer.stop()
        producer.join(timeout=30)
    assert producer.error is None


def test_producer_writes_exactly_up_to_the_end_and_stops(tiny_model):
    end = int(2.3 * SR)
    producer, ring, metrics = make_producer(tiny_model, lambda: ring.written_until, end_sample=end)
    producer.start()
    assert producer.done.wait(60)
    assert producer.error is None
    assert ring.written_until == end and ring.closed
    assert [s.audio_seconds for s in metrics.strides] == [1.0, 1.0, 0.3]
    tail = np.empty((SR // 10, 1), np.float32)
    assert ring.read_into(end - tail.shape[0], tail) and np.abs(tail).max() > 0


def test_first_strides_ramp_up_to_the_stride(tiny_model):
    """A short first stride for a quick first sound, then doubling: 6, 12, 24, 40, 40 frames."""
    end = int(3.0 * SR)  # 150 frames
    producer, ring, metrics = make_producer(tiny_model, lambda: ring.written_until, end_sample=end,
                                            stride_frames=40, buffer_ahead_seconds=5,
                                            first_stride_frames=6)
    producer.start()
    assert producer.done.wait(60)
    assert producer.error is None
    frames = [round(record.audio_seconds * 50) for record in metrics.strides]
    assert frames == [6, 12, 24, 40, 40, 28]
    assert ring.written_until == end
