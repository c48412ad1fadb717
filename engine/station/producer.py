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
import torch

from ..codec.loudness import LoudnessLeveler
from ..codec.rewindable import RewindableDecoder
from ..codec.stitcher import StitchingDecoder
from ..lm.window import WindowGenerator
from ..rt.ring import PcmRing
from .faults import FailurePolicy, FaultPlan
from .logs import StationLog
from .metrics import EngineMetrics, StrideRecord
from .steering import Conditions, Steering

log = logging.getLogger(__name__)


class _Stopped(Exception):
    """Raised from the generation progress callback to abandon a stride on shutdown."""


class GenerationFailed(RuntimeError):
    """Strides kept failing for longer than the station waits; the cause is chained."""


class _CutIn(Exception):
    """Raised from the generation progress callback to abandon a stride for a cut-in."""


class Producer:
    """Strides of `stride_frames` codes → seam-free PCM → `ring`, paced by `playhead()`.
    `run()` loops in the calling thread until `stop()`, the end or a failure.

    `first_stride_frames`: the first stride is this short and each next one doubles up to
    `stride_frames` (1, 2, 4, 8, 10 s…), so that the first sound comes after a short stride when
    generation is fast enough to keep ahead of the ramp (a GPU); default: no ramp.

    Steering (`steering`): changes are taken before each stride. "next" ones condition the next
    stride; "now" ones cut in (`_cut_in`): the stride in progress is abandoned, the buffered audio
    from the earliest sample that can be regenerated in time is taken back, and generation
    restarts from that frame with a short stride (`cut_stride_frames`, then the ramp again)."""

    def __init__(self, generator: WindowGenerator, stitcher: StitchingDecoder, ring: PcmRing, *,
                 prompt: str, stride_frames: int, buffer_ahead_samples: int,
                 playhead: tp.Callable[[], int], metrics: EngineMetrics,
                 end_sample: tp.Optional[int] = None, poll_seconds: float = 0.02,
                 first_stride_frames: tp.Optional[int] = None,
                 underruns: tp.Callable[[], int] = lambda: 0,
                 steering: tp.Optional[Steering] = None, cut_stride_frames: int = 50,
                 safety_seconds: float = 0.3, fade_seconds: float = 0.03,
                 leveler: tp.Optional[LoudnessLeveler] = None, faults: tp.Optional[FaultPlan] = None,
                 failures: tp.Optional[FailurePolicy] = None, name: str = ""):
        self.log = StationLog(log, name)  # lines prefixed with the station's name in a lineup
        self.generator = generator
        self.stitcher = stitcher
        self.ring = ring
        self.steering = steering or Steering(Conditions.single(prompt, generator.sampling))
        self.stride_frames = int(stride_frames)
        self.first_stride_frames = min(self.stride_frames, int(first_stride_frames or stride_frames))
        self.cut_stride_frames = min(self.stride_frames, int(cut_stride_frames))
        self.buffer_ahead_samples = int(buffer_ahead_samples)
        # Codes and decoder snapshots far enough back to cut in anywhere in the buffer; a snapshot
        # every cut stride, so that a cut-in decodes again at most that much.
        buffer_frames = -(-self.buffer_ahead_samples // stitcher.hop_samples)
        self.decoder = RewindableDecoder(stitcher, keep_frames=generator.context_frames + buffer_frames
                                         + 2 * self.stride_frames + stitcher.holdback_frames,
                                         chunk_frames=self.cut_stride_frames, leveler=leveler)
        self.safety_samples = int(safety_seconds * metrics.sample_rate)  # ahead of the playhead
        self.fade_samples = max(1, int(fade_seconds * metrics.sample_rate))  # a new piece's dip
        self._ramp_index = 0  # strides since the start or the last cut-in
        self._ramp_first_frames = self.first_stride_frames  # the ramp's first stride: at start, after a cut
        self._decode_seconds_per_frame = 0.0  # the codec's cost, measured on the last stride
        self.faults = faults or FaultPlan()  # RADIO_FAULTS drills
        self.failures = failures or FailurePolicy()  # retries, new piece, giving up
        self.intro_codes: tp.Optional[torch.Tensor] = None  # [1, K, frames] played first (--play-intro)
        self._fade_in_at: tp.Optional[int] = None  # a new piece starts at this sample
        self.on_stride_done: tp.Optional[tp.Callable[[], None]] = None  # after each stride (--state-dir)
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

    @property
    def conditioning(self):
        """What the next stride is conditioned on (a text, or weighted texts)."""
        return self.steering.latest.conditioning()

    @property
    def next_stride_sample(self) -> int:
        """The stream sample from which the next stride's codes are heard."""
        return max(0, self.generator.frames_emitted - self.stitcher.holdback_frames) * self.hop_samples

    def _next_stride(self) -> tp.Tuple[int, int, bool]:
        """(frames to generate, ring end after writing them, is this the last stride)."""
        emitted = self.generator.frames_emitted
        index = min(self._ramp_index, 30)
        frames = min(self.stride_frames, self._ramp_first_frames << index)
        frames = self.steering.frames_to_second_entry(emitted, frames, self.sample_rate / self.hop_samples)
        if self.end_frames is not None and emitted + frames >= self.end_frames:
            return self.end_frames - emitted, self.end_sample, True
        written_after = (emitted + frames - self.stitcher.holdback_frames) * self.hop_samples
        return frames, max(written_after, self.ring.written_until), False

    def _warm_up(self) -> None:
        """One throwaway short stride through the decoder and the codec, so that the first real
        stride's time (and the real-time factor the pre-fill judges by) is a steady one."""
        started = time.monotonic()
        self.stitcher.push(self.generator.warm_up(self.conditioning))
        self.decoder.reset()
        self.log.info("warm-up: decoder and codec ready in %.2f s", time.monotonic() - started)

    def run(self) -> None:
        try:
            self._warm_up()
            if self.intro_codes is not None:
                self._play_intro(self.intro_codes)
            while not self._stop_event.is_set():
                self._apply_changes()
                frames, written_after, last = self._next_stride()
                if written_after - self.playhead() > self.buffer_ahead_samples:
                    self.waiting_for_room = True
                    self.room_checks += 1
                    self._stop_event.wait(self.poll_seconds)
                    continue
                self.waiting_for_room = False
                self._apply_scheduled(frames)
                state, pushed = self.generator.state(), self.decoder.frames_pushed
                try:
                    self._produce(frames, last)
                except _CutIn:
                    self.log.info("producer: stride abandoned for a cut-in")
                    continue
                except _Stopped:
                    raise  # a shutdown in the middle of a stride: no failure
                except Exception as err:  # noqa: BLE001 - any failure of a stride is retried
                    self.generator.restore(state)
                    if self.decoder.frames_pushed != pushed:
                        self.decoder.rewind(pushed)
                    self._stride_failed(err)
                    continue
                self.failures.succeeded()
                if self.on_stride_done is not None:
                    self.on_stride_done()
                if last:
                    self.log.info("producer: all %.1f s of audio generated", self.end_sample / self.sample_rate)
                    break
        except _Stopped:
            pass
        except BaseException as err:  # reported to the station, which stops cleanly
            self.error = err
            if not isinstance(err, GenerationFailed):  # (those were counted one by one)
                self.metrics.generation_errors += 1
                self.log.exception("producer: generation failed")
        finally:
            self.ring.closed = True
            self.done.set()

    def _stride_failed(self, err: Exception) -> None:
        """A stride failed (and was undone): log its cause, back off, then retry from the same
        context, or from nothing every few failures (FailurePolicy); re-raise once failures
        have lasted too long (generation ends with `error`)."""
        self.metrics.generation_errors += 1
        give_up, backoff, new_piece = self.failures.failed()
        cause = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
        if give_up:
            self.log.error("producer: stride %d failed (%s); failing for %.0f s, giving up",
                      self.generator.stride_index, cause, self.failures.failing_seconds)
            raise GenerationFailed(f"strides failed for {self.failures.failing_seconds:.0f} s: {cause}") from err
        self.log.error("producer: stride %d failed (%s); %s in %.1f s (failure %d in a row)",
                  self.generator.stride_index, cause,
                  "starting a new piece from the prompt" if new_piece else "retrying from the same context",
                  backoff, self.failures.consecutive)
        if new_piece:
            self.generator.set_context(None)
        if self._stop_event.wait(backoff):
            raise _Stopped()

    def _produce(self, frames: int, last: bool) -> None:
        index = self.generator.stride_index
        started = time.monotonic()
        drill = self.faults.drill(index, self._stop_event)
        if self._stop_event.is_set():
            raise _Stopped()
        progress = _ProgressLog(index, started, stop_event=self._stop_event,
                                in_prefill=lambda: self.metrics.first_sound_seconds is None,
                                cut_requested=self.steering.cut_requested, logger=self.log)
        codes = self.generator.next_stride(self.conditioning, frames, progress, **drill)
        decode_started = time.monotonic()
        pcm = self.decoder.push(codes)
        self._decode_seconds_per_frame = (time.monotonic() - decode_started) / max(1, frames)
        if last:
            pcm = np.concatenate([pcm, self.decoder.flush()])
            pcm = pcm[:max(0, self.end_sample - self.ring.written_until)]
        elapsed = time.monotonic() - started
        self._write(pcm)
        self._ramp_index += 1
        ahead = self.ring.written_until - self.playhead()
        self.max_ahead_samples = max(self.max_ahead_samples, ahead)
        self.metrics.written_samples = self.ring.written_until
        record = StrideRecord(index=index, audio_seconds=frames * self.hop_samples / self.sample_rate,
                              generation_seconds=elapsed)
        self.metrics.add_stride(record)
        self.steering.forget_before(self.playhead())
        self.log.info("stride %d: %.2f s of audio in %.2f s (real-time factor %.2fx), %.1f s buffered "
                 "ahead, %d underruns so far", index, record.audio_seconds, elapsed,
                 record.real_time_factor, ahead / self.sample_rate, self.underruns())

    def fade_in_at_start(self) -> None:
        """Fade the stream's first samples in (a resumed station joins its music mid-way)."""
        self._fade_in_at = self.ring.written_until

    def _play_intro(self, codes) -> None:
        """The clip's own tokens, decoded, start the stream; generation continues from them."""
        self._write(self.decoder.push(codes))
        self.generator.restart_at(codes.shape[-1], codes)
        self.metrics.written_samples = self.ring.written_until
        self.log.info("from-audio: the clip's %.1f s start the stream", codes.shape[-1] * self.hop_samples / self.sample_rate)

    def _write(self, pcm: np.ndarray) -> None:
        if self._fade_in_at is not None and self._fade_in_at == self.ring.written_until and len(pcm):
            n = min(self.fade_samples, pcm.shape[0])
            pcm = pcm.copy()
            pcm[:n] *= np.linspace(0.0, 1.0, self.fade_samples, dtype=np.float32)[:n, None]
            self._fade_in_at = None
        for at in range(0, pcm.shape[0], self.ring.capacity_samples):
            self.ring.write(pcm[at:at + self.ring.capacity_samples])

    # -- steering -------------------------------------------------------------------------------
    def _apply_changes(self) -> None:
        """Take the pending changes: "now" ones cut in where they can, the rest condition the
        next stride."""
        changes = self.steering.take()
        if not changes:
            return
        new_piece = any(change.new_piece for change in changes)
        cut = any(change.when == "now" for change in changes) and self._cut_in()
        if new_piece:
            self._start_new_piece()
        conditions = self.steering.latest
        frame_rate = self.sample_rate / self.hop_samples
        for change in changes:
            conditions = change.apply_to(conditions, self.generator.frames_emitted, frame_rate)
        self.generator.sampling = conditions.sampling
        self.steering.record(self.next_stride_sample, conditions, changes)
        self.log.info("control: %s from %.2f s of the stream (%s)%s",
                 "; ".join(change.summary() for change in changes), self.next_stride_sample / self.sample_rate,
                 "cut in" if cut else "next stride", ", new piece" if new_piece else "")

    def _apply_scheduled(self, frames: int) -> None:
        """The schedule entries starting in the coming stride, each at its own frame."""
        first = self.generator.frames_emitted
        changes = self.steering.scheduled(first, first + frames, self.sample_rate / self.hop_samples)
        if not changes:
            return
        conditions = self.steering.latest
        for change in changes:
            conditions = change.apply_to(conditions, first, self.sample_rate / self.hop_samples)
            self.steering.record(change.at_frame * self.hop_samples, conditions, [change])  # its nominal start
            self.log.info("schedule: entry %d (%s) from %.2f s of the stream", change.entry + 1,
                     change.summary(), change.at_frame * self.hop_samples / self.sample_rate)
        self.generator.sampling = conditions.sampling

    def _cut_in(self) -> bool:
        """Rewind to the earliest frame whose audio can still be regenerated before the playhead
        reaches it (the playhead plus the safety margin plus the estimated time to generate the
        first stride after the cut). False when that lies beyond what is buffered: the change
        then simply conditions the next stride."""
        hop, holdback = self.hop_samples, self.stitcher.holdback_frames
        lead = self.safety_samples + int(self._estimate_seconds(self.cut_stride_frames) * self.sample_rate)
        frame = -(-(self.playhead() + lead) // hop) + holdback  # its codes change samples ≥ (frame − holdback) · hop
        frame = max(frame, self.decoder.earliest_rewind_frame)
        if frame >= self.generator.frames_emitted or self.ring.closed:
            return False
        context_from = max(0, frame - self.generator.context_frames)
        context = self.decoder.codes(context_from, frame) if frame > context_from else None
        self.decoder.rewind(frame)
        self.ring.take_back(self.decoder.emitted_samples)
        self.steering.take_back(self.decoder.emitted_samples, frame)
        self.generator.restart_at(frame, context)
        self.metrics.written_samples = self.ring.written_until
        self._ramp_index = 0
        self._ramp_first_frames = self.cut_stride_frames
        return True

    def _estimate_seconds(self, frames: int) -> float:
        """How long a cut-in takes until its first stride of `frames` is written, from the last
        stride (prefill + per frame) and the codec's cost of decoding again up to one stride of
        kept codes, doubled for a busy machine."""
        if not self.metrics.strides:
            return 0.0
        last = self.metrics.strides[-1]
        last_frames = max(1, round(last.audio_seconds * self.sample_rate / self.hop_samples))
        prefill = float(self.generator.last_timings.get("prefill_seconds", 0.0))
        per_frame = max(0.0, last.generation_seconds - prefill) / last_frames
        replay = self.decoder.chunk_frames * self._decode_seconds_per_frame
        return 2.0 * (prefill + per_frame * frames + replay)

    def _start_new_piece(self) -> None:
        """Forget the token context; dip the audio around the join (fade out what is buffered
        up to it, fade the new piece in), where the samples before it are not played yet."""
        self.generator.set_context(None)
        join = self.ring.written_until
        start = join - self.fade_samples
        if start >= self.playhead() + self.safety_samples and start >= self.ring.oldest_kept:
            tail = np.empty((self.fade_samples, self.ring.channels), np.float32)
            if self.ring.read_into(start, tail):
                self.ring.take_back(start)
                self.ring.write(tail * np.linspace(1.0, 0.0, self.fade_samples, dtype=np.float32)[:, None])
        self._fade_in_at = join


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
    """Percent lines while a stride is generated during pre-fill (INFO), quiet afterwards; it
    abandons the stride on shutdown and for a cut-in."""

    def __init__(self, index: int, started: float, stop_event: threading.Event,
                 in_prefill: tp.Callable[[], bool], cut_requested: threading.Event, logger=log):
        self.log = logger
        self.index = index
        self.cut_requested = cut_requested
        self.started = started
        self.in_prefill = in_prefill
        self.stop_event = stop_event
        self.next_percent = 10

    def __call__(self, step: int, total: int) -> None:
        if self.stop_event.is_set():
            raise _Stopped()
        if self.cut_requested.is_set():
            raise _CutIn()
        percent = 100 * step // max(total, 1)
        if percent < self.next_percent or not self.in_prefill():
            return
        elapsed = time.monotonic() - self.started
        eta = elapsed * (total - step) / max(step, 1)
        self.log.info("pre-fill: stride %d %3d%% (%d/%d steps, %.1f s, about %.1f s left)",
                 self.index, percent, step, total, elapsed, eta)
        self.next_percent = (percent // 10 + 1) * 10
