"""The CPU decode step through every layer in one native call (kernels/decode_step.cpp).

Where every linear of the step runs on the native int8 / int4 kernels and the KV cache is one
they read (fp16 or 8-bit), the layers of a decode step need no torch op at all: `FastLM.step` and
the batched decoder's CPU step call this instead of running the layers as torch ops around the
same kernels (`bench/bench_engine.py --dtypes int4,int4/native-ops` runs both side by side: on 2
cores the fused step took 13.7 ms where the torch ops' took 16.8). The output norm and heads
run at the end of the same call where they can (`NativeStep.logits`), and the step's input rows
are embedded by one native call before it (`NativeStep.embed`); the prefill stays as it is.

Shapes: R rows, D model dim, L layers, B cache rows, H heads, P positions, Tc text positions.
"""
from __future__ import annotations

import typing as tp

import torch
import torch.nn.functional as F

from .cache import KVCache
from .quantize import Int4, Int8

#: Why a decoder's step cannot be fused, for the log (None: it can).
Unfusable = tp.Optional[str]


def _linear_tensors(lin) -> tp.List[torch.Tensor]:
    """DecodeStep's four tensors of a linear: what its kernel reads (`STEP_TENSORS`: int8 weight,
    row sums, scales; int4 nibbles, group scales and an empty third), then the bias or empty."""
    tensors = [getattr(lin, name) for name in lin.STEP_TENSORS]
    return tensors + [torch.empty(0)] * (3 - len(tensors)) + [torch.empty(0) if lin.bias is None else lin.bias]


def _norm_tensors(norm) -> tp.List[torch.Tensor]:
    """DecodeStep's two tensors of a layer norm: its weight, then its bias or empty (fp32)."""
    return [norm.weight.float().contiguous(), torch.empty(0) if norm.bias is None else norm.bias.float().contiguous()]


def why_not_fused(fast) -> Unfusable:
    """None where `fast` (a FastLM) can run its decode steps on DecodeStep, else the reason."""
    if fast.kernels != "native" or fast.device.type != "cpu":
        return "not the native CPU kernels"
    if not fast.native_linears:
        return "a linear of the step is not on the native kernels"
    if fast.cache.kernel != "native":
        return "the KV cache is not read by the native kernels"
    if fast.activation not in (F.gelu, F.relu):
        return "the feed-forward activation is neither GELU nor ReLU"
    if fast.compute_dtype != torch.float32:
        return "activations are not fp32"
    return None


class NativeStep:
    """`fast`'s layers as a DecodeStep of the loaded kernels module `native` (check
    `why_not_fused(fast)` first). Where the output norm and heads can run there too (a norm, and
    the heads on the native int8 / int4 kernels), the call ends with them (`logits`), in the same
    parallel region: as torch ops after it they took 0.225 ms of a 5.8 ms step on 2 cores (their
    8.4 MB from memory, the other core woken again); whole steps took 0.97x the time at 20
    positions and 0.99x at 1250 with them inside (int4 and int8, alternated in one process)."""

    def __init__(self, fast, native):
        layers, eps = [], []
        for layer in fast.layers:
            tensors = []
            for norm in (layer.norm_self, layer.norm_cross, layer.norm_ff):
                tensors += _norm_tensors(norm)
                eps.append(float(norm.eps))
            for lin in layer.linears():
                assert isinstance(lin, (Int8, Int4)) and lin.native
                tensors += _linear_tensors(lin)
            layers.append(tensors)
        #: The call returns the logits [R, K * card] (else x after the layers [R, D]).
        self.logits = bool(fast.out_norm is not None and isinstance(fast.head, (Int8, Int4))
                           and getattr(fast.head, "native", False))
        head, head_eps = [], 0.0
        if self.logits:
            head = _norm_tensors(fast.out_norm) + _linear_tensors(fast.head)
            head_eps = float(fast.out_norm.eps)
        self._step = native.DecodeStep(layers, eps, fast.heads, fast.activation is F.gelu, head, head_eps)
        self._embed = native.embed
        self._tables, self._positional, self._positional_scale = fast.embeddings, fast.pos_emb, fast.positional_scale

    def embed(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """tokens [R, K] at positions [R] (int64) → the step's input x [R, D]: their embeddings
        summed plus the positional ones, the same numbers as `FastLM._embed` in one native call
        (kernels/embedding.cpp: as torch ops it took 0.11 ms of a 4-6 ms step)."""
        return self._embed(tokens, self._tables, self._positional, positions, self._positional_scale)

    def __call__(self, x: torch.Tensor, cache: KVCache, rows: tp.Sequence[int], positions: tp.Sequence[int],
                 cross_keys: torch.Tensor, cross_values: torch.Tensor,
                 cross_lengths: tp.Sequence[int]) -> torch.Tensor:
        """x [R, D] fp32 → [R, D] after every layer (`logits`: → [R, K * card], after the output
        norm and heads). Row r is cache row `rows[r]` at `positions[r]` (its keys and values are
        written there), attends to its cached positions up to there and to the first
        `cross_lengths[r]` positions of its text condition (cross_keys / cross_values
        [L, B, H, Tc, Dh] fp32, row `rows[r]`)."""
        empty = torch.empty(0)
        k_scale = cache.k_scale if cache.quantized else empty
        v_scale = cache.v_scale if cache.quantized else empty
        return self._step.forward(x, list(rows), list(positions), cache.k, cache.v, k_scale, v_scale,
                                  cross_keys, cross_values, list(cross_lengths))
