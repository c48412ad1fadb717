"""The station: wires generator → stitcher → stream ring → player → program ring for one model
and one configuration. Sinks and the clock are attached by the caller (server.py)."""
from __future__ import annotations

import logging
import threading
import time


from .config import EngineConfig
from .generator import SamplingParams, WindowGenerator
from .metrics import EngineMetrics
from .player import Player
from .producer import Producer
from .ring import PcmRing
from .stitcher import StitchingDecoder

log = logging.getLogger(__name__)


class Station:
    """One endless (or `duration_seconds` long) stream of generated music."""

    def __init__(self, config: EngineConfig, model, *, program_seconds: float = 30.0,
                 release_lm_weights: bool = False):
        config.validate(max_duration_seconds=float(model.max_duration))
        self.config = config
        self.model = model
        self.sample_rate = int(model.sample_rate)
        self.channels = int(model.audio_channels)
        frame_rate = float(model.frame_rate)
        sr = self.sample_rate
        self.stride_frames = max(1, round(config.stride_seconds * frame_rate))
        context_frames = round(config.context_seconds * frame_rate)
        self.buffer_ahead_samples = int(config.resolved_buffer_ahead_seconds * sr)
        self.end_sample = None if config.duration_seconds is None else int(round(config.duration_seconds * sr))
        self.metrics = EngineMetrics(sample_rate=sr, model=config.model, prompt=config.prompt,
                                     seed=config.seed)
        self.generator = WindowGenerator(model, context_frames, SamplingParams(
            temperature=config.temperature, top_k=config.top_k, top_p=config.top_p,
            cfg_coef=config.cfg_coef), seed=config.seed, dtype=config.dtype,
            max_frames=context_frames + self.stride_frames, release_weights=release_lm_weights)
        self.stitcher = StitchingDecoder(model.compression_model)
        history = int(config.history_seconds * sr)
        self.stream_ring = PcmRing(self.buffer_ahead_samples + history + sr, self.channels)
        self.program_ring = PcmRing(int(program_seconds * sr), self.channels)
        self.player = Player(self.stream_ring, self.program_ring, sr, end_sample=self.end_sample)
        self.producer = Producer(
            self.generator, self.stitcher, self.stream_ring, prompt=config.prompt,
            stride_frames=self.stride_frames, buffer_ahead_samples=self.buffer_ahead_samples,
            playhead=lambda: self.player.playhead, metrics=self.metrics, end_sample=self.end_sample,
            first_stride_frames=max(1, round(self.first_stride_seconds * frame_rate)))
        log.info("station: window %.1f s, context %.1f s, stride %.1f s (%d frames), buffer ahead "
                 "%.1f s, seam hold-back %d ms, seed %d", config.window_seconds, config.context_seconds,
                 config.stride_seconds, self.stride_frames, config.resolved_buffer_ahead_seconds,
                 1000 * self.stitcher.holdback_frames * self.stitcher.hop_samples // sr, config.seed)

    @property
    def first_stride_seconds(self) -> float:
        """The ramp's first stride: as configured, else 1 s on CUDA and the full stride on CPU."""
        if self.config.first_stride_seconds is not None:
            return self.config.first_stride_seconds
        if self.generator.device.type == "cuda":
            return min(1.0, self.config.stride_seconds)
        return self.config.stride_seconds

    def start(self, producer_thread: bool = True) -> None:
        """Start the run's clock and, by default, the producer thread. With
        `producer_thread=False` the caller runs `run_producer()` itself, in the process's main
        thread: OpenMP's workers spin-wait only for the initial thread; for any other thread on
        2 cores every small parallel op pays a futex wake-up (measured: 46 instead of 22 ms per
        decode step)."""
        self.metrics.started_at = time.monotonic()
        if producer_thread:
            self.producer.start()

    def run_producer(self) -> None:
        """Generate in the calling thread until stopped, finished or failed."""
        self.producer.run()

    def _prefill_target_samples(self) -> int:
        target = max(1, int(self.config.prefill_seconds * self.sample_rate))
        return target if self.end_sample is None else min(target, self.end_sample)

    def wait_for_prefill(self, stop: threading.Event, poll_seconds: float = 0.05) -> bool:
        """Block until enough audio is buffered to start playing. False if stopped or failed."""
        target = self._prefill_target_samples()
        log.info("pre-fill: generating the first %.1f s before playback starts",
                 max(target / self.sample_rate, self.first_stride_seconds))
        while not stop.is_set():
            written = self.stream_ring.written_until
            if written >= target or (written and self.producer.waiting_for_room) or self.producer.done.is_set():
                break
            stop.wait(poll_seconds)
        if stop.is_set() or self.producer.error is not None or self.stream_ring.written_until == 0:
            return False
        self.metrics.first_sound_seconds = round(time.monotonic() - self.metrics.started_at, 3)
        self.update_metrics()
        rtf = self.metrics.last_real_time_factor
        log.info("pre-fill: done in %.1f s, %.1f s buffered; playback starts", self.metrics.first_sound_seconds,
                 self.metrics.buffered_seconds)
        if rtf is not None and rtf < 1.0:
            log.warning("generation runs at %.2fx real time: playback will pause in silence while "
                        "it catches up; --prefill (with a larger --buffer-ahead) buffers more first",
                        rtf)
        return True

    def update_metrics(self) -> None:
        """Copy the player's figures into the metrics record (never from the audio callback)."""
        m = self.metrics
        m.written_samples = self.stream_ring.written_until
        m.playhead_samples = self.player.playhead
        m.underruns = self.player.underruns
        m.underrun_seconds = self.player.underrun_samples / self.sample_rate

    @property
    def finished(self) -> bool:
        """Everything there is to play has been played."""
        return self.player.finished

    def stop(self) -> None:
        """Stop generating and playing; the program ring closes so sinks drain and finish."""
        self.producer.stop()
        self.program_ring.closed = True
        if self.producer.ident is not None:  # started as a thread (else its caller returns)
            self.producer.join(timeout=30)
        self.update_metrics()
