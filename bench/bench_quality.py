#!/usr/bin/env python3
"""What reduced precision costs in model quality: tokens sampled by the fp32 model are scored
(mean cross-entropy per token, teacher-forced, CFG 3) under each precision of the fast decoder;
the gap to fp32's own cross-entropy is the usual quantisation-quality figure. Beside it, along
the same teacher-forced sequence: the relative error of each precision's guided logits against
fp32's, and how many of fp32's top-10 and top-250 codes (250: the sampler's top-k) stay in its own,
through the decode steps (what samples every token but a stride's first: the first third of the
sequence prefilled, the rest stepped one position at a time) and through the prefill alone.

    python bench/bench_quality.py                      # random-small (musicgen-small shape), CPU
    python bench/bench_quality.py --model /path/to/musicgen-small --frames 500

With random weights the model's predictions are nearly flat, so the cross-entropy gap says little
about a trained checkpoint (the logit error and top-k overlap still compare precisions): run it on
real weights (a local folder) where they are available.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="random-small")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--frames", type=int, default=150, help="frames sampled by fp32 (50 per second)")
    p.add_argument("--dtypes", default="bf16,int8,int4",
                   help="precisions (comma list), each `dtype`, `dtype/kernels` or `dtype/kernels/kv-cache` "
                        "as bench_engine.py's, e.g. int8/native/fp16")
    p.add_argument("--prompt", default="warm lofi hip hop with vinyl crackle")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    warnings.simplefilter("ignore")
    import logging
    logging.disable(logging.WARNING)
    import torch
    from engine.lm.generate import generate
    from engine.lm.model import FastLM
    from engine.lm.quality import cross_entropy, guided_logits, logit_agreement
    from engine.models.load import load_model
    model = load_model(args.model, device=args.device, seed=0)
    attributes = model._prepare_tokens_and_attributes([args.prompt], None)[0][0]
    reference = FastLM(model.lm, max_frames=args.frames, dtype="fp32")
    started = time.perf_counter()
    codes = generate(reference, None, attributes, args.frames,
                     generator=torch.Generator(args.device).manual_seed(args.seed))[0]
    print(f"quality: {args.model}, {args.frames} frames sampled in fp32 ({time.perf_counter() - started:.0f} s), "
          f"top-k 250, CFG 3", flush=True)
    baseline = cross_entropy(reference, codes, attributes)
    print(f"fp32   cross-entropy {baseline:.5f} nats/token", flush=True)
    reference_logits, targets = guided_logits(reference, codes, attributes)
    special = reference.special_token
    del reference
    for spec in args.dtypes.split(","):
        dtype, _, rest = spec.partition("/")
        kernels, _, kv_cache = rest.partition("/")
        reduced = FastLM(model.lm, max_frames=args.frames, dtype=dtype, kernels=kernels or "auto",
                         kv_cache=kv_cache or "auto")
        dtype = spec
        ce = cross_entropy(reduced, codes, attributes)
        print(f"{dtype:6s} cross-entropy {ce:.5f} nats/token, gap {100 * (ce - baseline) / baseline:+.3f} %",
              flush=True)
        for path, prefilled in (("decode steps", targets.shape[-1] // 3), ("prefill", None)):
            logits = guided_logits(reduced, codes, attributes, prefill_positions=prefilled)[0]
            agreement = logit_agreement(reference_logits, logits, targets, special)
            print(f"       {path:12s} logits' relative error {100 * agreement['logit_relative_error']:5.2f} % | "
                  f"top-10 overlap {100 * agreement['top10_overlap']:.1f} % | "
                  f"top-250 overlap {100 * agreement['top250_overlap']:.1f} %", flush=True)
        del reduced


if __name__ == "__main__":
    main()
