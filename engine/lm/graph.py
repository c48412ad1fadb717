"""The decode step as one CUDA graph: captured once, replayed at every position."""
from __future__ import annotations

import logging
import time
import typing as tp

import torch

log = logging.getLogger(__name__)


class StepGraph:
    """Runs `forward` (a decode step with static shapes that reads its inputs from fixed device
    tensors and returns logits) as a CUDA graph on CUDA: one launch per step instead of hundreds.
    Elsewhere it runs `forward` eagerly (the same math, so CPU tests check it).

    Captured on first use; `invalidate()` when a tensor the graph reads is replaced (not just
    written in place), and the next call captures again."""

    def __init__(self, forward: tp.Callable[[], torch.Tensor], device: torch.device):
        self.forward = forward
        self.device = device
        self.graph: tp.Optional["torch.cuda.CUDAGraph"] = None
        self._logits: tp.Optional[torch.Tensor] = None

    def invalidate(self) -> None:
        self.graph = None

    def __call__(self) -> torch.Tensor:
        if self.device.type != "cuda":
            return self.forward()
        if self.graph is None:
            self._capture()
        self.graph.replay()
        return self._logits

    def _capture(self) -> None:
        """Capture after warm-up runs on a side stream, as torch requires. The warm-up runs
        write the cache at the current position: harmless, since every position a step reads is
        written again by its generation's prefill or steps first."""
        started = time.perf_counter()
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self.forward()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._logits = self.forward()
        self.graph = graph
        log.info("decoder: decode step captured as a CUDA graph in %.2f s", time.perf_counter() - started)
