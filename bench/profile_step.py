#!/usr/bin/env python3
"""Where a decode step's time goes: torch.profiler over a short stride (the prefill of the
context, then `--steps` decode steps; a short --context keeps the steps dominant) of this
engine's decoder and of audiocraft's `LMModel.generate`, from the same context, on random weights
of a real shape. Prints each one's top operators (CPU) or kernels (CUDA) by self time.

    python bench/profile_step.py                                   # CPU, musicgen-small shape
    python bench/profile_step.py --device cuda --model random-large --dtype bf16
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PROMPT = "warm lofi hip hop with vinyl crackle"


def _table(prof, device: str, rows: int) -> str:
    key = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=60)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--model", default="random-small", choices=["random-small", "random-medium", "random-large"])
    p.add_argument("--dtype", default="auto")
    p.add_argument("--context", type=float, default=20.0, help="seconds of context tokens")
    p.add_argument("--steps", type=int, default=20, help="decode steps profiled")
    p.add_argument("--rows", type=int, default=12)
    args = p.parse_args()
    warnings.simplefilter("ignore")
    import logging
    logging.disable(logging.WARNING)
    import torch
    from torch.profiler import ProfilerActivity, profile
    from engine.lm.window import SamplingParams, WindowGenerator
    from engine.models.load import load_model

    model = load_model(args.model, device=args.device, seed=0)
    fr = model.frame_rate
    context = torch.randint(0, model.lm.card, (1, model.lm.num_codebooks, round(args.context * fr)),
                            generator=torch.Generator().manual_seed(1)).to(args.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    gen = WindowGenerator(model, context.shape[-1], SamplingParams(), seed=1, dtype=args.dtype,
                          max_frames=context.shape[-1] + args.steps + 10)
    attributes, _ = model._prepare_tokens_and_attributes([PROMPT], None)
    runs = {
        f"engine[{gen.dtype}/{gen.fast.kernels}]": lambda: (gen.set_context(context),
                                                            gen.next_stride(PROMPT, args.steps)),
        "audiocraft LMModel.generate": lambda: model.lm.generate(
            context, attributes, max_gen_len=context.shape[-1] + args.steps, use_sampling=True,
            top_k=250, cfg_coef=3.0),
    }
    for name, run in runs.items():
        # audiocraft in the precision MusicGen.generate gives it (fp16 autocast on CUDA).
        with torch.inference_mode(), (model.autocast if name.startswith("audiocraft")
                                      else contextlib.nullcontext()):
            run()  # warm-up: first-call costs, CUDA graph capture
            with profile(activities=activities) as prof:
                run()
                if args.device == "cuda":
                    torch.cuda.synchronize()
        print(f"\n== {name}: the prefill of {args.context:g} s of context, then {args.steps} decode steps "
              f"({args.model}, {args.device})")
        print(_table(prof, args.device, args.rows))


if __name__ == "__main__":
    main()
