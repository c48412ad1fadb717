#!/usr/bin/env python3
"""Probe (issue 12): the CUDA top-k sampler (engine/lm/fused_sampling.py) against torch's ops.

1. The same draws: given the same uniforms, the Triton kernel's tokens against an inverse CDF
   over torch's sorted top k (float64), on random logits of musicgen-small's shape.
2. µs per call, each way, after warm-up (the step's logits [2, 4, 2048] fp32).
3. A decode loop as generate.py runs it (the captured fused step, then the sampler) for
   `--steps` steps: ms per step with sampling, each sampler, and whether one seed gives the same
   tokens twice.

    python bench/gpu/probe_sampler.py --model random-small
"""
from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="random-small")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--context", type=int, default=1000)
    args = p.parse_args()
    import torch

    from engine.lm import sampling
    from engine.lm.fused_sampling import sample_top_k
    from engine.lm.model import FastLM
    from engine.models.load import load_model
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from probe_step import prefilled
    device = torch.device("cuda")
    print(f"# {torch.cuda.get_device_name(device)}")
    torch.manual_seed(0)
    same = total = 0
    for _ in range(50):
        logits = torch.randn(2, 4, 2048, device=device) * 3
        uniforms = torch.rand(4, device=device)
        got = sample_top_k(logits, 3.0, 1.0, 250, uniforms)
        guided = (logits[1] + (logits[0] - logits[1]) * 3.0).double()
        values, order = guided.sort(dim=-1, descending=True, stable=True)
        weights = torch.exp(values[:, :250] - values[:, :1])
        before = (weights.cumsum(-1) <= uniforms.double().view(-1, 1) * weights.sum(-1, keepdim=True)).sum(-1)
        expected = order.gather(-1, before.clamp(max=249).view(-1, 1)).view(-1)
        same += int((got == expected).sum())
        total += 4
    print(f"same draws as the float64 reference: {same} of {total}")
    logits = torch.randn(2, 4, 2048, device=device)
    generator = torch.Generator(device).manual_seed(0)

    def torch_ops():
        return _torch_top_k(logits, generator)

    def fused():
        return sampling.sample(logits, 3.0, 1.0, 250, 0.0, generator, None)
    for name, fn in (("torch ops", torch_ops), ("fused", fused)):
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(500):
            fn()
        torch.cuda.synchronize()
        print(f"sampler, {name}: {1e6 * (time.perf_counter() - started) / 500:.1f} µs per call", flush=True)
    model = load_model(args.model, device="cuda", seed=0)
    fast = FastLM(model.lm, max_frames=args.context + args.steps + 20, dtype="bf16", device=device)
    with torch.inference_mode():
        sequence, first = prefilled(model, fast, args.context)
        for name, sampler in (("torch ops", _torch_top_k), ("fused", None)):
            runs = []
            for seed in (1, 1):
                g = torch.Generator(device).manual_seed(seed)
                tokens = sequence[:, first]
                out = []
                torch.cuda.synchronize()
                started = time.perf_counter()
                for offset in range(first, first + args.steps):
                    step_logits = fast.step(tokens, offset)
                    tokens = (sampler(step_logits, g) if sampler is not None
                              else sampling.sample(step_logits, 3.0, 1.0, 250, 0.0, g, None))
                    out.append(tokens)
                torch.cuda.synchronize()
                runs.append((1000 * (time.perf_counter() - started) / args.steps, torch.stack(out)))
            print(f"decode loop, {name} sampler: {runs[1][0]:.3f} ms per step with sampling "
                  f"(the same seed the same tokens: {torch.equal(runs[0][1], runs[1][1])})", flush=True)


def _torch_top_k(logits, generator):
    """sampling.py's torch path for top-k (before the fused sampler)."""
    import torch
    guided = logits[1] + (logits[0] - logits[1]) * 3.0
    values, indices = guided.topk(250, dim=-1)
    probs = torch.softmax(values, dim=-1)
    return indices.gather(-1, torch.multinomial(probs, 1, generator=generator)).squeeze(-1)


if __name__ == "__main__":
    main()
