"""The producer: generates strides ahead of the playhead into the stream ring.

It keeps `written_until − playhead ≤ buffer_ahead`: before each stride it works out where the
ring's end will be after that stride, and sleeps while that would be too far ahead. All torch
work happens in the thread that runs it: the process's main thread in the server (see
Station.play), a `ProducerThread` in tests and tools.
"""
from __future__ import annotations

import logging
import math
import threading
import time
import typing as tp

import numpy as np

from ..codec.stitcher import StitchingDecoder
from ..lm.window import WindowGenerator
from ..rt.ring import PcmRing
from .metrics import EngineMetrics, StrideRecord

log = logging.getLogger(__name__)


class _Stopped(Exception):
    """Raised from the generation progress callback to abandon a stride on shutdown."""


class Producer:
    """Strides of `stride_frames` codes → seam-free PCM → `ring`, paced by `playhead()`.
    `run()` loops in the calling thread until `stop()`, the end or a failure.

    `first_stride_frames`: the first stride is this short and each next one doubles up to
    `stride_frames` (1, 2, 4, 8, 10 s…), so that the first sound comes after a short stride when
    generation is fast enough to keep ahead of the ramp (a GPU); default: no ramp."""

    def __init__(self, generator: WindowGenerator, stitcher: StitchingDecoder, ring: PcmRing, *,
                 prompt: str, stride_frames: int, buffer_ahead_samples: int,
                 playhead: tp.Callable[[], int], metrics: EngineMetrics,
                 end_sample: tp.Optional[int] = None, poll_seconds: float = 0.02,
                 first_stride_frames: tp.Optional[int] = None,
                 underruns: tp.Callable[[], int] = lambda: 0):
        self.generator = generator
        self.stitcher = stitcher
        self.ring = ring
        self.prompt = prompt
        self.stride_frames = int(stride_frames)
        self.first_stride_frames = min(self.stride_frames, int(first_stride_frames or stride_frames))
        self.buffer_ahead_samples = int(buffer_ahead_samples)
        self.playhead = playhead
        self.underruns = underruns  # the player's count, for the stride log
        self.metrics = metrics
        self.end_sample = end_sample
        self.poll_seconds = poll_seconds
        self.hop_samples = stitcher.hop_samples
        self.sample_rate = metrics.sample_rate
        self.end_frames = None if end_sample is None else math.ceil(end_sample / self.hop_samples)
        self.waiting_for_room = False  # True while the buffer is full (pre-fill can stop waiting)
        self.room_checks = 0  # how many times it found the buffer full and waited (for tests)
        self.done = threading.Event()  # set when the producer has nothing more to write
        self.error: tp.Optional[BaseException] = None
        self.max_ahead_samples = 0  # the largest written_until − playhead seen after a write
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def _next_stride(self) -> tp.Tuple[int, int, bool]:
        """(frames to generate, ring end after writing them, is this the last stride)."""
        emitted = self.generator.frames_emitted
        index = min(self.generator.stride_index, 30)
        frames = min(self.stride_frames, self.first_stride_frames << index)
        if self.end_frames is not None and emitted + frames >= self.end_frames:
            return self.end_frames - emitted, self.end_sample, True
        written_after = (emitted + frames - self.stitcher.holdback_frames) * self.hop_samples
        return frames, max(written_after, self.ring.written_until), False

    def _warm_up(self) -> None:
        """One throwaway short stride through the decoder and the codec, so that the first real
        stride's time (and the real-time factor the pre-fill judges by) is a steady one."""
        started = time.monotonic()
        self.stitcher.push(self.generator.warm_up(self.prompt))
        self.stitcher.reset()
        log.info("warm-up: decoder and codec ready in %.2f s", time.monotonic() - started)

    def run(self) -> None:
        try:
            self._warm_up()
            while not self._stop_event.is_set():
                frames, written_after, last = self._next_stride()
                if written_after - self.playhead() > self.buffer_ahead_samples:
                    self.waiting_for_room = True
                    self.room_checks += 1
                    self._stop_event.wait(self.poll_seconds)
                    continue
                self.waiting_for_room = False
                self._produce(frames, last)
                if last:
                    log.info("producer: all %.1f s of audio generated", self.end_sample / self.sample_rate)
                    break
        except _Stopped:
            pass
        except BaseException as err:  # reported to the station, which stops cleanly
            self.error = err
            log.exception("producer: generation failed")
        finally:
            self.ring.closed = True
            self.done.set()

    def _produce(self, frames: int, last: bool) -> None:
        index = self.generator.stride_index
        started = time.monotonic()
        progress = _ProgressLog(index, started, stop_event=self._stop_event,
                                in_prefill=lambda: self.metrics.first_sound_seconds is None)
        codes = self.generator.next_stride(self.prompt, frames, progress)
        pcm = self.stitcher.push(codes)
        if last:
            pcm = np.concatenate([pcm, self.stitcher.flush()])
            pcm = pcm[:max(0, self.end_sample - self.ring.written_until)]
        elapsed = time.monotonic() - started
        for at in range(0, pcm.shape[0], self.ring.capacity_samples):
            self.ring.write(pcm[at:at + self.ring.capacity_samples])
        ahead = self.ring.written_until - self.playhead()
        self.max_ahead_samples = max(self.max_ahead_samples, ahead)
        self.metrics.written_samples = self.ring.written_until
        record = StrideRecord(index=index, audio_seconds=frames * self.hop_samples / self.sample_rate,
                              generation_seconds=elapsed)
        self.metrics.add_stride(record)
        log.info("stride %d: %.2f s of audio in %.2f s (real-time factor %.2fx), %.1f s buffered "
                 "ahead, %d underruns so far", index, record.audio_seconds, elapsed,
                 record.real_time_factor, ahead / self.sample_rate, self.underruns())


class ProducerThread(threading.Thread):
    """Runs a Producer in a thread of its own (tests, tools; the server generates in its main
    thread, where torch's OpenMP workers stay warm)."""

    def __init__(self, producer: Producer):
        super().__init__(name="producer", daemon=True)
        self.producer = producer

    def run(self) -> None:
        self.producer.run()

    def stop(self, timeout_seconds: float = 30.0) -> None:
        self.producer.stop()
        self.join(timeout=timeout_seconds)


class _ProgressLog:
    """Percent lines while a stride is generated during pre-fill (INFO), quiet afterwards."""

    def __init__(self, index: int, started: float, stop_event: threading.Event,
                 in_prefill: tp.Callable[[], bool]):
        self.index = index
        self.started = started
        self.in_prefill = in_prefill
        self.stop_event = stop_event
        self.next_percent = 10

    def __call__(self, step: int, total: int) -> None:
        if self.stop_event.is_set():
            raise _Stopped()
        percent = 100 * step // max(total, 1)
        if percent < self.next_percent or not self.in_prefill():
            return
        elapsed = time.monotonic() - self.started
        eta = elapsed * (total - step) / max(step, 1)
        log.info("pre-fill: stride %d %3d%% (%d/%d steps, %.1f s, about %.1f s left)",
                 self.index, percent, step, total, elapsed, eta)
        self.next_percent = (percent // 10 + 1) * 10
