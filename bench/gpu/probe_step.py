#!/usr/bin/env python3
"""Probe (issue 12, "faster steps" and "padded CUDA graphs") on one card, in one run:

1. The single-station decode step (captured as a CUDA graph) in `--variants`: on the fused
   Triton kernels (fused_step.py, the default) or on torch's ops, with the residual adds and the
   GELU in the GEMMs' epilogues or as separate ops; ms per step side by side, and how far their
   logits are apart. `--engine DIR` runs another checkout's engine (e.g. the previous commit's,
   as "before"), default step only.
2. `--batch 1,2,4,...`: a batched decoder of the largest count; the step run with the first n
   slots busy, for each n: ms per step, and whether slots 0 and 1 get bitwise the same logits at
   every n (what lets a station's tokens not depend on the batch, batch.py).

    python bench/gpu/probe_step.py --model random-small --batch 1,2,4,8,16,32
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _sync(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize()


def _milliseconds(run, steps: int, device) -> float:
    for _ in range(3):
        run()
    _sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        run()
    _sync(device)
    return 1000 * (time.perf_counter() - started) / steps


def prefilled(model, fast, context_frames: int):
    """A prompt's condition and `context_frames` random frames prefilled into `fast` → (the
    sequence [K, S], the first position to step)."""
    import torch

    from engine.lm.generate import pattern_sequence
    torch.manual_seed(0)
    fast.set_conditions(model._prepare_tokens_and_attributes(["warm lofi hip hop"], None)[0][0])
    codes = torch.randint(0, fast.card, (fast.num_codebooks, context_frames), device=fast.device)
    sequence = pattern_sequence(fast, codes)
    first = context_frames + 1
    fast.prefill(sequence[:, :first].unsqueeze(0).expand(2, -1, -1))
    return sequence, first


def single(model, args, device, variant: str) -> dict:
    """ms per step of FastLM's captured step: `variant` "fused", "unfused" (torch's ops with and
    without the epilogues), "split" (fused, the self-attention on split_attention.py), "triton"
    (fused_step.py's kernels, the default), "tuned" (those with `--blocks`' launch sizes),
    "spanSxB" (those with the attention cut into spans of S positions read B at a time) or
    "default"."""
    import torch

    from engine.lm.model import FastLM
    from engine.lm.fused_kernels import Blocks
    from engine.lm.split_attention import SplitAttention
    triton = variant in ("triton", "tuned") or variant.startswith("span")
    options = ({} if variant == "default" else {"fused_step": True} if triton
               else {"split_attention": True, "fused_step": False} if variant == "split"
               else {"fuse_epilogues": variant == "fused", "fused_step": False})
    fast = FastLM(model.lm, max_frames=args.context + args.steps + 10, dtype=args.dtype, device=device,
                  kernels="graph", **options)
    if (variant == "tuned" or variant.startswith("span")) and args.blocks:
        with open(args.blocks) as f:
            fast._fused.blocks = {tuple(int(v) for v in shape.split(",")): Blocks(*blocks)
                                  for shape, blocks in json.load(f).items()}
    if variant.startswith("span"):  # spanSxB: the attention cut into spans of S positions, B at a time
        span, block = (int(v) for v in variant[4:].split("x"))
        _, _, _, P, Dh = fast.cache.k.shape
        fast._fused.attention = SplitAttention(2, fast.heads, P, Dh, device, span, block)
    with torch.inference_mode():
        sequence, first = prefilled(model, fast, args.context)
        tokens = sequence[:, first]
        ms = _milliseconds(lambda: fast.step(tokens, first), args.steps, device)
        logits = fast.step(tokens, first).float().cpu()
    del fast
    return {"variant": variant, "ms_per_step": round(ms, 3), "logits": logits}


def batch(model, args, device, counts, fuse: bool) -> list:
    """For each n in `counts`: the batched step with slots 0..n-1 busy (`fuse`: fuse_epilogues)."""
    import torch

    from engine.lm.batch import BatchedDecoder
    from engine.lm.generate import pattern_sequence
    from engine.lm.model import FastLM
    fast = FastLM(model.lm, max_frames=args.context + 20, dtype=args.dtype, device=device, fuse_epilogues=fuse)
    decoder = BatchedDecoder(fast, slots=max(counts))
    torch.manual_seed(0)
    rows = []
    with torch.inference_mode():
        codes = torch.randint(0, fast.card, (fast.num_codebooks, args.context), device=device)
        sequence = pattern_sequence(fast, codes)
        first = args.context + 1
        attributes = model._prepare_tokens_and_attributes(["warm lofi hip hop"], None)[0][0]
        for slot in range(max(counts)):
            decoder.set_conditions(slot, attributes)
            decoder.prefill(slot, sequence[:, :first].unsqueeze(0).expand(2, -1, -1))
        references = {}  # slot → its logits at the first count that holds it
        for n in counts:
            tokens = {slot: sequence[:, first] for slot in range(n)}
            positions = {slot: first for slot in range(n)}  # the same position again: the same writes
            ms = _milliseconds(lambda: decoder.step(tokens, positions), args.batch_steps, device)
            logits = decoder.step(tokens, positions).float().cpu()
            same, apart = True, 0.0
            for slot in range(min(n, 2)):  # slots 0 and 1 against themselves at the smallest count
                reference = references.setdefault(slot, logits[slot])
                same = same and torch.equal(logits[slot], reference)
                apart = max(apart, float((logits[slot] - reference).abs().max()))
            rows.append({"fused": fuse, "stations": n, "ms_per_step": round(ms, 3), "station_rtf": round(20 / ms, 2),
                         "aggregate_rtf": round(20 * n / ms, 2), "slots01_bitwise_as_alone": same,
                         "slots01_max_difference": apart})
            print(json.dumps(rows[-1]), flush=True)
    del decoder, fast
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="random-small")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-steps", type=int, default=100)
    p.add_argument("--context", type=int, default=1000, help="frames prefilled")
    p.add_argument("--variants", default="unfused,fused")
    p.add_argument("--batch", default="", help="station counts, e.g. 1,2,4,8,16,32")
    p.add_argument("--batch-variants", default="fused", help="fused, unfused or both")
    p.add_argument("--engine", default=ROOT, help="the checkout whose engine runs")
    p.add_argument("--blocks", default="", help="probe_gemv.py's JSON of launch sizes (variant tuned)")
    args = p.parse_args()
    sys.path.insert(0, os.path.abspath(args.engine))
    import torch

    from engine.models.load import load_model
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# {args.model}, {args.dtype}, {args.context} frames of context, engine from {args.engine}, on {name}")
    model = load_model(args.model, device=args.device, seed=0)
    results = [single(model, args, device, v) for v in args.variants.split(",") if v]
    for r in results:
        first = results[0]["logits"]
        apart = ((r["logits"] - first).norm() / first.norm()).item()
        print(f"single station, {r['variant']:>8} step: {r['ms_per_step']:.3f} ms/step "
              f"({results[0]['ms_per_step'] / r['ms_per_step']:.2f}x the {results[0]['variant']} one; "
              f"logits {apart:.2e} apart, relative)", flush=True)
    if args.batch:
        for variant in args.batch_variants.split(","):
            batch(model, args, device, [int(n) for n in args.batch.split(",")], variant == "fused")


if __name__ == "__main__":
    main()
