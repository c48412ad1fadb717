#!/usr/bin/env python3
"""Side-by-side benchmark of three ways to make endless MusicGen audio, on the same random weights
of musicgen-small's shape (24 layers, dim 1024, 16 heads, 4 codebooks of 2048, real-width codec):

  (a) engine    this engine's stride loop: token window (no re-encode) + seam-free stitcher
  (b) seed      the seed notebook's loop: audiocraft `generate_continuation` on the last
                `context` seconds of *waveform*, re-encoded every cycle
  (c) extend    audiocraft's own `generate` with `extend_stride` for the same total length

Each method runs in its own child process (so its peak RSS is its own) with identical weights and
settings, and the parent prints audio-seconds per wall-second, the ratios a/b and a/c, the time to
first sound and peak RSS.

    python bench/bench_engine.py                      # CPU: window 3 / context 2 / stride 1 s
    python bench/bench_engine.py --device cuda --window 30 --context 20 --stride 10 --total 50
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PROMPT = "warm lofi hip hop with vinyl crackle"
METHODS = ("engine", "seed", "extend")


def _sync(device: str) -> None:
    import torch
    if device == "cuda":
        torch.cuda.synchronize()


def run_engine(model, args) -> dict:
    """(a) WindowGenerator + StitchingDecoder: what the producer thread does per stride."""
    import numpy as np
    from engine.generator import SamplingParams, WindowGenerator
    from engine.stitcher import StitchingDecoder
    fr = model.frame_rate
    gen = WindowGenerator(model, round(args.context * fr), SamplingParams(), seed=args.seed,
                          autocast_dtype=_autocast(args.device))
    stitcher = StitchingDecoder(model.compression_model)
    total_frames = round(args.total * fr)
    pieces, first_sound = [], None
    started = time.monotonic()
    while gen.frames_emitted < total_frames:
        frames = min(round(args.stride * fr), total_frames - gen.frames_emitted)
        pieces.append(stitcher.push(gen.next_stride(PROMPT, frames)))
        _sync(args.device)
        if first_sound is None:
            first_sound = time.monotonic() - started
    pieces.append(stitcher.flush())
    _sync(args.device)
    return {"wall": time.monotonic() - started, "first_sound": first_sound,
            "audio_seconds": sum(p.shape[0] for p in pieces) / model.sample_rate,
            "strides": gen.stride_index, "check": float(np.abs(np.concatenate(pieces)).mean())}


def run_seed(model, args) -> dict:
    """(b) The seed notebook: continue from the last `context` seconds of waveform, re-encoded."""
    import torch
    sr = model.sample_rate
    model.set_generation_params(duration=args.stride, top_k=250, cfg_coef=3.0)
    started = time.monotonic()
    torch.manual_seed(args.seed)
    wav = model.generate([PROMPT])  # [1, C, samples]
    _sync(args.device)
    first_sound = time.monotonic() - started
    strides = 1
    total = int(args.total * sr)
    while wav.shape[-1] < total:
        tail = wav[..., -int(args.context * sr):]
        new_seconds = min(args.stride, (total - wav.shape[-1]) / sr)
        model.set_generation_params(duration=tail.shape[-1] / sr + new_seconds, top_k=250, cfg_coef=3.0)
        out = model.generate_continuation(tail, sr, [PROMPT])
        wav = torch.cat([wav, out[..., tail.shape[-1]:]], dim=-1)
        strides += 1
    _sync(args.device)
    return {"wall": time.monotonic() - started, "first_sound": first_sound,
            "audio_seconds": wav.shape[-1] / sr, "strides": strides,
            "check": float(wav.abs().mean())}


def run_extend(model, args) -> dict:
    """(c) audiocraft's generate with extend_stride: window, then strides of `stride` seconds."""
    import torch
    model.max_duration = args.window
    model.set_generation_params(duration=args.total, top_k=250, cfg_coef=3.0, extend_stride=args.stride)
    started = time.monotonic()
    torch.manual_seed(args.seed)
    wav = model.generate([PROMPT])
    _sync(args.device)
    wall = time.monotonic() - started
    return {"wall": wall, "first_sound": wall,  # it decodes only at the very end
            "audio_seconds": wav.shape[-1] / model.sample_rate, "strides": None,
            "check": float(wav.abs().mean())}


def _autocast(device: str):
    import torch
    return torch.float16 if device == "cuda" else None


def child(args) -> None:
    warnings.simplefilter("ignore")
    import torch
    from engine.models import load_model
    model = load_model("random-small", device=args.device, seed=0)
    with torch.inference_mode():
        result = {"engine": run_engine, "seed": run_seed, "extend": run_extend}[args.method](model, args)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.device == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--window", type=float, default=3.0, help="seconds (CPU default is short)")
    p.add_argument("--context", type=float, default=2.0)
    p.add_argument("--stride", type=float, default=1.0)
    p.add_argument("--total", type=float, default=5.0, help="seconds of audio each method makes")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--method", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.method:
        return child(args)
    if args.context + args.stride > args.window or args.total < args.window:
        p.error("need context + stride ≤ window ≤ total")
    print(f"bench: random weights of musicgen-small's shape on {args.device}; window {args.window:g} s, "
          f"context {args.context:g} s, stride {args.stride:g} s, {args.total:g} s of audio per method; "
          f"CFG 3, top-k 250, fp32 on CPU / fp16 autocast on CUDA", flush=True)
    results = {}
    for method in args.methods.split(","):
        cmd = [sys.executable, __file__, "--method", method] + [
            f"--{k}={v}" for k, v in vars(args).items() if k not in ("method", "methods")]
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if out.returncode or not line:
            print(f"{method}: failed\n{out.stderr[-3000:]}")
            continue
        results[method] = r = json.loads(line[0][7:])
        r["speed"] = r["audio_seconds"] / r["wall"]
        print(f"{method:7s} {r['audio_seconds']:6.2f} s audio in {r['wall']:7.1f} s = "
              f"{r['speed']:.3f} audio-s/wall-s (real-time factor), first sound {r['first_sound']:6.1f} s, "
              f"peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    if "engine" in results:
        a = results["engine"]["speed"]
        for other, label in (("seed", "a/b (engine / seed loop)"), ("extend", "a/c (engine / extend_stride)")):
            if other in results:
                print(f"ratio {label}: {a / results[other]['speed']:.2f}x")


if __name__ == "__main__":
    main()
