#!/usr/bin/env python3
"""Probe (issue 12, "faster steps"): the fused step's GEMV kernels (engine.lm.fused_kernels.py) at
each shape of a model's decode step, for a sweep of launch sizes, against what the captured
step runs today (cuBLAS GEMM, plus a separate layer norm where the fused kernel carries one).
Each kernel is captured 50 times in a row in one CUDA graph and replayed: µs per launch, as in
the step. Prints a table and writes the fastest launch size per shape as JSON (`--out`), which
`probe_step.py --blocks FILE` reads.

    python bench/gpu/probe_gemv.py --model random-small --out blocks.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

SHAPES = {  # name: (D multiple for N, for K, norm, gelu, residual)
    "qkv": (3, 1, True, False, False),
    "out": (1, 1, False, False, True),
    "ff1": (4, 1, True, True, False),
    "ff2": (1, 4, False, False, True),
}


def _replay_us(launch, repeats: int = 50, replays: int = 20) -> float:
    import torch
    for _ in range(2):
        launch()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(repeats):
            launch()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return 1000 * start.elapsed_time(end) / (replays * repeats)


def cross(args, D: int, best: dict) -> None:
    """The folded cross-attention's two kernels (fused_step.py) for a prompt of 8 text
    positions padded: scores (norm + GEMV with one weight matrix per row, N = H · 8) and the
    softmax + GEMV + residual (K = H · 8), against today's four kernels (norm, q GEMM, SDPA over
    the text, out GEMM + residual)."""
    import torch
    import torch.nn.functional as F

    from engine.lm.fused_kernels import Blocks, gemv, softmax_gemv
    from engine.lm.weights import Norm
    dev, dt, H, Tp = torch.device("cuda"), torch.bfloat16, D // 64, 8
    x = torch.randn(2, D, device=dev, dtype=dt)
    ln = Norm(torch.ones(D, device=dev, dtype=dt), torch.zeros(D, device=dev, dtype=dt), 1e-5)
    wq, wo = (torch.randn(D, D, device=dev, dtype=dt) / D ** 0.5 for _ in range(2))
    keys, values = (torch.randn(2, H, Tp, 64, device=dev, dtype=dt) for _ in range(2))

    def today():
        q = F.linear(ln(x), wq).view(2, H, 1, 64)
        a = F.scaled_dot_product_attention(q, keys, values).reshape(2, D)
        return torch.addmm(x, a, wo.t())
    base = _replay_us(today)
    a = torch.randn(2, H * Tp, D, device=dev, dtype=dt) / D ** 0.5
    bias = torch.zeros(2, H * Tp, device=dev)
    b = torch.randn(2, D, H * Tp, device=dev, dtype=dt)
    scores = gemv(x, a, bias, norm=ln, out_dtype=torch.float32)
    rows = []
    for n, warps in itertools.product((1, 2, 4, 8), (2, 4)):
        us_scores = _replay_us(lambda: gemv(x, a, bias, norm=ln, out_dtype=torch.float32, blocks=Blocks(n, 1024, warps)))
        us_values = _replay_us(lambda: softmax_gemv(scores, b, None, x, Tp, block_n=n, warps=warps))
        rows.append((us_scores, us_values, n, warps))
    s_best = min(rows, key=lambda r: r[0])
    v_best = min(rows, key=lambda r: r[1])
    print(f"cross (8 text positions): today {base:6.2f} µs (4 kernels); folded: scores {s_best[0]:.2f} "
          f"(n={s_best[2]}, warps={s_best[3]}), values {v_best[1]:.2f} (n={v_best[2]}, warps={v_best[3]})", flush=True)
    best[f"{H * Tp},{D}"] = [s_best[2], 1024, s_best[3]]
    best[f"{D},{H * Tp}"] = [v_best[2], H * Tp, v_best[3]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=1024, help="D (musicgen-small 1024, large 2048)")
    p.add_argument("--vocab", type=int, default=8192, help="the heads' outputs (K × card)")
    p.add_argument("--block-n", default="2,4,8,16")
    p.add_argument("--block-k", default="256,512,1024")
    p.add_argument("--warps", default="4,8")
    p.add_argument("--out", default="")
    args = p.parse_args()
    import torch
    import torch.nn.functional as F

    from engine.lm.fused_kernels import Blocks, default_blocks, gemv
    from engine.lm.weights import Norm
    dev, dt, D = torch.device("cuda"), torch.bfloat16, args.dim
    print(f"# {torch.cuda.get_device_name(dev)}, D={D}, bf16, 2 rows; µs per launch, 50 launches per graph")
    shapes = dict(SHAPES, head=(args.vocab / D, 1, True, False, False))
    best = {}
    for name, (n_mult, k_mult, norm, gelu, residual) in shapes.items():
        N, K = int(n_mult * D), int(k_mult * D)
        x = torch.randn(2, K, device=dev, dtype=dt)
        w = torch.randn(N, K, device=dev, dtype=dt) / K ** 0.5
        r = torch.randn(2, N, device=dev, dtype=dt)
        ln = Norm(torch.ones(K, device=dev, dtype=dt), torch.zeros(K, device=dev, dtype=dt), 1e-5)

        def cublas():
            h = ln(x) if norm else x
            if gelu:
                return torch._addmm_activation(torch.zeros(N, device=dev, dtype=dt), h, w.t(), use_gelu=True)
            return torch.addmm(r, h, w.t()) if residual else F.linear(h, w)

        reference = cublas().float()
        base = _replay_us(cublas)
        rows = []
        configs = [Blocks(n, k, wp) for n, k, wp in itertools.product(
            *[[int(v) for v in s.split(",")] for s in (args.block_n, args.block_k, args.warps)])
            if k <= K and n * k <= 16384]
        for blocks in [default_blocks(N, K)] + configs:
            def fused(blocks=blocks):
                return gemv(x, w, norm=ln if norm else None, gelu=gelu, residual=r if residual else None,
                            blocks=blocks)
            try:
                apart = float((fused().float() - reference).abs().max() / reference.abs().max())
                rows.append((_replay_us(fused), blocks, apart))
            except Exception as err:  # a launch size that does not compile (registers) is skipped
                print(f"  {name} {blocks}: {type(err).__name__}: {str(err)[:100]}")
        default_us = rows[0][0] if rows and rows[0][1] == default_blocks(N, K) else float("nan")
        rows.sort(key=lambda row: row[0])
        floor = (N * K * 2) / 3.35e12 * 1e6
        print(f"{name:5s} N={N:5d} K={K:5d}: today {base:6.2f} µs; fused default {default_us:6.2f}; "
              f"best {rows[0][0]:6.2f} {rows[0][1]} ({base / rows[0][0]:.2f}x; weights alone at 3.35 TB/s {floor:.2f} µs; "
              f"error {rows[0][2]:.1e})", flush=True)
        for us, blocks, _ in rows[1:4]:
            print(f"        next {us:6.2f} {blocks}")
        best[f"{N},{K}"] = [rows[0][1].n, rows[0][1].k, rows[0][1].warps]
    cross(args, D, best)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(best, f)


if __name__ == "__main__":
    main()
