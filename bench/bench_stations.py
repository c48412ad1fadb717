#!/usr/bin/env python3
"""Stations against count: N stations in one batched decoder (engine/lm/batch.py: a slot per
station, every step at full capacity) next to N separate single-station processes on the same
machine (the obvious alternative), in one run, on random weights of a real MusicGen's shape.

For each N: ms per decode step (one step advances every station by one frame), each station's
real-time factor (a frame is 1/50 s of audio: RTF = 20 ms / step time), the aggregate real-time
factor (N × that), and on CUDA the peak GPU memory in use, the memory per added station (the
difference from the row above, over the stations added) and how much the memory in use grew
over the timed steps (it should not). "held" marks the counts where every station keeps ≥ --goal × real
time. Each station's slot is prefilled with --context seconds of tokens and its own prompt first.

    python bench/bench_stations.py --device cuda --model random-small --counts 1,2,4,8,16,32,48
    python bench/bench_stations.py --counts 1,2,3 --separate 1,2 --steps 30     # CPU, quick
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
import typing as tp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PROMPTS = ["warm lofi hip hop", "late night jazz trio with brushed drums", "epic orchestral soundtrack",
           "ambient drone", "fast breakbeat with a rolling bassline", "acoustic folk guitar"]


def _sync(device: str) -> None:
    import torch
    if device == "cuda":
        torch.cuda.synchronize()


def _build(model_name: str, device: str, dtype: str, context_frames: int, steps: int):
    import torch

    from engine.lm.model import FastLM
    from engine.models.load import load_model
    torch.manual_seed(0)
    model = load_model(model_name, device=device, seed=0)
    # Room in the cache for the context, the warm-up steps and the timed ones.
    fast = FastLM(model.lm, max_frames=context_frames + steps + 10, dtype=dtype, device=torch.device(device))
    return model, fast


def batched(model, fast, count: int, context_frames: int, steps: int, device: str) -> dict:
    """ms per batched step with `count` busy stations."""
    import torch

    from engine.lm.batch import BatchedDecoder
    from engine.lm.generate import pattern_sequence
    gc.collect()  # the previous count's decoder (its graph holds a reference cycle) is freed first
    if device == "cuda":
        torch.cuda.empty_cache()
    decoder = BatchedDecoder(fast, slots=count)
    K = fast.num_codebooks
    tokens, positions = {}, {}
    with torch.inference_mode():
        for slot in range(count):
            attributes = model._prepare_tokens_and_attributes([PROMPTS[slot % len(PROMPTS)]], None)[0][0]
            decoder.set_conditions(slot, attributes)
            codes = torch.randint(0, fast.card, (K, context_frames), device=fast.device)
            sequence = pattern_sequence(fast, codes)
            first = context_frames + 1
            decoder.prefill(slot, sequence[:, :first].unsqueeze(0).expand(2, -1, -1))
            tokens[slot], positions[slot] = sequence[:, first - 1], first - 1
        for _ in range(3):  # warm-up (and the CUDA graph's capture)
            decoder.step(tokens, positions)
        _sync(device)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            before_bytes = torch.cuda.memory_allocated()
        started = time.perf_counter()
        for i in range(steps):
            decoder.step(tokens, {s: p + 1 + i for s, p in positions.items()})
        _sync(device)
        seconds = (time.perf_counter() - started) / steps
    memory = torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None
    grew = (torch.cuda.memory_allocated() - before_bytes) / 1e6 if device == "cuda" else None
    del decoder
    return {"stations": count, "ms_per_step": round(1000 * seconds, 3), "station_rtf": round(0.02 / seconds, 2),
            "aggregate_rtf": round(count * 0.02 / seconds, 2), "gpu_memory_gb": memory,
            "gpu_memory_grew_mb": grew}


def single_worker(args) -> None:
    """One single-station process: `steps` decode steps of FastLM after a prefill; prints ms/step."""
    import torch

    from engine.lm.generate import pattern_sequence
    model, fast = _build(args.model, args.device, args.dtype, args.context_frames, args.steps)
    with torch.inference_mode():
        fast.set_conditions(model._prepare_tokens_and_attributes([PROMPTS[0]], None)[0][0])
        codes = torch.randint(0, fast.card, (fast.num_codebooks, args.context_frames), device=fast.device)
        sequence = pattern_sequence(fast, codes)
        first = args.context_frames + 1
        fast.prefill(sequence[:, :first].unsqueeze(0).expand(2, -1, -1))
        for i in range(3):
            fast.step(sequence[:, first - 1], first - 1)
        _sync(args.device)
        print("ready", flush=True)
        sys.stdin.readline()  # all processes start timing together
        started = time.perf_counter()
        for i in range(args.steps):
            fast.step(sequence[:, first - 1], first + i)
        _sync(args.device)
    print(json.dumps({"ms_per_step": 1000 * (time.perf_counter() - started) / args.steps}), flush=True)


def separate(args, count: int) -> dict:
    """`count` single-station processes stepping at the same time."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--model", args.model, "--device", args.device,
           "--dtype", args.dtype, "--steps", str(args.steps), "--context", str(args.context)]
    procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(count)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    ms = [json.loads(p.stdout.readline())["ms_per_step"] for p in procs]
    for p in procs:
        p.wait()
    slowest = max(ms) / 1000
    return {"stations": count, "ms_per_step": round(1000 * slowest, 3), "station_rtf": round(0.02 / slowest, 2),
            "aggregate_rtf": round(count * 0.02 / slowest, 2)}


def main(argv: tp.Optional[tp.Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="random-small")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--counts", default="1,2,4,8", help="stations in the batch, comma separated")
    p.add_argument("--separate", default="1,2,4", help="separate processes to compare, comma separated ('' none)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--context", type=float, default=20.0, help="seconds of context prefilled per station")
    p.add_argument("--goal", type=float, default=1.5, help="real-time factor each station must keep")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.context_frames = int(round(args.context * 50))
    if args.worker:
        return single_worker(args)
    import torch

    from engine.lm.hardware import resolve_dtype
    args.dtype = resolve_dtype(args.dtype, torch.device(args.device))
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({os.cpu_count()} threads)"
    print(f"# {args.model}, {args.dtype}, {args.context:g} s of context per station, {args.steps} steps, on {device_name}")
    model, fast = _build(args.model, args.device, args.dtype, args.context_frames, args.steps)
    rows = [dict(batched(model, fast, n, args.context_frames, args.steps, args.device), how="one batch")
            for n in (int(c) for c in args.counts.split(","))]
    rows += [dict(separate(args, n), how="separate processes")
             for n in (int(c) for c in args.separate.split(",") if c.strip())]
    print(f"{'how':<20} {'stations':>8} {'ms/step':>9} {'RTF each':>9} {'aggregate':>10} {'GPU GB':>7} "
          f"{'GB/added':>8} {'grew MB':>7} held")
    previous = None
    for r in rows:
        memory = per_station = grew = ""
        if r.get("gpu_memory_gb") is not None:
            memory, grew = f"{r['gpu_memory_gb']:.2f}", f"{r['gpu_memory_grew_mb']:.1f}"
            if previous is not None and r["stations"] > previous["stations"]:
                per_station = f"{(r['gpu_memory_gb'] - previous['gpu_memory_gb']) / (r['stations'] - previous['stations']):.3f}"
            previous = r
        held = "yes" if r["station_rtf"] >= args.goal else "no"
        print(f"{r['how']:<20} {r['stations']:>8} {r['ms_per_step']:>9.2f} {r['station_rtf']:>9.2f} "
              f"{r['aggregate_rtf']:>10.2f} {memory:>7} {per_station:>8} {grew:>7} {held}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
