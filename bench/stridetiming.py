"""What bench_engine.py's methods share: the stride's step clock (prefill until the first decode
step, then each step), its timing, and the same context codes for every method."""
from __future__ import annotations

import time
import typing as tp

PROMPT = "warm lofi hip hop with vinyl crackle"
#: Every method first runs a short stride of this many frames from the same context (first-call
#: costs: kernel loading, allocator growth, autotuning), then the timed one.
WARMUP_FRAMES = 10


class StepClock:
    """Progress callback that records when each decode step finished. With a `probe` (a
    callable returning GB/s), every `probe_every` steps it reads the memory bandwidth between
    two steps, beside the steps themselves; the probes' time is left out of the step times
    (`paused_s`: to be left out of the stride's wall time too)."""

    def __init__(self, device: str, limit: int = 0, probe: tp.Optional[tp.Callable[[], float]] = None,
                 probe_every: int = 0):
        self.device, self.limit, self.times = device, limit, []
        self.probe, self.probe_every = probe, probe_every
        self.bandwidths: tp.List[float] = []  # GB/s, one per probe
        self.paused_s = 0.0

    def __call__(self, done: int, total: int) -> None:
        sync(self.device)
        now = time.perf_counter()
        self.times.append(now - self.paused_s)
        if self.limit and len(self.times) > self.limit:
            raise EnoughSteps()
        if self.probe is not None and len(self.times) % self.probe_every == 0:
            self.bandwidths.append(self.probe())
            self.paused_s += time.perf_counter() - now

    def figures(self, started: float) -> dict:
        t = self.times
        return {"prefill_s": t[0] - started,
                "step_ms": 1000 * (t[-1] - t[0]) / max(1, len(t) - 1), "steps_timed": len(t) - 1}


class EnoughSteps(Exception):
    pass


def timed(device: str, started: float, run: tp.Callable[[], object]) -> tp.Optional[float]:
    """Run one stride; its wall seconds since `started`, or None when --steps cut it short."""
    try:
        run()
        sync(device)
        return time.perf_counter() - started
    except EnoughSteps:
        return None


def sync(device: str) -> None:
    import torch
    if device == "cuda":
        torch.cuda.synchronize()


def context_codes(model, args):
    import torch
    g = torch.Generator().manual_seed(args.seed)
    frames = round(args.context * model.frame_rate)
    return torch.randint(0, model.lm.card, (1, model.lm.num_codebooks, frames), generator=g).to(args.device)
