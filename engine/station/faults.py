"""Fault injection for tests and drills: `RADIO_FAULTS`, a comma list of
`KIND@stride:N[:SECONDS]` with KIND `raise` (the stride raises), `nan` (its logits turn NaN, as a
broken GPU or checkpoint would give) or `slow` (it takes SECONDS longer). Each entry fires once,
on the first attempt at stride N to reach it; the same entry twice fires on two attempts. With
several stations, `NAME/KIND@stride:N` fires in station NAME only (unprefixed: in every one).

    RADIO_FAULTS="raise@stride:3,nan@stride:5,slow@stride:7:3.0" python server.py --model tiny
"""
from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
import typing as tp

from .logs import StationLog

log = logging.getLogger(__name__)

KINDS = ("raise", "nan", "slow")
_ENTRY = re.compile(r"^(?:([\w-]+)/)?(raise|nan|slow)@stride:(\d+)(?::(\d+(?:\.\d+)?))?$")


class FaultSpecError(ValueError):
    """RADIO_FAULTS cannot be parsed; the message shows the form."""


class InjectedFault(RuntimeError):
    """A fault asked for by RADIO_FAULTS."""


@dataclasses.dataclass
class Fault:
    kind: str
    stride: int
    seconds: float = 0.0
    fired: bool = False


class FaultPlan:
    def __init__(self, faults: tp.Sequence[Fault] = (), station: str = ""):
        self.faults = list(faults)
        self.log = StationLog(log, station)
        self._lock = threading.Lock()

    @classmethod
    def parse(cls, spec: tp.Optional[str], station: str = "") -> "FaultPlan":
        """The faults of `spec` for `station` (those of another station's are left out)."""
        faults = []
        for entry in (spec or "").split(","):
            entry = entry.strip()
            if not entry:
                continue
            match = _ENTRY.match(entry)
            if not match:
                raise FaultSpecError(f"RADIO_FAULTS entry {entry!r}: use [STATION/]KIND@stride:N[:SECONDS] with "
                                     f"KIND raise, nan or slow, e.g. raise@stride:3,slow@stride:7:3.0")
            target, kind, stride, seconds = match.group(1), match.group(2), int(match.group(3)), float(match.group(4) or 0.0)
            if target is not None and target != station:
                continue
            if kind == "slow" and seconds <= 0:
                raise FaultSpecError(f"RADIO_FAULTS entry {entry!r}: slow needs SECONDS, e.g. slow@stride:7:3.0")
            faults.append(Fault(kind, stride, seconds))
        return cls(faults, station)

    def take(self, stride: int) -> tp.List[Fault]:
        """The faults due at this attempt of `stride` (each fires once; one of each kind per attempt)."""
        due: tp.Dict[str, Fault] = {}
        with self._lock:
            for fault in self.faults:
                if not fault.fired and fault.stride == stride and fault.kind not in due:
                    fault.fired = True
                    due[fault.kind] = fault
        return list(due.values())

    def drill(self, stride: int, stop: threading.Event) -> dict:
        """Carry out the faults due at this attempt of `stride`: raise InjectedFault, sleep
        (False from `stop.wait` when stopped meanwhile is the caller's to check), or return the
        keyword that makes the stride's logits NaN."""
        drill: dict = {}
        for fault in self.take(stride):
            self.log.warning("fault drill: %s at stride %d", fault.kind, stride)
            if fault.kind == "raise":
                raise InjectedFault(f"injected fault at stride {stride}")
            if fault.kind == "slow":
                stop.wait(fault.seconds)
            if fault.kind == "nan":
                drill["logits_hook"] = lambda logits: logits * float("nan")
        return drill


class FailurePolicy:
    """What to do when a stride fails: retry from the same context after a backoff (0.5 s,
    doubling, at most `max_backoff_seconds`); every `new_piece_after` failures in a row, start a
    new piece from the prompt; when failures have lasted `give_up_after_seconds`, give up."""

    def __init__(self, give_up_after_seconds: float = 300.0, new_piece_after: int = 3,
                 max_backoff_seconds: float = 10.0):
        self.give_up_after_seconds = give_up_after_seconds
        self.new_piece_after = new_piece_after
        self.max_backoff_seconds = max_backoff_seconds
        self.consecutive = 0
        self.failing_since: tp.Optional[float] = None

    def succeeded(self) -> None:
        self.consecutive, self.failing_since = 0, None

    def failed(self) -> tp.Tuple[bool, float, bool]:
        """(give up, backoff seconds, start a new piece) after one more failure."""
        now = time.monotonic()
        self.consecutive += 1
        self.failing_since = self.failing_since or now
        give_up = now - self.failing_since >= self.give_up_after_seconds
        backoff = min(self.max_backoff_seconds, 0.5 * 2 ** (self.consecutive - 1))
        return give_up, backoff, self.consecutive % self.new_piece_after == 0

    @property
    def failing_seconds(self) -> float:
        """How long strides have been failing (0 while they succeed)."""
        return 0.0 if self.failing_since is None else time.monotonic() - self.failing_since
