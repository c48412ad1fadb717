"""Steering a playing station: control requests queued by any thread and taken by the producer
at a stride boundary, and the timeline of which conditions made which stretch of the stream.

A change is heard from a stream sample: "next" from where the next stride's audio starts, "now"
(a cut-in) from the earliest sample that can still be regenerated in time (Producer._cut_in).
Everything speaks in absolute stream samples, so "what is playing now" and "in how many seconds
will this be heard" are lookups and subtractions.
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import threading
import time
import typing as tp

from ..lm.window import SamplingParams

WHEN_CHOICES = ("now", "next")


def _public(sampling: tp.Mapping[str, float]) -> dict:
    """SamplingParams field names → the names control commands and /status use."""
    return {"cfg" if name == "cfg_coef" else name: value for name, value in sampling.items()}


@dataclasses.dataclass(frozen=True)
class Conditions:
    """What the generator is asked for: the text prompt and the sampling settings."""
    prompt: str
    sampling: SamplingParams

    def describe(self) -> dict:
        return {"prompt": self.prompt, **_public(dataclasses.asdict(self.sampling))}


@dataclasses.dataclass
class Change:
    """One validated control request. `sampling`: the settings to change (SamplingParams field
    names); `new_piece`: continue without the old token context."""
    prompt: tp.Optional[str] = None
    sampling: tp.Dict[str, float] = dataclasses.field(default_factory=dict)
    new_piece: bool = False
    when: str = "next"
    number: int = 0  # given by Steering.submit
    received_at: float = dataclasses.field(default_factory=time.monotonic)
    heard_from_sample: tp.Optional[int] = None  # set when the producer applies it
    latency_seconds: tp.Optional[float] = None  # received → its first sample played

    def apply_to(self, conditions: Conditions) -> Conditions:
        return Conditions(prompt=self.prompt if self.prompt is not None else conditions.prompt,
                          sampling=dataclasses.replace(conditions.sampling, **self.sampling))

    def summary(self) -> str:
        """One line for the log (the prompt cut to 80 characters)."""
        parts = [f"prompt {self.prompt[:80]!r}"] if self.prompt is not None else []
        parts += [f"{name} {value:g}" for name, value in _public(self.sampling).items()]
        if self.new_piece:
            parts.append("new piece")
        return ", ".join(parts) or "no change"

    def describe(self) -> dict:
        what = {"change": self.number, "when": self.when}
        if self.prompt is not None:
            what["prompt"] = self.prompt
        what.update(_public(self.sampling))
        if self.new_piece:
            what["new_piece"] = True
        return what


class Steering:
    """The control side of one station. `submit` may be called from any thread; `take`,
    `record` and `take_back` only from the producer's. The lock is never taken by the audio
    callback."""

    def __init__(self, conditions: Conditions, history: int = 64):
        self._lock = threading.Lock()
        self._pending: tp.List[Change] = []
        self._numbers = itertools.count(1)
        self.cut_requested = threading.Event()  # a "now" change waits: abandon the stride in progress
        self._segments: tp.List[tp.Tuple[int, Conditions]] = [(0, conditions)]  # (first sample, conditions)
        self._applied: tp.Deque[Change] = collections.deque(maxlen=history)

    # -- any thread ---------------------------------------------------------------------------
    def submit(self, change: Change) -> Change:
        """Queue a change for the producer; returns it with its number."""
        with self._lock:
            change.number = next(self._numbers)
            self._pending.append(change)
        if change.when == "now":
            self.cut_requested.set()
        return change

    @property
    def latest(self) -> Conditions:
        """The conditions the producer generates with now (changes still pending not included)."""
        with self._lock:
            return self._segments[-1][1]

    def status(self, playhead_sample: int, next_stride_sample: int, sample_rate: int) -> dict:
        """What is playing at `playhead_sample`, what comes next and when (seconds from now):
        changes already applied but not yet reached, and pending ones (heard from
        `next_stride_sample` at the earliest, sooner if a cut-in can take them)."""
        with self._lock:
            segments, pending = list(self._segments), list(self._pending)
            applied = [c for c in self._applied if c.heard_from_sample is not None
                       and c.heard_from_sample > playhead_sample]
        playing = [conditions for start, conditions in segments if start <= playhead_sample][-1]

        def seconds_until(sample: int) -> float:
            return round(max(0, sample - playhead_sample) / sample_rate, 3)

        upcoming = [dict(c.describe(), heard_in_seconds=seconds_until(c.heard_from_sample))
                    for c in applied]
        upcoming += [dict(c.describe(), heard_in_seconds=seconds_until(next_stride_sample),
                          taken=False) for c in pending]
        return {"playing": playing.describe(), "upcoming": upcoming}

    # -- the producer's thread -----------------------------------------------------------------
    def take(self) -> tp.List[Change]:
        """Every pending change, oldest first; clears the cut-in request."""
        with self._lock:
            changes, self._pending = self._pending, []
            self.cut_requested.clear()
        return changes

    def record(self, from_sample: int, conditions: Conditions, changes: tp.Sequence[Change] = ()) -> None:
        """The stream from `from_sample` on is made with `conditions` (by `changes`)."""
        with self._lock:
            if conditions != self._segments[-1][1]:
                self._segments.append((int(from_sample), conditions))
            for change in changes:
                change.heard_from_sample = int(from_sample)
                self._applied.append(change)

    def take_back(self, from_sample: int) -> None:
        """The stream from `from_sample` on is regenerated (a cut-in): forget what made it."""
        with self._lock:
            kept = [(start, c) for start, c in self._segments if start < from_sample]
            self._segments = kept or self._segments[:1]

    def note_heard(self, playhead_sample: int, sample_rate: int) -> tp.List[float]:
        """The latencies (received → first sample played) of the changes the playhead has
        reached since the last call; for the station's supervisor thread."""
        now = time.monotonic()
        latencies = []
        with self._lock:
            for change in self._applied:
                if (change.latency_seconds is None and change.heard_from_sample is not None
                        and change.heard_from_sample <= playhead_sample):
                    reached_at = now - (playhead_sample - change.heard_from_sample) / sample_rate
                    change.latency_seconds = max(0.0, reached_at - change.received_at)
                    latencies.append(change.latency_seconds)
        return latencies

    def forget_before(self, sample: int) -> None:
        """Drop segments that ended before `sample` (bounded memory; the one playing stays)."""
        with self._lock:
            while len(self._segments) > 1 and self._segments[1][0] <= sample:
                self._segments.pop(0)
