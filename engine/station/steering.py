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

from ..lm.window import Conditioning, PromptMix, SamplingParams
from .schedule import Schedule

WHEN_CHOICES = ("now", "next")


def _public(sampling: tp.Mapping[str, float]) -> dict:
    """SamplingParams field names → the names control commands and /status use."""
    return {"cfg" if name == "cfg_coef" else name: value for name, value in sampling.items()}


@dataclasses.dataclass(frozen=True)
class Conditions:
    """What the generator is asked for: weighted prompts (maybe morphing) and sampling settings."""
    mix: PromptMix
    sampling: SamplingParams

    @classmethod
    def single(cls, prompt: str, sampling: SamplingParams) -> "Conditions":
        return cls(PromptMix((prompt,), (1.0,)), sampling)

    def conditioning(self) -> Conditioning:
        """A text when one prompt alone is asked for (the unweighted path), else the mix."""
        mix = self.mix
        if len(mix.texts) == 1 and mix.start_weights is None:
            return mix.texts[0]
        return mix

    def prompts_at(self, frame: int) -> tp.List[tp.Tuple[str, float]]:
        """The prompts with their weights at stream frame `frame` (zero weights left out)."""
        return [(text, w) for text, w in zip(self.mix.texts, self.mix.weights_at(frame)) if w > 0]

    def describe(self, frame: int) -> dict:
        prompts = self.prompts_at(frame)
        target = [(text, w) for text, w in zip(self.mix.texts, self.mix.weights) if w > 0]
        what = {"prompt": prompt_text(prompts), "title": prompt_text(target),  # title: where a morph goes
                "prompts": [{"text": text, "weight": round(w, 4)} for text, w in prompts]}
        mix = self.mix
        if mix.start_weights is not None and frame < mix.morph_start_frame + mix.morph_frames:
            what["morph_frames_left"] = mix.morph_start_frame + mix.morph_frames - frame
        what.update(_public(dataclasses.asdict(self.sampling)))
        return what


def prompt_text(prompts: tp.Sequence[tp.Tuple[str, float]]) -> str:
    """One prompt as itself; several as "a (60%) + b (40%)"."""
    if len(prompts) == 1:
        return prompts[0][0]
    return " + ".join(f"{text} ({100 * w:.0f}%)" for text, w in prompts)


@dataclasses.dataclass
class Change:
    """One validated control request. `prompts`: (text, weight) pairs with weights summing to 1
    (one prompt: weight 1), reached over `morph_seconds`; `sampling`: the settings to change
    (SamplingParams field names); `new_piece`: continue without the old token context."""
    prompts: tp.Optional[tp.Tuple[tp.Tuple[str, float], ...]] = None
    morph_seconds: float = 0.0
    sampling: tp.Dict[str, float] = dataclasses.field(default_factory=dict)
    new_piece: bool = False
    when: str = "next"
    number: int = 0  # given by Steering.submit
    received_at: float = dataclasses.field(default_factory=time.monotonic)
    heard_from_sample: tp.Optional[int] = None  # set when the producer applies it
    latency_seconds: tp.Optional[float] = None  # received → its first sample played
    at_frame: tp.Optional[int] = None  # a schedule entry: switch (or start its morph) exactly here
    entry: tp.Optional[int] = None  # the schedule entry (0-based) it starts

    def apply_to(self, conditions: Conditions, frame: int, frame_rate: float) -> Conditions:
        """The conditions from stream frame `frame` (or `at_frame`) on: a morph starts there from
        the weights then playing; a change at `at_frame` switches exactly there."""
        frame = frame if self.at_frame is None else self.at_frame
        mix = conditions.mix.settled(frame)
        if self.prompts is not None:
            target = dict(self.prompts)
            morph_frames = round(self.morph_seconds * frame_rate)
            start = frame
            if self.at_frame is not None and morph_frames == 0:
                start, morph_frames = frame - 1, 1  # a switch exactly at at_frame, even mid-stride
            if morph_frames > 0:
                now = dict(conditions.prompts_at(frame))
                texts = tuple(dict.fromkeys(list(now) + list(target)))
                mix = PromptMix(texts, tuple(target.get(t, 0.0) for t in texts),
                                start_weights=tuple(now.get(t, 0.0) for t in texts),
                                morph_start_frame=start, morph_frames=morph_frames)
            else:
                mix = PromptMix(tuple(target), tuple(target.values()))
        return Conditions(mix, dataclasses.replace(conditions.sampling, **self.sampling))

    def summary(self) -> str:
        """One line for the log (each prompt cut to 80 characters)."""
        parts = []
        if self.prompts is not None:
            parts.append("prompt " + " + ".join(
                f"{text[:80]!r}" + ("" if len(self.prompts) == 1 else f" ({w:.2f})") for text, w in self.prompts))
            if self.morph_seconds:
                parts.append(f"morph {self.morph_seconds:g} s")
        parts += [f"{name} {value:g}" for name, value in _public(self.sampling).items()]
        if self.new_piece:
            parts.append("new piece")
        return ", ".join(parts) or "no change"

    def describe(self) -> dict:
        what = {"change": self.number, "when": self.when}
        if self.entry is not None:
            what["schedule_entry"] = self.entry + 1
        if self.prompts is not None:
            what["prompt"] = prompt_text(self.prompts)
            what["prompts"] = [{"text": text, "weight": w} for text, w in self.prompts]
            if self.morph_seconds:
                what["morph_seconds"] = self.morph_seconds
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
        self._heard: tp.Set[int] = set()  # numbers of applied changes the playhead has reached
        self._schedule: tp.Optional[Schedule] = None
        self._new_schedule: tp.Optional[Schedule] = None  # starts at the next stride
        self._schedule_origin = 0  # the stream frame of the programme's second 0
        self._scheduled_until = 0  # entry starts before this frame have been handed out

    # -- any thread ---------------------------------------------------------------------------
    def submit(self, change: Change) -> Change:
        """Queue a change for the producer; returns it with its number."""
        with self._lock:
            change.number = next(self._numbers)
            self._pending.append(change)
        if change.when == "now":
            self.cut_requested.set()
        return change

    def set_schedule(self, schedule: Schedule) -> None:
        """Play `schedule` from its first entry, from the next stride on (any thread)."""
        with self._lock:
            self._new_schedule = schedule

    def start_schedule(self, schedule: Schedule, origin_frame: int = 0, scheduled_until_frame: int = 1) -> None:
        """Play `schedule` with its second 0 at stream frame `origin_frame` (negative: it started
        before this stream, as after a resume), its entries starting before
        `scheduled_until_frame` already handed out (by default its first entry: the conditions
        already set)."""
        with self._lock:
            self._schedule, self._schedule_origin = schedule, int(origin_frame)
            self._scheduled_until = int(scheduled_until_frame)

    def schedule_position(self) -> tp.Optional[tp.Tuple[int, int]]:
        """(origin frame, frame before which entries were handed out) of the schedule playing."""
        with self._lock:
            if self._schedule is None:
                return None
            return self._schedule_origin, self._scheduled_until

    @property
    def latest(self) -> Conditions:
        """The conditions the producer generates with now (changes still pending not included)."""
        with self._lock:
            return self._segments[-1][1]

    def schedule_status(self, playhead_frame: int, frame_rate: float) -> tp.Optional[dict]:
        """The schedule entry playing at `playhead_frame` and the seconds until the next one."""
        with self._lock:
            schedule, origin = self._schedule, self._schedule_origin
        if schedule is None or playhead_frame < origin:
            return None
        index, left = schedule.entry_at((playhead_frame - origin) / frame_rate)
        return {"entry": index + 1, "entries": len(schedule.entries), "loop": schedule.loop,
                "seconds_to_next": None if left is None else round(left, 3)}

    def status(self, playhead_sample: int, next_stride_sample: int, sample_rate: int,
               hop_samples: int) -> dict:
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
        status = {"playing": playing.describe(playhead_sample // hop_samples), "upcoming": upcoming}
        schedule = self.schedule_status(playhead_sample // hop_samples, sample_rate / hop_samples)
        if schedule is not None:
            status["schedule"] = schedule
        return status

    # -- the producer's thread -----------------------------------------------------------------
    def take(self) -> tp.List[Change]:
        """Every pending change, oldest first; clears the cut-in request."""
        with self._lock:
            changes, self._pending = self._pending, []
            self.cut_requested.clear()
        return changes

    def scheduled(self, frame_from: int, frame_to: int, frame_rate: float) -> tp.List[Change]:
        """The schedule's entries that start in stream frames [frame_from, frame_to), as
        changes at their frame; a schedule set meanwhile starts at `frame_from`."""
        with self._lock:
            if self._new_schedule is not None:
                self._schedule, self._new_schedule = self._new_schedule, None
                self._schedule_origin = self._scheduled_until = frame_from
            schedule, origin = self._schedule, self._schedule_origin
            start = max(frame_from, self._scheduled_until)
            if schedule is None or frame_to <= start:
                return []
            self._scheduled_until = frame_to
        changes = []
        for seconds, index in schedule.starts((start - origin) / frame_rate, (frame_to - origin) / frame_rate):
            entry = schedule.entries[index]
            changes.append(Change(prompts=entry.prompts, morph_seconds=entry.morph_seconds, when="next",
                                  at_frame=origin + round(seconds * frame_rate), entry=index,
                                  number=next(self._numbers)))
        return changes

    def frames_to_second_entry(self, frame_from: int, frames: int, frame_rate: float) -> int:
        """`frames`, shortened so that at most one schedule entry starts inside the stride
        [frame_from, frame_from + frames) (a stride holds one switch or morph)."""
        with self._lock:
            schedule, origin = self._schedule, self._schedule_origin
            if self._new_schedule is not None:
                schedule, origin = self._new_schedule, frame_from
        if schedule is None:
            return frames
        starts = [origin + round(seconds * frame_rate) for seconds, _ in
                  schedule.starts((frame_from - origin) / frame_rate, (frame_from + frames - origin) / frame_rate)]
        starts = [f for f in starts if f > frame_from]  # one at the stride's first frame is fine
        return frames if len(starts) < 2 else max(1, starts[1] - frame_from)

    def record(self, from_sample: int, conditions: Conditions, changes: tp.Sequence[Change] = ()) -> None:
        """The stream from `from_sample` on is made with `conditions` (by `changes`)."""
        with self._lock:
            if conditions != self._segments[-1][1]:
                self._segments.append((int(from_sample), conditions))
            for change in changes:
                change.heard_from_sample = int(from_sample)
                self._applied.append(change)

    def take_back(self, from_sample: int, from_frame: int) -> None:
        """The stream from `from_sample` (codes from `from_frame`) on is regenerated (a
        cut-in): forget what made it; schedule entries after it will be handed out again."""
        with self._lock:
            self._scheduled_until = min(self._scheduled_until, from_frame)
            newest = self._segments[-1][1]  # what was asked for last still holds, from the cut on
            self._segments = [(start, c) for start, c in self._segments if start < from_sample] or self._segments[:1]
            if self._segments[-1][1] != newest:
                self._segments.append((int(from_sample), newest))
            for change in self._applied:
                if change.heard_from_sample is not None and change.heard_from_sample > from_sample:
                    change.heard_from_sample = int(from_sample)

    def note_heard(self, playhead_sample: int, sample_rate: int) -> tp.List[Change]:
        """The changes (commands and schedule entries) the playhead has reached since the last
        call, with each command's latency (received → first sample played) measured; for the
        station's supervisor thread."""
        now = time.monotonic()
        heard = []
        with self._lock:
            for change in self._applied:
                if (change.heard_from_sample is not None and change.heard_from_sample <= playhead_sample
                        and change.number not in self._heard):
                    self._heard.add(change.number)
                    if change.entry is None:  # a command: how long until it was heard
                        reached_at = now - (playhead_sample - change.heard_from_sample) / sample_rate
                        change.latency_seconds = max(0.0, reached_at - change.received_at)
                    heard.append(change)
            self._heard &= {change.number for change in self._applied}
        return heard

    def forget_before(self, sample: int) -> None:
        """Drop segments that ended before `sample` (bounded memory; the one playing stays)."""
        with self._lock:
            while len(self._segments) > 1 and self._segments[1][0] <= sample:
                self._segments.pop(0)
