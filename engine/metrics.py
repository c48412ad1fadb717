"""The engine-metrics record: one place that the producer and the player update, and that logs,
`/status` and tests read."""
from __future__ import annotations

import dataclasses
import time
import typing as tp


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
    """Figures of a running station. Written by one thread each, read by anyone."""

    sample_rate: int
    model: str = ""
    prompt: str = ""
    seed: int = 0
    started_at: float = dataclasses.field(default_factory=time.monotonic)
    strides: tp.List[StrideRecord] = dataclasses.field(default_factory=list)
    first_sound_seconds: tp.Optional[float] = None  # start → playback began (pre-fill time)
    written_samples: int = 0  # stream samples in the ring (the producer's side)
    playhead_samples: int = 0  # stream samples played (the player's side)
    underruns: int = 0
    underrun_seconds: float = 0.0
    reader_overruns: int = 0  # sink readers that fell behind and were moved to the live point

    def add_stride(self, record: StrideRecord) -> None:
        self.strides.append(record)
        del self.strides[:-100]  # bounded

    @property
    def buffered_seconds(self) -> float:
        return max(0, self.written_samples - self.playhead_samples) / self.sample_rate

    @property
    def last_real_time_factor(self) -> tp.Optional[float]:
        return self.strides[-1].real_time_factor if self.strides else None

    def snapshot(self) -> dict:
        last = self.strides[-1] if self.strides else None
        return {
            "model": self.model,
            "prompt": self.prompt,
            "seed": self.seed,
            "sample_rate": self.sample_rate,
            "uptime_seconds": round(time.monotonic() - self.started_at, 3),
            "strides": last.index + 1 if last else 0,
            "last_stride_seconds": round(last.generation_seconds, 3) if last else None,
            "real_time_factor": round(last.real_time_factor, 3) if last else None,
            "buffered_seconds": round(self.buffered_seconds, 3),
            "played_seconds": round(self.playhead_samples / self.sample_rate, 3),
            "first_sound_seconds": self.first_sound_seconds,
            "underruns": self.underruns,
            "underrun_seconds": round(self.underrun_seconds, 3),
            "reader_overruns": self.reader_overruns,
        }
