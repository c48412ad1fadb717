"""Triton kernels of the single-station CUDA decode step (fused_step.py): a GEMV of a few rows
that carries what sits around it in a transformer layer, so that a layer is 7 kernels, not 12.

- `gemv`: out = act(norm(x) Wᵀ + b) + residual. The layer norm of each input row is computed in
  the kernel (each program recomputes the row's statistics: 1-4 rows of D numbers, from L2),
  so the norm costs no kernel of its own; `gelu`: exact (erf) GELU; the residual read as the
  epilogue's addend. W [N, K] is shared by the rows, or one per row (W [M, N, K]: the folded
  cross-attention's). With `cache`, the output columns from D on are keys and values,
  written straight into the KV cache at the step's position (read from the device, so that one
  CUDA graph serves every position).
- `softmax_gemv`: out = residual + softmax per group(scores) Wᵀ + b, the folded
  cross-attention's second half (fused_step.py): the softmax over each head's text positions in
  the prologue, one weight matrix per row.
- `embed`: the step's input, Σₖ embeddingₖ[tokenₖ] + scale · sinusoid[position], in one kernel.

Shapes: M rows (2: the CFG pair), K inputs, N outputs. Compute in fp32, inputs and outputs in
the tensors' dtypes. A row's result never depends on the other rows (each is reduced alone, in
the same order). Needs Triton (CUDA; `TRITON_INTERPRET=1` runs it on CPU for tests).
"""
from __future__ import annotations

import dataclasses
import functools
import typing as tp

import torch


@dataclasses.dataclass(frozen=True)
class Blocks:
    """A GEMV launch: BLOCK_N outputs per program, BLOCK_K inputs per iteration, `warps`."""
    n: int = 8
    k: int = 512
    warps: int = 4


#: Launch sizes swept at musicgen-small's and -large's step shapes (N, K) on an H200
#: (bench/gpu/probe_gemv.py; 2026-11-26 in bench/results): the fastest of 2-16 outputs per program,
#: 256-4096 inputs per iteration and 4 or 8 warps.
MEASURED_BLOCKS = {
    (3072, 1024): Blocks(8, 1024, 4), (1024, 1024): Blocks(4, 1024, 4), (4096, 1024): Blocks(8, 1024, 4),
    (1024, 4096): Blocks(2, 4096, 4), (8192, 1024): Blocks(8, 1024, 4),
    (6144, 2048): Blocks(8, 1024, 4), (2048, 2048): Blocks(2, 2048, 4), (8192, 2048): Blocks(8, 2048, 4),
    (2048, 8192): Blocks(4, 2048, 4),
}


def default_blocks(n: int, k: int) -> Blocks:
    """The measured launch size of an (N, K) GEMV; for other shapes, alike ones: 8 outputs per
    program for wide layers, else 4, and at most 8192 weights per program per iteration (its
    registers)."""
    if (n, k) in MEASURED_BLOCKS:
        return MEASURED_BLOCKS[(n, k)]
    block_n = 8 if n >= 3072 else 4
    return Blocks(n=block_n, k=min(4096, 8192 // block_n, next_power_of_two(k)), warps=4)


def next_power_of_two(n: int) -> int:
    """The smallest power of two ≥ n (Triton's block sizes; at least 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


@functools.lru_cache(maxsize=None)
def _kernels():
    """The kernels, defined on first use (Triton is imported only where it runs)."""
    import triton
    import triton.language as tl

    @triton.jit
    def gemv(x, stride_x, w, stride_w_row, bias, stride_bias_row, gamma, beta, residual, stride_r,
             out, stride_o, cache, position, stride_kv, stride_cache_row, stride_cache_head, stride_cache_pos,
             M, N, K, eps,
             NORM: tl.constexpr, NORM_BIAS: tl.constexpr, HAS_BIAS: tl.constexpr, GELU: tl.constexpr,
             RESIDUAL: tl.constexpr, PER_ROW_W: tl.constexpr, CACHE: tl.constexpr, D: tl.constexpr,
             DH: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        rows = tl.arange(0, BLOCK_M)
        cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < M
        col_ok = cols < N
        if NORM:  # the rows' mean and spread, two passes as torch's layer norm
            total = tl.zeros([BLOCK_M], tl.float32)
            for k0 in range(0, K, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                ok = row_ok[:, None] & (ks[None, :] < K)
                total += tl.sum(tl.load(x + rows[:, None] * stride_x + ks[None, :], mask=ok, other=0.0)
                                .to(tl.float32), axis=1)
            mean = total / K
            spread = tl.zeros([BLOCK_M], tl.float32)
            for k0 in range(0, K, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                ok = row_ok[:, None] & (ks[None, :] < K)
                xk = tl.load(x + rows[:, None] * stride_x + ks[None, :], mask=ok, other=0.0).to(tl.float32)
                centred = tl.where(ok, xk - mean[:, None], 0.0)
                spread += tl.sum(centred * centred, axis=1)
            rstd = 1.0 / tl.sqrt(spread / K + eps)
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < K
            xk = tl.load(x + rows[:, None] * stride_x + ks[None, :], mask=row_ok[:, None] & k_ok[None, :],
                         other=0.0).to(tl.float32)
            if NORM:
                xk = (xk - mean[:, None]) * rstd[:, None] * tl.load(gamma + ks, mask=k_ok, other=0.0).to(tl.float32)
                if NORM_BIAS:
                    xk += tl.load(beta + ks, mask=k_ok, other=0.0).to(tl.float32)
                xk = xk.to(w.dtype.element_ty).to(tl.float32)  # rounded as the separate norm's output
            if PER_ROW_W:
                wk = tl.load(w + rows[:, None, None] * stride_w_row + cols[None, :, None] * K + ks[None, None, :],
                             mask=row_ok[:, None, None] & col_ok[None, :, None] & k_ok[None, None, :], other=0.0)
                acc += tl.sum(wk.to(tl.float32) * xk[:, None, :], axis=2)
            else:
                wk = tl.load(w + cols[:, None] * K + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
                acc += tl.sum(wk.to(tl.float32)[None, :, :] * xk[:, None, :], axis=2)
        ok = row_ok[:, None] & col_ok[None, :]
        if HAS_BIAS:
            acc += tl.load(bias + rows[:, None] * stride_bias_row + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        if GELU:
            acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
        if RESIDUAL:
            acc += tl.load(residual + rows[:, None] * stride_r + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        if CACHE:  # columns 0..D-1: queries; D..2D-1: keys; 2D..3D-1: values, into the cache
            is_q = cols < D
            tl.store(out + rows[:, None] * stride_o + cols[None, :], acc.to(out.dtype.element_ty),
                     mask=ok & is_q[None, :])
            which = tl.where(is_q, 0, cols // D - 1)
            within = cols % D
            where = (cache + which[None, :] * stride_kv + rows[:, None] * stride_cache_row
                     + (within // DH)[None, :] * stride_cache_head + tl.load(position) * stride_cache_pos
                     + (within % DH)[None, :])
            tl.store(where, acc.to(cache.dtype.element_ty), mask=ok & (cols >= D)[None, :])
        else:
            tl.store(out + rows[:, None] * stride_o + cols[None, :], acc.to(out.dtype.element_ty), mask=ok)

    @triton.jit
    def softmax_gemv(scores, stride_s, w, stride_w_row, bias, residual, stride_r, out, stride_o, M, N,
                     HAS_BIAS: tl.constexpr, GROUPS: tl.constexpr, GROUP: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        K: tl.constexpr = GROUPS * GROUP
        rows = tl.arange(0, BLOCK_M)
        cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        ks = tl.arange(0, K)
        row_ok = rows < M
        col_ok = cols < N
        s = tl.load(scores + rows[:, None] * stride_s + ks[None, :], mask=row_ok[:, None], other=0.0)
        s = tl.reshape(s.to(tl.float32), [BLOCK_M, GROUPS, GROUP])
        e = tl.exp(s - tl.max(s, axis=2)[:, :, None])
        p = tl.reshape(e / tl.sum(e, axis=2)[:, :, None], [BLOCK_M, K])
        wk = tl.load(w + rows[:, None, None] * stride_w_row + cols[None, :, None] * K + ks[None, None, :],
                     mask=row_ok[:, None, None] & col_ok[None, :, None], other=0.0)
        acc = tl.sum(wk.to(tl.float32) * p[:, None, :], axis=2)
        ok = row_ok[:, None] & col_ok[None, :]
        if HAS_BIAS:
            acc += tl.load(bias + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        acc += tl.load(residual + rows[:, None] * stride_r + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        tl.store(out + rows[:, None] * stride_o + cols[None, :], acc.to(out.dtype.element_ty), mask=ok)

    @triton.jit
    def embed(tokens, stride_tokens, table, stride_book, stride_entry, sinusoid, position, scale, out,
              D, BOOKS: tl.constexpr, BLOCK_D: tl.constexpr):
        row = tl.program_id(0)
        dims = tl.arange(0, BLOCK_D)
        ok = dims < D
        acc = tl.load(sinusoid + tl.load(position) * D + dims, mask=ok, other=0.0).to(tl.float32) * scale
        for book in tl.static_range(BOOKS):
            entry = tl.load(tokens + row * stride_tokens + book)
            acc += tl.load(table + book * stride_book + entry * stride_entry + dims, mask=ok, other=0.0).to(tl.float32)
        tl.store(out + row * D + dims, acc.to(out.dtype.element_ty), mask=ok)

    return gemv, softmax_gemv, embed


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: tp.Optional[torch.Tensor] = None, *,
         norm=None, gelu: bool = False, residual: tp.Optional[torch.Tensor] = None,
         out_dtype: tp.Optional[torch.dtype] = None,
         cache: tp.Optional[tp.Tuple[torch.Tensor, torch.Tensor]] = None,
         blocks: tp.Optional[Blocks] = None) -> torch.Tensor:
    """x [M, K] (rows contiguous) → [M, N] = gelu?(norm?(x) weightᵀ + bias) + residual?.

    weight [N, K] contiguous, or [M, N, K] (one per row); bias [N] or [M, N]; `norm`: a layer
    norm (weights.Norm: weight, bias, eps) applied to x first; residual [M, N]. `cache` (kv
    [2, M, H, P, Dh] of one layer, position [1] int64): weight gives [q | k | v] (N = 3D), the
    queries are returned [M, D] and the keys and values written at the position."""
    M, K = x.shape
    per_row = weight.dim() == 3
    N = weight.shape[-2]
    if weight.shape[-1] != K or x.stride(-1) != 1 or not weight.is_contiguous():
        raise ValueError(f"gemv: x {tuple(x.shape)} against weight {tuple(weight.shape)} (contiguous)")
    D = N // 3 if cache is not None else N
    out = torch.empty(M, D, dtype=out_dtype or x.dtype, device=x.device)
    kv, position = cache if cache is not None else (out, out)
    blocks = blocks or default_blocks(N, K)
    dummy = out  # (a pointer for the arguments this launch does not read)
    kernel, _, _ = _kernels()
    kernel[(-(-N // blocks.n),)](
        x, x.stride(0), weight, weight.stride(0) if per_row else 0,
        dummy if bias is None else bias, bias.stride(0) if bias is not None and bias.dim() == 2 else 0,
        dummy if norm is None else norm.weight, dummy if norm is None or norm.bias is None else norm.bias,
        dummy if residual is None else residual, 0 if residual is None else residual.stride(0),
        out, out.stride(0), kv, position,
        kv.stride(0) if cache is not None else 0, kv.stride(1) if cache is not None else 0,
        kv.stride(2) if cache is not None else 0, kv.stride(3) if cache is not None else 0,
        M, N, K, 0.0 if norm is None else float(norm.eps),
        NORM=norm is not None, NORM_BIAS=norm is not None and norm.bias is not None, HAS_BIAS=bias is not None,
        GELU=bool(gelu), RESIDUAL=residual is not None, PER_ROW_W=per_row, CACHE=cache is not None,
        D=D, DH=kv.shape[-1] if cache is not None else 1, BLOCK_M=next_power_of_two(M), BLOCK_N=blocks.n,
        BLOCK_K=min(blocks.k, next_power_of_two(K)), num_warps=blocks.warps)
    return out


def softmax_gemv(scores: torch.Tensor, weight: torch.Tensor, bias: tp.Optional[torch.Tensor],
                 residual: torch.Tensor, group: int, block_n: int = 4, warps: int = 4) -> torch.Tensor:
    """residual [M, N] + softmax(scores [M, G · group], over each group of `group`) weight
    [M, N, G · group]ᵀ + bias [N] → [M, N] in residual's dtype (G · group a power of two)."""
    M, K = scores.shape
    N = weight.shape[1]
    if weight.shape != (M, N, K) or not weight.is_contiguous() or K % group or next_power_of_two(K) != K:
        raise ValueError(f"softmax_gemv: scores {tuple(scores.shape)} against weight {tuple(weight.shape)}")
    out = torch.empty_like(residual)
    _, kernel, _ = _kernels()
    kernel[(-(-N // block_n),)](
        scores, scores.stride(0), weight, weight.stride(0), out if bias is None else bias,
        residual, residual.stride(0), out, out.stride(0), M, N,
        HAS_BIAS=bias is not None, GROUPS=K // group, GROUP=group, BLOCK_M=next_power_of_two(M), BLOCK_N=block_n,
        num_warps=warps)
    return out


def embed(tokens: torch.Tensor, table: torch.Tensor, sinusoid: torch.Tensor, position: torch.Tensor,
          scale: float) -> torch.Tensor:
    """tokens [M, K] (int64), table [K, entries, D], sinusoid [positions, D] (contiguous),
    position [1] → [M, D] in table's dtype: Σₖ table[k, tokens[:, k]] + scale · sinusoid[position]."""
    M, books = tokens.shape
    D = table.shape[-1]
    if table.stride(-1) != 1 or not sinusoid.is_contiguous() or tokens.stride(-1) != 1:
        raise ValueError("embed reads contiguous rows")
    out = torch.empty(M, D, dtype=table.dtype, device=table.device)
    _, _, kernel = _kernels()
    kernel[(M,)](tokens, tokens.stride(0), table, table.stride(0), table.stride(1), sinusoid, position,
                 float(scale), out, D, BOOKS=books, BLOCK_D=next_power_of_two(D))
    return out
