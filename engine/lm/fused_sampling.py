"""Top-k sampling on CUDA in one Triton launch (sampling.py's top-k path; the CPU's is
kernels/sampling.cpp, the same algorithm): classifier-free guidance, the top k of the guided
logits, their softmax at the temperature and one draw per codebook by inverse CDF from a given
uniform. torch's ops for the same are about ten launches per step (topk, softmax, multinomial,
gathers), a tenth of the fused single-station step's time.

Shapes: K codebooks, card entries per codebook. Needs Triton (CUDA; `TRITON_INTERPRET=1` runs
it on CPU for tests).
"""
from __future__ import annotations

import functools

import torch

from .fused_kernels import next_power_of_two


@functools.lru_cache(maxsize=None)
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def sample(logits, stride_row, stride_book, uniforms, tokens, card, cfg, inv_temperature,
               TOP_K: tl.constexpr, BLOCK: tl.constexpr):
        book = tl.program_id(0)
        entries = tl.arange(0, BLOCK)
        ok = entries < card
        cond = tl.load(logits + book * stride_book + entries, mask=ok, other=0.0).to(tl.float32)
        uncond = tl.load(logits + stride_row + book * stride_book + entries, mask=ok, other=0.0).to(tl.float32)
        guided = tl.where(ok, uncond + (cond - uncond) * cfg, float("-inf"))
        # One sort of (value, entry) as 64-bit keys: the float's bits made monotonic as a signed
        # int, above the entry reversed, so that equal values keep the lower entry first.
        bits = guided.to(tl.int32, bitcast=True)
        order = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
        keys = (order.to(tl.int64) << 32) | (BLOCK - 1 - entries).to(tl.int64)
        ranked = tl.sort(keys, 0, descending=True)
        ranked_order = (ranked >> 32).to(tl.int32)
        values = tl.where(ranked_order >= 0, ranked_order, ranked_order ^ 0x7FFFFFFF).to(tl.float32, bitcast=True)
        ranked_entries = BLOCK - 1 - (ranked & 0xFFFFFFFF)
        top = entries < TOP_K
        best = tl.max(tl.where(top, values, float("-inf")), axis=0)
        weights = tl.where(top, tl.exp((values - best) * inv_temperature), 0.0)
        cumulative = tl.cumsum(weights, 0)
        target = tl.load(uniforms + book) * tl.sum(weights, axis=0)
        pick = tl.minimum(tl.sum((top & (cumulative <= target)).to(tl.int32), axis=0), TOP_K - 1)
        tl.store(tokens + book, tl.sum(tl.where(entries == pick, ranked_entries, 0), axis=0))

    return sample


def sample_top_k(logits: torch.Tensor, cfg: float, temperature: float, top_k: int,
                 uniforms: torch.Tensor) -> torch.Tensor:
    """logits [2, K, card] (cond, uncond; rows of card contiguous), uniforms [K] fp32 in [0, 1)
    → tokens [K] int64: as kernels/sampling.cpp's sample_top_k (temperature > 0, 1 ≤ top_k ≤ card)."""
    _, books, card = logits.shape
    if logits.stride(-1) != 1 or not 1 <= top_k <= card or temperature <= 0:
        raise ValueError(f"sample_top_k: logits {tuple(logits.shape)}, top_k {top_k}, temperature {temperature}")
    tokens = torch.empty(books, dtype=torch.long, device=logits.device)
    _kernel()[(books,)](logits, logits.stride(0), logits.stride(1), uniforms.contiguous(), tokens, card,
                        float(cfg), 1.0 / float(temperature), TOP_K=int(top_k),
                        BLOCK=next_power_of_two(card))
    return tokens
