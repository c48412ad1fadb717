#!/usr/bin/env python3
"""Probe (issue 12, "faster steps"): the static decode step as captured today against the same
step made by torch.compile (Inductor fuses layer norms, residual adds and GELU into Triton
kernels) and then captured as the same CUDA graph. Prints ms per step for both, in one run, and
the largest logit difference between them.

    python bench/gpu/probe_compile.py --model random-small --steps 200
"""
from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def timed(fast, tokens, first: int, steps: int, device) -> float:
    import torch
    for i in range(3):
        fast.step(tokens, first + i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for i in range(steps):
        fast.step(tokens, first + i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - started) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="random-small")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--context", type=int, default=1000, help="frames prefilled")
    p.add_argument("--mode", default="max-autotune-no-cudagraphs")
    args = p.parse_args()
    import torch

    from engine.lm.model import FastLM
    from engine.models.load import load_model
    from probe_step import prefilled
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = load_model(args.model, device=args.device, seed=0)
    fast = FastLM(model.lm, max_frames=args.context + args.steps + 10, dtype=args.dtype, device=device,
                  kernels="graph")
    with torch.inference_mode():
        sequence, first = prefilled(model, fast, args.context)
        tokens = sequence[:, first - 1]
        eager_ms = timed(fast, tokens, first, args.steps, device)
        reference = fast.step(tokens, first).clone()
        print(f"captured step as today: {eager_ms:.3f} ms/step", flush=True)
        started = time.perf_counter()
        fast.step_graph.forward = torch.compile(fast._forward_static, mode=args.mode, fullgraph=False, dynamic=False)
        fast.step_graph.invalidate()
        fast.step(tokens, first)  # compiles, then captures
        print(f"compiled and captured in {time.perf_counter() - started:.1f} s", flush=True)
        compiled_ms = timed(fast, tokens, first, args.steps, device)
        got = fast.step(tokens, first)
    difference = (got - reference).abs().max().item()
    print(f"compiled step ({args.mode}): {compiled_ms:.3f} ms/step; {eager_ms / compiled_ms:.2f}x faster; "
          f"largest logit difference {difference:.4f} (logits' scale {reference.abs().max().item():.2f})")


if __name__ == "__main__":
    main()
