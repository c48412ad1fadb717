"""The static KV cache of the fast decoder and its attention kernels.

Shapes: B = 2 (cond, uncond) per generation (2 × slots in a batched decoder: batch.py), H heads,
P cached positions, Dh head dim.
"""
from __future__ import annotations

import contextlib
import logging
import typing as tp

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


def decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Softmax attention of one query: q [B, H, 1, Dh], keys/values [B, H, T, Dh] in any
    precision → [B, H, 1, Dh] fp32. Written as reductions so that torch.compile makes it one
    pass over the cache, converting as it reads."""
    scale = q.shape[-1] ** -0.5
    scores = (q.float() * keys.float()).sum(-1, keepdim=True) * scale  # [B, H, T, 1]
    weights = torch.softmax(scores, dim=-2)
    return (weights * values.float()).sum(-2, keepdim=True)


class KVCache:
    """Self-attention keys and values of every layer, allocated once: [layers, B, H, positions,
    Dh] in `dtype` (B = `rows`: 2, or 2 per slot of a batched decoder; `slot` views one pair).

    `kernels`: "native" | "compiled" | anything else (eager). The first two run `attend` as
    a kernel that reads the cache once, converting as it goes (CPU attention kernels for a single
    query over an fp16/bf16 cache are 4-6x slower than fp32, and the cache is as many bytes per
    step as the weights): the native AVX-512 one (`native`: the loaded kernels module, fp16
    only) or one made by torch.compile. "eager": torch's SDPA or `decode_attention`.
    (An int8 cache with per-position scales halved the bytes again but was no faster end to end.)"""

    def __init__(self, layers: int, heads: int, positions: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device, kernels: str, native=None, rows: int = 2):
        shape = (layers, rows, heads, positions, head_dim)
        self.dtype = dtype
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self._native = native if (kernels == "native" and dtype == torch.float16
                                  and head_dim % 16 == 0) else None
        self._kernel = (torch.compile(decode_attention, dynamic=True)
                        if kernels in ("native", "compiled") and self._native is None else None)

    def with_rows(self, rows: int) -> "KVCache":
        """A new cache of `rows` rows, with this one's positions, precision and kernels."""
        other = object.__new__(KVCache)
        other.__dict__.update(self.__dict__)
        layers, _, heads, positions, head_dim = self.k.shape
        shape = (layers, rows, heads, positions, head_dim)
        other.k = torch.zeros(shape, dtype=self.dtype, device=self.k.device)
        other.v = torch.zeros(shape, dtype=self.dtype, device=self.k.device)
        return other

    def slot(self, index: int) -> "KVCache":
        """The rows 2·index, 2·index + 1 (one generation's cond and uncond) as a cache of their
        own: views of this one's tensors, with its kernels."""
        view = object.__new__(KVCache)
        view.__dict__.update(self.__dict__)
        view.k, view.v = self.k[:, 2 * index:2 * index + 2], self.v[:, 2 * index:2 * index + 2]
        return view

    def write_rows(self, layer: int, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v [B, H, 1, Dh]: row b at position `positions[b]` (a device tensor [B])."""
        rows = torch.arange(k.shape[0], device=k.device)
        self.k[layer][rows, :, positions] = k[:, :, 0].to(self.dtype)
        self.v[layer][rows, :, positions] = v[:, :, 0].to(self.dtype)

    @property
    def kernel(self) -> str:
        """Which decode attention runs: native, compiled or eager."""
        return "native" if self._native is not None else "compiled" if self._kernel is not None else "eager"

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v [B, H, T, Dh] for positions start..start+T-1."""
        end = start + k.shape[2]
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v

    def write_at(self, layer: int, position: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v [B, H, 1, Dh] for the position held in the device tensor `position` [1] (no
        host value: a CUDA graph replays it at every position)."""
        self.k[layer].index_copy_(2, position, k)
        self.v[layer].index_copy_(2, position, v)

    def attend_masked(self, layer: int, q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """q [B, H, 1, Dh] against every cached position where `mask` [1, 1, 1, positions] is
        True → [B, H, 1, Dh] (shapes independent of how many are cached)."""
        return F.scaled_dot_product_attention(q, self.k[layer], self.v[layer], attn_mask=mask)

    def read(self, layer: int, end: int, dtype: torch.dtype) -> tp.Tuple[torch.Tensor, torch.Tensor]:
        """Positions 0..end-1 as [B, H, end, Dh] in `dtype`."""
        return self.k[layer, :, :, :end].to(dtype), self.v[layer, :, :, :end].to(dtype)

    def attend(self, layer: int, q: torch.Tensor, end: int) -> torch.Tensor:
        """One query q [B, H, 1, Dh] against positions 0..end-1 → [B, H, 1, Dh]."""
        if self._native is not None:
            B, H, _, Dh = q.shape
            P = self.k.shape[3]
            scores = self._native.scores(q.reshape(B * H, Dh).float(), self.k[layer].view(B * H, P, Dh), end)
            weights = torch.softmax(scores, dim=-1)
            return self._native.weighted(weights, self.v[layer].view(B * H, P, Dh)).view(B, H, 1, Dh)
        k, v = self.k[layer, :, :, :end], self.v[layer, :, :, :end]
        if self._kernel is not None:
            try:
                return self._kernel(q, k, v)
            except Exception as err:  # e.g. no C++ compiler: the same math, eagerly
                log.warning("fused attention unavailable (%s); using the eager kernel",
                            str(err).splitlines()[0][:200])
                self._kernel = None
        if q.dtype == self.dtype:
            return F.scaled_dot_product_attention(q, k, v)
        return decode_attention(q, k, v)


def prefill_attention_backends(device: torch.device):
    """On CUDA, the prefill's attention runs in flash / memory-efficient kernels, not cuDNN's:
    cuDNN builds a plan for every new sequence length, and each stride's context has a new one
    (measured on an H100: the second stride of the 1, 2, 4 s ramp took 1.2 s instead of 0.3)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
