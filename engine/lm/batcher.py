"""Continuous batching of strides: the strides of every station run in the same decode steps.

Stations (their producer threads) hand a stride to `StrideBatcher.generate` and wait; the
generation thread (`run`) admits waiting strides into their station's slot between two steps
(the prefill of their context, alone), then runs one batched step for every stride in progress
(batch.py), samples each stride's tokens with its own settings and random generator, and hands
back each stride when its last step is done. A stride joins the running batch at the next step
and leaves when it is done, as LLM servers (vLLM) batch requests: stations need not start or cut
in together. When several wait, the station with the least audio buffered is admitted first.

Each stride computes what `generate.generate` computes (tests: the same tokens alone as in a
batch); an exception from its progress callback (a cut-in, a stop) or its prefill ends that
stride alone and is raised in the station's thread.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
import time
import typing as tp

import torch

from .batch import BatchedDecoder
from .generate import ProgressCallback, WeightsCallback, check_finite, layout, unpattern
from .sampling import sample

log = logging.getLogger(__name__)


@dataclasses.dataclass
class StrideRequest:
    """One stride to generate: what `generate.generate` takes, plus who asks. `buffered` says
    how many seconds of audio the station has ahead of its listeners (least first)."""
    station: str
    prompt: tp.Optional[torch.Tensor]  # [1, K, P] or None
    attributes: tp.Any  # one ConditioningAttributes, or a list mixed by `weights_at`
    new_frames: int
    temperature: float = 1.0
    top_k: int = 250
    top_p: float = 0.0
    cfg_coef: float = 3.0
    generator: tp.Optional[torch.Generator] = None
    progress: tp.Optional[ProgressCallback] = None
    weights_at: tp.Optional[WeightsCallback] = None
    logits_hook: tp.Optional[tp.Callable[[torch.Tensor], torch.Tensor]] = None
    timings: tp.Optional[tp.Dict[str, float]] = None
    buffered: tp.Callable[[], float] = lambda: 0.0


@dataclasses.dataclass
class _Stride:
    """A stride in progress in a slot: its pattern sequence [K, S] and where it is."""
    request: StrideRequest
    future: concurrent.futures.Future
    slot: int
    sequence: torch.Tensor
    generated: torch.Tensor  # [S, K]: positions holding a timestep to generate
    total: int  # frames: prompt + new
    first: int  # the first position to sample
    offset: int  # the position sampled next
    steps: int  # S
    logits: torch.Tensor  # [2, K, card] for `offset`
    started: float
    prefill_seconds: float


class StrideBatcher:
    """Runs the strides of the stations that `join` in shared decode steps of `decoder`."""

    def __init__(self, decoder: BatchedDecoder):
        self.decoder = decoder
        self.fast = decoder.fast
        self._slots: tp.Dict[str, int] = {}  # station → its slot
        self._waiting: tp.List[tp.Tuple[StrideRequest, concurrent.futures.Future]] = []
        self._running: tp.Dict[int, _Stride] = {}
        self._changed = threading.Condition()
        self.steps = 0  # batched decode steps run
        self.busy_slot_steps = 0  # Σ over steps of the strides in progress (the batch's fill)

    # -- stations ---------------------------------------------------------------------------
    def join(self, station: str) -> int:
        """Give `station` a slot of its own (ValueError when all are taken)."""
        with self._changed:
            if station in self._slots:
                raise ValueError(f"a station named {station!r} already has a slot")
            free = sorted(set(range(self.decoder.slots)) - set(self._slots.values()))
            if not free:
                raise ValueError(f"all {self.decoder.slots} slots of the batched decoder are taken")
            self._slots[station] = free[0]
            return free[0]

    def leave(self, station: str) -> None:
        """Free `station`'s slot; a stride it still has in progress or waiting is cancelled."""
        with self._changed:
            slot = self._slots.pop(station, None)
            for request, future in [w for w in self._waiting if w[0].station == station]:
                self._waiting.remove((request, future))
                future.set_exception(RuntimeError(f"station {station!r} left"))
            running = self._running.get(slot) if slot is not None else None
            if running is not None:
                running.request.progress = _cancelled(station)

    # -- the station's side -------------------------------------------------------------------
    def generate(self, request: StrideRequest) -> torch.Tensor:
        """Block until the stride is generated → codes [1, K, P + new_frames] (raises what the
        stride raised: its progress callback's exception, FloatingPointError, ...)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._changed:
            if request.station not in self._slots:
                raise ValueError(f"station {request.station!r} has not joined the batch")
            self._waiting.append((request, future))
            self._changed.notify_all()
        return future.result()

    # -- the generation thread -----------------------------------------------------------------
    def run(self, stop: threading.Event, poll_seconds: float = 0.1) -> None:
        """Run strides until `stop` (the process's main thread: CPU work stays there)."""
        while not stop.is_set():
            with self._changed:
                if not self._waiting and not self._running:
                    self._changed.wait(poll_seconds)
                    continue
            self.run_once()
        with self._changed:
            for stride in list(self._running.values()):
                self._fail(stride, RuntimeError("the batch stopped"))
            for _request, future in self._waiting:
                future.set_exception(RuntimeError("the batch stopped"))
            self._waiting.clear()

    def run_once(self) -> bool:
        """Admit waiting strides into free slots, then advance every stride by one position.
        False when there was nothing to do."""
        self._admit()
        if not self._running:
            return False
        self._advance()
        return True

    def _admit(self) -> None:
        with self._changed:
            waiting = sorted(self._waiting, key=lambda w: w[0].buffered())
            admitted = []
            for request, future in waiting:
                slot = self._slots.get(request.station)
                if slot is not None and slot not in self._running and all(slot != s for s, _, _ in admitted):
                    admitted.append((slot, request, future))
                    self._waiting.remove((request, future))
        for slot, request, future in admitted:
            try:
                stride = self._prefill(slot, request, future)
            except BaseException as err:  # noqa: BLE001 - handed to the station's thread
                future.set_exception(err)
                continue
            with self._changed:
                self._running[slot] = stride

    def _prefill(self, slot: int, request: StrideRequest, future) -> _Stride:
        """The stride's context into its slot (generate.generate's first half)."""
        sequence, generated, first, steps, total, P = layout(self.fast, request.prompt, request.new_frames)
        self.decoder.set_conditions(slot, request.attributes, None if request.weights_at is None else request.weights_at(P))
        started = time.perf_counter()
        with torch.inference_mode():
            logits = self.decoder.prefill(slot, sequence[:, :first].unsqueeze(0).expand(2, -1, -1))
        if request.logits_hook is not None:
            logits = request.logits_hook(logits)
        check_finite(logits)
        return _Stride(request, future, slot, sequence, generated, total, first, first, steps, logits,
                       started, time.perf_counter() - started)

    def _advance(self) -> None:
        """Sample every stride's next position, hand back the finished ones, step the rest."""
        tokens: tp.Dict[int, torch.Tensor] = {}
        positions: tp.Dict[int, int] = {}
        for slot, stride in list(self._running.items()):
            r, offset = stride.request, stride.offset
            try:
                with torch.inference_mode():
                    sampled = sample(stride.logits, r.cfg_coef, r.temperature, r.top_k, r.top_p, r.generator,
                                     self.fast.native)
                    stride.sequence[:, offset] = torch.where(stride.generated[offset], sampled,
                                                             stride.sequence[:, offset])
                if r.progress is not None:
                    r.progress(1 + offset - stride.first, stride.steps - stride.first)
                if offset + 1 >= stride.steps:
                    self._finish(stride)
                    continue
                if r.weights_at is not None and (weights := r.weights_at(min(offset, stride.total - 1))) is not None:
                    self.decoder.mix_conditions(slot, weights)
            except BaseException as err:  # noqa: BLE001 - handed to the station's thread
                self._fail(stride, err)
                continue
            tokens[slot], positions[slot] = stride.sequence[:, offset], offset
            stride.offset = offset + 1
        if not tokens:
            return
        with torch.inference_mode():
            logits = self.decoder.step(tokens, positions)
        self.steps += 1
        self.busy_slot_steps += len(tokens)
        for slot in tokens:
            self._running[slot].logits = logits[slot]

    def _finish(self, stride: _Stride) -> None:
        with self._changed:
            self._running.pop(stride.slot, None)
        out = unpattern(self.fast, stride.sequence, stride.total)
        if stride.request.timings is not None:
            stride.request.timings.update(prefill_seconds=stride.prefill_seconds,
                                          decode_seconds=time.perf_counter() - stride.started - stride.prefill_seconds,
                                          decode_steps=stride.steps - stride.first - 1)
        stride.future.set_result(out)

    def _fail(self, stride: _Stride, err: BaseException) -> None:
        with self._changed:
            self._running.pop(stride.slot, None)
        stride.future.set_exception(err)


def _cancelled(station: str) -> ProgressCallback:
    def progress(step: int, total: int) -> None:
        raise RuntimeError(f"station {station!r} left")
    return progress
