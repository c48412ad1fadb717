"""The engine-metrics record: the producer's figures (strides, what it has written) and the
station's (start, first sound), each field written by one thread; logs, `/status` and tests read
it. The player's and the readers' figures stay with them and are read, not copied
(Station.status)."""
from __future__ import annotations

import dataclasses
import time
import typing as tp

from prometheus_client import Histogram

#: Buckets (seconds) of the stride generation time and of the prompt-change latency.
STRIDE_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 40.0, 80.0)
CHANGE_LATENCY_BUCKETS = (0.25, 0.5, 1.0, 1.5, 2.0, 5.0, 10.0, 20.0, 40.0)


@dataclasses.dataclass
class StrideRecord:
    index: int
    audio_seconds: float
    generation_seconds: float  # wall time: tokens + decode

    @property
    def real_time_factor(self) -> float:
        """Audio seconds made per wall second (≥ 1 keeps up with playback)."""
        return self.audio_seconds / max(self.generation_seconds, 1e-9)


@dataclasses.dataclass
class EngineMetrics:
    """Figures of a running station. Written by one thread each (named below), read by anyone."""

    sample_rate: int
    model: str = ""
    seed: int = 0
    started_at: float = dataclasses.field(default_factory=time.monotonic)  # station: play()
    strides: tp.List[StrideRecord] = dataclasses.field(default_factory=list)  # producer
    first_sound_seconds: tp.Optional[float] = None  # station: start → playback began (pre-fill)
    written_samples: int = 0  # producer: stream samples in the ring
    generation_errors: int = 0  # producer: strides that failed
    # producer: every stride's generation time (not registered: /metrics collects it).
    stride_seconds: Histogram = dataclasses.field(default_factory=lambda: Histogram(
        "radio_stride_generation_seconds", "Wall time to generate and decode one stride",
        buckets=STRIDE_SECONDS_BUCKETS, registry=None))
    # station supervisor: control command → the first changed sample played.
    change_latency: Histogram = dataclasses.field(default_factory=lambda: Histogram(
        "radio_prompt_change_latency_seconds", "Control command received → first changed sample played",
        buckets=CHANGE_LATENCY_BUCKETS, registry=None))
    last_change_latency_seconds: tp.Optional[float] = None  # station supervisor

    def add_stride(self, record: StrideRecord) -> None:
        self.strides.append(record)
        del self.strides[:-100]  # bounded
        self.stride_seconds.observe(record.generation_seconds)

    @property
    def last_real_time_factor(self) -> tp.Optional[float]:
        return self.strides[-1].real_time_factor if self.strides else None

    def snapshot(self) -> dict:
        strides = self.strides
        last = strides[-1] if strides else None
        return {
            "model": self.model,
            "seed": self.seed,
            "sample_rate": self.sample_rate,
            "uptime_seconds": round(time.monotonic() - self.started_at, 3),
            "strides": last.index + 1 if last else 0,
            "last_stride_seconds": round(last.generation_seconds, 3) if last else None,
            "real_time_factor": round(last.real_time_factor, 3) if last else None,
            "first_sound_seconds": self.first_sound_seconds,
            "generation_errors": self.generation_errors,
            "last_change_latency_seconds": self.last_change_latency_seconds,
        }
