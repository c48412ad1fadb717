import threading
import time

import numpy as np

from engine.codec.stitcher import StitchingDecoder
from engine.lm.window import SamplingParams, WindowGenerator
from engine.rt.ring import PcmRing
from engine.station.metrics import EngineMetrics
from engine.station.producer import Producer, ProducerThread

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


class SteppedPlayhead:
    """A playhead the test moves; every read checks the buffer-ahead bound and can be waited for."""

    def __init__(self, ring: PcmRing, limit_samples: int):
        self.ring, self.limit_samples = ring, limit_samples
        self.position = 0
        self.reads = 0
        self.violations = []
        self._read = threading.Condition()

    def __call__(self) -> int:
        ahead = self.ring.written_until - self.position
        if ahead > self.limit_samples:
            self.violations.append(ahead)
        with self._read:
            self.reads += 1
            self._read.notify_all()
        return self.position

    def wait_for_reads(self, count: int, timeout: float = 60) -> None:
        with self._read:
            assert self._read.wait_for(lambda: self.reads >= count, timeout), "producer stopped polling"


def test_producer_never_runs_more_than_buffer_ahead_in_front(tiny_model):
    limit = int(2.5 * SR)
    producer, ring, metrics = make_producer(tiny_model, lambda: playhead())
    playhead = SteppedPlayhead(ring, limit)
    thread = ProducerThread(producer)
    thread.start()
    try:
        # It fills the buffer, then waits for room: 20 more looks at a full buffer write nothing.
        deadline = time.monotonic() + 60
        while producer.room_checks == 0:
            assert time.monotonic() < deadline and producer.error is None
            playhead.wait_for_reads(playhead.reads + 1)
        full = ring.written_until
        playhead.wait_for_reads(playhead.reads + 20)
        assert producer.room_checks >= 20
        assert ring.written_until == full, "producer wrote while the buffer was full"
        # Play 4 s in steps; it must follow without ever exceeding the limit.
        for _ in range(40):
            playhead.position = min(playhead.position + SR // 10, ring.written_until)
            playhead.wait_for_reads(playhead.reads + 2)
        assert not playhead.violations
        assert producer.max_ahead_samples <= limit
        assert ring.written_until > full
        assert len(metrics.strides) >= 3
    finally:
        thread.stop()
    assert producer.error is None and not thread.is_alive()


def run_to_end(producer):
    thread = ProducerThread(producer)
    thread.start()
    assert producer.done.wait(60)
    thread.join(timeout=30)
    assert producer.error is None


def test_producer_writes_exactly_up_to_the_end_and_stops(tiny_model):
    end = int(2.3 * SR)
    producer, ring, metrics = make_producer(tiny_model, lambda: ring.written_until, end_sample=end)
    run_to_end(producer)
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
    run_to_end(producer)
    frames = [round(record.audio_seconds * 50) for record in metrics.strides]
    assert frames == [6, 12, 24, 40, 40, 28]
    assert ring.written_until == end



def test_a_stop_in_the_middle_of_a_stride_is_no_failure(tiny_model, caplog):
    """Stopping while a stride is generated (a shutdown, an end of duration) abandons the
    stride quietly: no ERROR in the log, no generation error counted, no error reported."""
    producer, ring, metrics = make_producer(tiny_model, lambda: 0, stride_frames=100)
    thread = ProducerThread(producer)
    original = producer.generator.next_stride
    stopped_at = []

    def next_stride(conditioning, frames, progress=None, **drill):
        if progress is None:  # the warm-up stride
            return original(conditioning, frames, **drill)

        def progress_then_stop(step, total):
            if step == total // 2 and not stopped_at:
                stopped_at.append(step)
                producer.stop()  # as the station's supervisor does on shutdown
            progress(step, total)
        return original(conditioning, frames, progress_then_stop, **drill)
    producer.generator.next_stride = next_stride
    with caplog.at_level("INFO"):
        thread.start()
        assert producer.done.wait(60)
        thread.join(timeout=30)
    assert stopped_at, "the stride never reached its middle"
    assert producer.error is None
    assert metrics.generation_errors == 0
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
