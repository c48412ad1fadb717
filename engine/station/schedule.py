"""`--schedule FILE`: a programme of prompts played live, in order and, with `loop = true`,
endlessly. TOML or JSON:

    loop = true
    [[entries]]
    prompt = "warm lofi hip hop"
    seconds = 120
    [[entries]]
    prompts = [{text = "ambient piano", weight = 2}, {text = "rain", weight = 1}]
    seconds = 90
    morph_seconds = 10          # reach this entry's prompts over 10 s from where it starts

JSON: {"loop": true, "entries": [{"prompt": "...", "seconds": 120}, ...]} or just the list.
The file is watched (`ScheduleWatcher`): a valid change replaces the programme from the next
stride on; a bad one is refused with the entry and field at fault, and the programme goes on.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import tomllib
import typing as tp

from .prompts import PromptError, WeightedPrompts, morph_seconds, number, prompt_text, weighted_prompts

log = logging.getLogger(__name__)

ENTRY_FIELDS = {"prompt", "prompts", "seconds", "morph_seconds"}
MAX_ENTRIES = 1000


class ScheduleError(ValueError):
    """The schedule file cannot be used; the message names the file, entry and field."""


@dataclasses.dataclass(frozen=True)
class Entry:
    prompts: WeightedPrompts  # weights summing to 1
    seconds: float
    morph_seconds: float = 0.0


@dataclasses.dataclass(frozen=True)
class Schedule:
    entries: tp.Tuple[Entry, ...]
    loop: bool = False

    @property
    def total_seconds(self) -> float:
        return sum(entry.seconds for entry in self.entries)

    def starts(self, from_seconds: float, to_seconds: float) -> tp.List[tp.Tuple[float, int]]:
        """(start, entry index) of every entry that starts in [from_seconds, to_seconds), in
        programme seconds; with `loop`, the programme repeats."""
        out, offset = [], 0.0
        while offset < to_seconds:
            for index, entry in enumerate(self.entries):
                if from_seconds <= offset < to_seconds:
                    out.append((offset, index))
                offset += entry.seconds
            if not self.loop:
                break
        return out

    def entry_at(self, seconds: float) -> tp.Tuple[tp.Optional[int], tp.Optional[float]]:
        """(the entry playing at programme second `seconds`, seconds until the next one starts);
        (last entry, None) once a programme without loop has ended."""
        if self.loop:
            seconds %= self.total_seconds
        offset = 0.0
        for index, entry in enumerate(self.entries):
            if seconds < offset + entry.seconds:
                left = offset + entry.seconds - seconds
                return index, (left if self.loop or index + 1 < len(self.entries) else None)
            offset += entry.seconds
        return len(self.entries) - 1, None


def load_schedule(path: str) -> Schedule:
    """Read and check a schedule file (ScheduleError says what is wrong and where)."""
    where = f"--schedule {path}"
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise ScheduleError(f"{where}: cannot read it ({err.strerror})") from err
    try:
        data = json.loads(raw) if path.lower().endswith(".json") else tomllib.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        kind = "JSON" if path.lower().endswith(".json") else "TOML"
        raise ScheduleError(f"{where}: not valid {kind}: {err}") from err
    if isinstance(data, list):
        data = {"entries": data}
    if not isinstance(data, dict) or set(data) - {"entries", "loop"}:
        raise ScheduleError(f"{where}: expected `loop` and a list of `entries`")
    loop = data.get("loop", False)
    if not isinstance(loop, bool):
        raise ScheduleError(f"{where}: loop must be true or false")
    entries = data.get("entries")
    if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_ENTRIES:
        raise ScheduleError(f"{where}: entries must be a list of 1 to {MAX_ENTRIES} entries")
    return Schedule(tuple(_entry(raw_entry, f"{where}: entry {i + 1}") for i, raw_entry in enumerate(entries)),
                    loop)


def _entry(raw: tp.Any, where: str) -> Entry:
    if not isinstance(raw, dict):
        raise ScheduleError(f"{where}: an entry is a table with prompt (or prompts) and seconds")
    unknown = set(raw) - ENTRY_FIELDS
    if unknown:
        raise ScheduleError(f"{where}: unknown field {', '.join(sorted(unknown))} "
                            f"(an entry has {', '.join(sorted(ENTRY_FIELDS))})")
    if ("prompt" in raw) == ("prompts" in raw):
        raise ScheduleError(f"{where}: give either prompt or prompts")
    try:
        prompts = (((prompt_text(raw["prompt"]), 1.0),) if "prompt" in raw
                   else weighted_prompts(raw["prompts"]))
        if "seconds" not in raw:
            raise PromptError("seconds is missing")
        seconds = number(raw["seconds"], "seconds")
        if seconds < 1:
            raise PromptError(f"seconds must be at least 1 (got {seconds:g})")
        morph = morph_seconds(raw.get("morph_seconds", 0.0))
    except PromptError as err:
        raise ScheduleError(f"{where}: {err}") from err
    return Entry(prompts, float(seconds), morph)


class ScheduleWatcher(threading.Thread):
    """Reloads the schedule file when it changes (watchfiles); a valid file goes to
    `on_schedule`, a bad one is logged and ignored."""

    def __init__(self, path: str, on_schedule: tp.Callable[[Schedule], None]):
        super().__init__(name="schedule-watcher", daemon=True)
        self.path = os.path.abspath(path)
        self.on_schedule = on_schedule
        self.reloads = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        import watchfiles
        folder = os.path.dirname(self.path)
        for changes in watchfiles.watch(folder, stop_event=self._stop_event, debounce=200,
                                        raise_interrupt=False):
            if not any(os.path.abspath(path) == self.path for _, path in changes):
                continue
            try:
                schedule = load_schedule(self.path)
            except ScheduleError as err:
                log.error("schedule: change refused, the programme goes on: %s", err)
                continue
            self.reloads += 1
            log.info("schedule: %s changed: %d entries%s, from the next stride", self.path,
                     len(schedule.entries), " (loop)" if schedule.loop else "")
            self.on_schedule(schedule)

    def stop(self) -> None:
        self._stop_event.set()
