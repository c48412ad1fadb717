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

from .hardware import INT4_CACHE, KVCacheUnavailable, cpu_flags
from .hugepages import zeros_on_huge_pages
from .kernels import BF16_CPU_FLAG

log = logging.getLogger(__name__)
#: The native prefill attention's head dim (every MusicGen's), and the 4-bit cache's.
CHUNK_HEAD_DIM = 64


def _codes(cache: torch.Tensor, bits: int) -> torch.Tensor:
    """A quantised cache's stored numbers as integers [..., Dh]: int8 as they are; 4-bit codes
    [..., Dh / 2] uint8 unpacked (byte j: number j in its low nibble, j + Dh / 2 in its high one)
    and less their offset of 8 (kernels/kv4_attention.cpp)."""
    if bits == 8:
        return cache
    return torch.cat([cache & 15, cache >> 4], dim=-1).to(torch.int8) - 8


def decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Softmax attention of one query: q [B, H, 1, Dh], keys/values [B, H, T, Dh] in any
    precision → [B, H, 1, Dh] fp32. Written as reductions so that torch.compile makes it one
    pass over the cache, converting as it reads."""
    scale = q.shape[-1] ** -0.5
    scores = (q.float() * keys.float()).sum(-1, keepdim=True) * scale  # [B, H, T, 1]
    weights = torch.softmax(scores, dim=-2)
    return (weights * values.float()).sum(-2, keepdim=True)


def additive_mask(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean attention mask as the additive one SDPA adds to the scores (0 where `keep`,
    -inf elsewhere), made once per step instead of by SDPA in every layer."""
    return torch.where(keep, 0.0, float("-inf")).to(dtype)


class KVCache:
    """Self-attention keys and values of every layer, allocated once: `k`, `v` [layers, B, H,
    positions, Dh] in `dtype`, the two halves of one tensor `kv` [2, layers, ...] (B = `rows`: 2,
    or 2 per slot of a batched decoder; `slot` views one pair).

    `dtype` torch.int8: an 8-bit cache (CPU, native kernels only): each key and value row of Dh
    numbers as int8 with one fp32 scale per row, head and position (`k_scale`, `v_scale`
    [layers, B, H, positions]); rows are quantised as they are written (by the native kernel in
    the decode step), read back dequantised for torch's attention, and attended without
    conversion by the native kernels (kernels/kv8_attention.cpp, prefill_attention.cpp).
    `dtype` torch.uint8 (INT4_CACHE): a 4-bit cache, the same with each row of 64 numbers as 32
    bytes of 4-bit codes (`k`, `v` [layers, B, H, positions, Dh / 2]; kernels/kv4_attention.cpp).

    `kernels`: "native" | "compiled" | anything else (eager). The first two run `attend` as
    a kernel that reads the cache once, converting as it goes (CPU attention kernels for a single
    query over an fp16/bf16 cache are 4-6x slower than fp32, and the cache is as many bytes per
    step as the weights): the native AVX-512 one (`native`: the loaded kernels module, fp16 or
    int8) or one made by torch.compile. "eager": torch's SDPA or `decode_attention`."""

    def __init__(self, layers: int, heads: int, positions: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device, kernels: str, native=None, rows: int = 2):
        self.dtype = dtype
        self.head_dim = head_dim
        self.bits = {torch.int8: 8, INT4_CACHE: 4}.get(dtype)  # None: not quantised
        self.quantized = self.bits is not None
        if self.quantized and (native is None or kernels != "native" or head_dim % 16):
            raise KVCacheUnavailable(f"a {self.bits}-bit KV cache needs the native CPU kernels and heads of a "
                                     f"multiple of 16 (this model's: {head_dim})")
        if self.bits == 4 and head_dim != CHUNK_HEAD_DIM:
            raise KVCacheUnavailable(f"a 4-bit KV cache needs heads of {CHUNK_HEAD_DIM} (this model's: {head_dim}); "
                                     f"use --kv-cache int8 or auto")
        self._allocate((layers, rows, heads, positions, head_dim), device)
        self._native = native if (kernels == "native" and dtype in (torch.float16, torch.int8, INT4_CACHE)
                                  and head_dim % 16 == 0) else None
        self._kernel = (torch.compile(decode_attention, dynamic=True)
                        if kernels in ("native", "compiled") and self._native is None else None)
        # A prefill chunk's attention over the 8-bit cache (kernels/prefill_attention.cpp).
        self._chunk_kernel = (self._native is not None and self.quantized and head_dim == CHUNK_HEAD_DIM
                              and BF16_CPU_FLAG in cpu_flags())

    def _allocate(self, shape: tp.Tuple[int, ...], device: torch.device) -> None:
        """shape: [layers, B, H, positions, Dh] (on CPU on huge pages: hugepages.py)."""
        row = shape[-1] // 2 if self.bits == 4 else shape[-1]  # two 4-bit codes to a byte
        self.kv = zeros_on_huge_pages((2, *shape[:-1], row), self.dtype, device)  # keys, values: one write a step
        self.k, self.v = self.kv[0], self.kv[1]
        scales = ((lambda: zeros_on_huge_pages(shape[:-1], torch.float32, device).fill_(1.0))
                  if self.quantized else None)
        self.k_scale = scales() if scales else None
        self.v_scale = scales() if scales else None

    def with_rows(self, rows: int) -> "KVCache":
        """A new cache of `rows` rows, with this one's positions, precision and kernels."""
        other = object.__new__(KVCache)
        other.__dict__.update(self.__dict__)
        layers, _, heads, positions, _ = self.k.shape
        other._allocate((layers, rows, heads, positions, self.head_dim), self.k.device)
        return other

    def slot(self, index: int) -> "KVCache":
        """The rows 2·index, 2·index + 1 (one generation's cond and uncond) as a cache of their
        own: views of this one's tensors, with its kernels."""
        view = object.__new__(KVCache)
        view.__dict__.update(self.__dict__)
        rows = slice(2 * index, 2 * index + 2)
        view.kv = self.kv[:, :, rows]
        view.k, view.v = view.kv[0], view.kv[1]
        if self.quantized:
            view.k_scale, view.v_scale = self.k_scale[:, rows], self.v_scale[:, rows]
        return view

    def write_rows(self, layer: int, rows: torch.Tensor, positions: torch.Tensor, kv: torch.Tensor) -> None:
        """kv [2, B, H, 1, Dh] (keys, values): row rows[b] at position `positions[b]` (device
        tensors [B]; one indexed copy)."""
        if self.quantized:  # (CPU: the positions are host values) each run of rows at one position in one call
            where = positions.tolist()
            start = 0
            for end in range(1, len(where) + 1):
                if end == len(where) or where[end] != where[start]:
                    span = slice(start, end)
                    self._native.quantize_into(self.k[layer, span], self.k_scale[layer, span], kv[0, span], where[start])
                    self._native.quantize_into(self.v[layer, span], self.v_scale[layer, span], kv[1, span], where[start])
                    start = end
            return
        # kv[:, layer][:, rows, :, positions] is [B, 2, H, Dh]: the advanced indices' dim first
        self.kv[:, layer][:, rows, :, positions] = kv[:, :, :, 0].transpose(0, 1).to(self.dtype)

    @property
    def precision(self) -> str:
        """The cache's precision by the names of --kv-cache and --dtype: fp16, bf16, fp32, int8, int4."""
        if self.bits == 4:
            return "int4"
        return {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.int8: "int8"}[self.dtype]

    def position_bytes(self) -> int:
        """Bytes of one cached position over every layer and row: keys and values (with their
        scales where quantised)."""
        layers, rows, heads = self.k.shape[:3]
        row = self.k.shape[-1] * self.k.element_size() + (4 if self.quantized else 0)
        return 2 * layers * rows * heads * row

    @property
    def kernel(self) -> str:
        """Which decode attention runs: native, compiled or eager."""
        return "native" if self._native is not None else "compiled" if self._kernel is not None else "eager"

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v [B, H, T, Dh] for positions start..start+T-1."""
        if self.quantized:
            self._native.quantize_into(self.k[layer], self.k_scale[layer], k, start)
            self._native.quantize_into(self.v[layer], self.v_scale[layer], v, start)
            return
        end = start + k.shape[2]
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v

    def write_at(self, layer: int, position: torch.Tensor, kv: torch.Tensor) -> None:
        """kv [2, B, H, 1, Dh] (keys, values) for the position held in the device tensor
        `position` [1] (no host value: a CUDA graph replays it at every position), in one copy."""
        self.kv[:, layer].index_copy_(3, position, kv.to(self.dtype))

    def layer(self, layer: int, dtype: torch.dtype) -> tp.Tuple[torch.Tensor, torch.Tensor]:
        """Every cached position of `layer` as [B, H, P, Dh] in `dtype` (dequantised)."""
        return self.read(layer, self.k.shape[3], dtype)

    def attend_masked(self, layer: int, q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """q [B, H, 1, Dh] against every cached position, `mask` [1, 1, 1, positions] added to
        the scores (additive_mask: -inf where not cached) → [B, H, 1, Dh] (shapes independent of
        how many are cached)."""
        keys, values = (self.k[layer], self.v[layer]) if not self.quantized else self.layer(layer, q.dtype)
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)

    def read(self, layer: int, end: int, dtype: torch.dtype) -> tp.Tuple[torch.Tensor, torch.Tensor]:
        """Positions 0..end-1 as [B, H, end, Dh] in `dtype`."""
        if self.quantized:
            return tuple(_codes(cache[layer, :, :, :end], self.bits).to(dtype) * scales[layer, :, :, :end, None].to(dtype)
                         for cache, scales in ((self.k, self.k_scale), (self.v, self.v_scale)))
        return self.k[layer, :, :, :end].to(dtype), self.v[layer, :, :, :end].to(dtype)

    def attend_chunk(self, layer: int, q: torch.Tensor, start: int) -> tp.Optional[torch.Tensor]:
        """Causal attention of a prefill chunk q [B, H, T, Dh] at positions start..start+T-1
        (its keys and values already written) over positions up to each query's own → [B, H, T,
        Dh] fp32 on the native BF16 kernel; None where it does not run (then the caller uses
        torch's attention)."""
        if not self._chunk_kernel:
            return None
        return self._native.prefill_attention_q8(q.float(), self.k[layer], self.v[layer], self.k_scale[layer],
                                                 self.v_scale[layer], start)

    def attend(self, layer: int, q: torch.Tensor, end: int) -> torch.Tensor:
        """One query q [B, H, 1, Dh] against positions 0..end-1 → [B, H, 1, Dh]."""
        if self._native is not None:
            B, H, _, Dh = q.shape
            P = self.k.shape[3]
            q = q.reshape(B * H, Dh).float()
            keys, values = (cache.view(B * H, P, -1) for cache in (self.k[layer], self.v[layer]))
            if self.quantized:
                scores_q, weighted_q = ((self._native.scores_q4, self._native.weighted_q4) if self.bits == 4
                                        else (self._native.scores_q8, self._native.weighted_q8))
                scores = scores_q(q, keys, self.k_scale[layer].view(B * H, P), end)
                weights = torch.softmax(scores, dim=-1)
                out = weighted_q(weights, values, self.v_scale[layer].view(B * H, P))
            else:
                weights = torch.softmax(self._native.scores(q, keys, end), dim=-1)
                out = self._native.weighted(weights, values)
            return out.view(B, H, 1, Dh)
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


def row_invariant_attention(device: torch.device):
    """On CUDA, the batched step's self-attention runs in the memory-efficient kernel: cuDNN's
    splits the cached positions into more or fewer blocks as the batch grows, so a row's result
    depended on the batch size (measured on an H100 from 8 rows; bench/gpu/probe_rows.py)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION])


def prefill_attention_backends(device: torch.device):
    """On CUDA, the prefill's attention runs in flash / memory-efficient kernels, not cuDNN's:
    cuDNN builds a plan for every new sequence length, and each stride's context has a new one
    (measured on an H100: the second stride of the 1, 2, 4 s ramp took 1.2 s instead of 0.3)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
