#!/usr/bin/env python3
"""Side-by-side benchmark of one full stride of endless MusicGen, on random weights of a real
MusicGen's shape (--model random-small: 24 layers, dim 1024, 16 heads, 4 codebooks of 2048;
random-medium, random-large), the same settings for all (CFG 3, top-k 250) and the same 20 s of
context tokens:

  engine[dtype]  this engine: fast decoder (engine/lm/) + seam-free stitcher, per --dtypes
                 (each `dtype`, `dtype/kernels` or `dtype/kernels/kv-cache`, e.g. bf16/eager for
                 no CUDA graph, int4/native/fp16 for int4 weights over an fp16 KV cache,
                 int4/native-ops for the native kernels with the layers run as torch ops around
                 them, not as one fused native step)
  seed           the seed notebook's cycle: audiocraft `generate_continuation` on the last
                 `context` seconds of waveform (re-encoded), audio decoded every cycle; fp32 on
                 CPU, audiocraft's own fp16 autocast on CUDA
  extend         one `extend_stride` step of audiocraft's `generate`: `LMModel.generate` from
                 the last `context` seconds of tokens (audio is decoded only at the very end),
                 with the precision `MusicGen.generate` uses (fp32 CPU, fp16 autocast CUDA)
  transformers   transformers' MusicgenForCausalLM (same shape, its own random weights): prefill
                 then cached single-step forwards at batch 2 (CFG), top-k sampling; no audio;
                 fp32 on CPU, fp16 on CUDA (its MusicGen has no static cache to compile a step
                 with: this dynamic cache is its best)
  fast-musicgen  the fast-musicgen package (static KV cache, CUDA graphs, fp16 on CUDA; fp32
                 eager on CPU), same shape, its own random weights; it has no prefill, so the
                 context is stepped through one position at a time (bench/peers.py)

For each: prefill seconds (processing the context, up to the first new token), ms per decode
step (mean over the stride), the stride's wall time and real-time factor (stride seconds / wall),
and peak RSS (and GPU memory); then each one's speed relative to the engine. For the engine
also: the time to first sound (from the loaded model to the first stride's audio, --first-stride
seconds: 1 s, CUDA graph capture and all first-call costs included); the bytes its average step
reads and how far the step is from reading them at the memory read bandwidth measured in the
same run (before and after the methods, and in the engine's process just before and after its
timed stride, since a shared machine's bandwidth moves within a minute); and on CPU how far its
int8 prefill is from the cores' int8 compute peak (a VNNI loop on registers, measured first).
Each method runs in its own process.

    python bench/bench_engine.py                          # 30 / 20 / 10 s, CPU (~10 minutes)
    python bench/bench_engine.py --steps 60               # quick: 60 decode steps, RTF projected
    python bench/bench_engine.py --device cuda --dtypes bf16,bf16/eager,fp16 --model random-large
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import typing as tp
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stridetiming import PROMPT, WARMUP_FRAMES, StepClock, context_codes, sync, timed  # noqa: E402
from peers import run_extend, run_fast_musicgen, run_seed, run_transformers  # noqa: E402

METHODS = ("engine", "seed", "extend", "transformers", "fast-musicgen")
#: GB summed for the bandwidth read just before and after the engine's timed stride (far larger
#: than the caches, small beside the model's memory).
ADJACENT_BANDWIDTH_GB = 0.25
#: And between its decode steps, every this many steps (each read about 2-4 ms, left out of the
#: stride's time): the bandwidth beside the steps themselves, where on shared machines it moves by
#: up to 1.8x between reads a minute apart.
BETWEEN_STEPS_BANDWIDTH_GB, BANDWIDTH_EVERY_STEPS = 0.1, 50


def run_engine(model, args) -> dict:
    from engine.codec.stitcher import StitchingDecoder
    from engine.lm.hardware import QUANTISED
    from engine.lm.window import SamplingParams, WindowGenerator
    fr = model.frame_rate
    stride_frames = round(args.stride * fr)
    dtype, _, rest = args.dtype.partition("/")
    kernels, _, kv_cache = rest.partition("/")
    unfused = kernels == "native-ops"
    kernels = "native" if unfused else kernels
    sync(args.device)
    first_started = time.perf_counter()
    gen = WindowGenerator(model, round(args.context * fr), SamplingParams(), seed=args.seed,
                          dtype=dtype, max_frames=round(args.window * fr), kernels=kernels or "auto",
                          kv_cache=kv_cache or "auto")
    if unfused and gen.fast is not None:
        gen.fast.native_step = None
    stitcher = StitchingDecoder(model.compression_model)
    first_audio = stitcher.push(gen.next_stride(PROMPT, round(args.first_stride * fr)))
    sync(args.device)
    first_sound = time.perf_counter() - first_started
    assert first_audio.shape[0] > 0
    context = context_codes(model, args)
    gen.set_context(context)
    stitcher.push(gen.next_stride(PROMPT, WARMUP_FRAMES))  # warm-up with the full context
    gen.set_context(context)
    # the host's memory flips between states within a stride; a GPU's does not, and 0.1 GB read
    # there measures the launch and the sync, not the memory (763 GB/s on an H200)
    probe = BandwidthProbe(args.device, BETWEEN_STEPS_BANDWIDTH_GB) if args.device == "cpu" else None
    clock = StepClock(args.device, args.steps, probe, BANDWIDTH_EVERY_STEPS)
    # the read bandwidth right before and after the timed stride (in this process; it moves by
    # up to 1.7x within a minute on shared machines): the step's floor is taken against it
    bandwidth_before = read_bandwidth_gbs(args.device, ADJACENT_BANDWIDTH_GB)
    started = time.perf_counter()
    wall = timed(args.device, started, lambda: stitcher.push(gen.next_stride(PROMPT, stride_frames, clock)))
    wall = None if wall is None else wall - clock.paused_s
    adjacent = (bandwidth_before + read_bandwidth_gbs(args.device, ADJACENT_BANDWIDTH_GB)) / 2
    result = {**clock.figures(started), "stride_wall_s": wall, "first_sound_s": first_sound,
              "adjacent_bandwidth_gbs": adjacent, "between_steps_gbs": clock.bandwidths,
              "dtype": gen.dtype + (f"/{gen.fast.kernels}{'-ops' if unfused else ''}/"
                                    f"{gen.fast.cache.precision}-cache"
                                    if gen.fast is not None else "/audiocraft")}
    if gen.fast is not None:  # bytes read by the stride's average step (its middle position)
        steps = result["steps_timed"] or stride_frames
        result["step_bytes"] = gen.fast.step_bytes(context.shape[-1] + max(gen.fast.delays) + steps // 2)
        text = gen.fast.cross.keys
        result["prefill_ops"] = gen.fast.prefill_ops(context.shape[-1] + max(gen.fast.delays) + 1,
                                                     0 if text is None else text.shape[3])
        result["quantised"] = gen.fast.mode in QUANTISED
    return result


def child(args) -> None:
    warnings.simplefilter("ignore")
    import logging
    logging.disable(logging.WARNING)
    import torch
    with torch.inference_mode():
        if args.method in ("transformers", "fast-musicgen"):
            result = {"transformers": run_transformers, "fast-musicgen": run_fast_musicgen}[args.method](args)
        else:
            from engine.models.load import load_model
            model = load_model(args.model, device=args.device, seed=0)
            result = {"engine": run_engine, "seed": run_seed, "extend": run_extend}[args.method](model, args)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.device == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(result), flush=True)


def read_bandwidth_gbs(device: str, gigabytes: float = 1.0, repeats: int = 6) -> float:
    """Memory read bandwidth as the decode step sees it (all of torch's threads summing a buffer
    far larger than the caches; the best of `repeats`), in GB/s."""
    probe = BandwidthProbe(device, gigabytes)
    return max(probe() for _ in range(repeats))


class BandwidthProbe:
    """One read of a buffer of `gigabytes` (allocated once) by all of torch's threads → GB/s."""

    def __init__(self, device: str, gigabytes: float):
        import torch
        self.buffer = torch.ones(int(gigabytes * 1e9) // 4, dtype=torch.float32, device=device)
        self.device = device

    def __call__(self) -> float:
        sync(self.device)
        started = time.perf_counter()
        self.buffer.sum()
        sync(self.device)
        return self.buffer.numel() * 4 / (time.perf_counter() - started) / 1e9


def int8_peak_gops() -> tp.Optional[float]:
    """The cores' int8 compute peak (VNNI multiply-adds on registers on every torch thread),
    in GOPS; None without the native kernels."""
    import torch
    from engine.lm.kernels import load_cpu_kernels
    kernels = load_cpu_kernels()
    if kernels is None:
        return None
    kernels.vnni_peak(10**6)  # threads up
    best = 0.0
    for _ in range(3):
        started = time.perf_counter()
        operations = 2 * kernels.vnni_peak(2 * 10**7)
        best = max(best, operations / (time.perf_counter() - started) / 1e9)
    return best


def _stride_seconds_estimate(r: dict, args) -> float:
    """Wall time of the stride: measured, or (with --steps) prefill + all steps at the mean."""
    if r["stride_wall_s"] is not None:
        return r["stride_wall_s"]
    return r["prefill_s"] + (round(args.stride * 50) + 3) * r["step_ms"] / 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--model", default="random-small", choices=["random-small", "random-medium", "random-large"])
    p.add_argument("--window", type=float, default=30.0)
    p.add_argument("--context", type=float, default=20.0)
    p.add_argument("--stride", type=float, default=10.0)
    p.add_argument("--dtypes", default="auto,fp32", help="engine precisions to run (comma list)")
    p.add_argument("--steps", type=int, default=0,
                   help="time only this many decode steps per method and project the stride (0: full)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--first-stride", type=float, default=1.0,
                   help="seconds of the engine's first stride, timed as the time to first sound")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="auto", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.method:
        return child(args)
    if args.context + args.stride > args.window:
        p.error("need context + stride ≤ window")
    import torch
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"bench: random weights of {args.model.replace('random-', 'musicgen-')}'s shape on {args.device} "
          f"({where}); window {args.window:g} s, context {args.context:g} s, "
          f"stride {args.stride:g} s; CFG 3, top-k 250"
          + (f"; {args.steps} steps timed, strides projected" if args.steps else ""), flush=True)
    bandwidth_before = read_bandwidth_gbs(args.device)
    print(f"memory read bandwidth: {bandwidth_before:.1f} GB/s (measured now)", flush=True)
    peak = int8_peak_gops() if args.device == "cpu" else None
    if peak is not None:
        print(f"int8 compute peak: {peak:.0f} GOPS (VNNI on {torch.get_num_threads()} threads, measured now)", flush=True)
    runs = []
    for method in args.methods.split(","):
        runs += [(f"engine[{d}]", method, d) for d in args.dtypes.split(",")] if method == "engine" \
            else [(method, method, "fp32")]
    results = {}
    for label, method, dtype in runs:
        cmd = [sys.executable, __file__, "--method", method, "--dtype", dtype] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
            if k not in ("method", "methods", "dtype", "dtypes")]
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if out.returncode or not line:
            print(f"{label}: failed\n{out.stderr[-3000:]}", flush=True)
            continue
        r = json.loads(line[0][7:])
        r["wall"] = _stride_seconds_estimate(r, args)
        r["rtf"] = args.stride / r["wall"]
        if method == "engine":
            label = f"engine[{r['dtype']}]"
        results[label] = r
        print(f"{label:22s} prefill {r['prefill_s']:6.2f} s | {r['step_ms']:7.2f} ms/step | stride "
              f"{r['wall']:7.2f} s{'' if r['stride_wall_s'] is not None else ' (projected)'} | "
              f"real-time factor {r['rtf']:.3f} | peak RSS {r['peak_rss_mb']:.0f} MB"
              + (f" | peak GPU {r['peak_gpu_mb']:.0f} MB" if "peak_gpu_mb" in r else "")
              + (f" | first sound {r['first_sound_s']:.2f} s" if "first_sound_s" in r else ""), flush=True)
    bandwidth_after = read_bandwidth_gbs(args.device)
    bandwidth = (bandwidth_before + bandwidth_after) / 2
    print(f"memory read bandwidth: {bandwidth_after:.1f} GB/s after the runs; {bandwidth:.1f} GB/s on average",
          flush=True)
    for label, r in results.items():
        if "step_bytes" in r:  # how far each step is from reading its bytes at that bandwidth
            floor_ms = r["step_bytes"] / (bandwidth * 1e9) * 1000
            near = r["adjacent_bandwidth_gbs"]
            near_floor_ms = r["step_bytes"] / (near * 1e9) * 1000
            print(f"{label:22s} reads {r['step_bytes'] / 1e6:.0f} MB per step (weights, KV cache, text condition): "
                  f"floor {floor_ms:.2f} ms at {bandwidth:.1f} GB/s; the step takes {r['step_ms'] / floor_ms:.2f}x "
                  f"the floor; {r['step_ms'] / near_floor_ms:.2f}x at the {near:.1f} GB/s read just before and after "
                  f"its stride", flush=True)
            between = r.get("between_steps_gbs") or []
            if between:  # the floor at the time per byte of the reads between its steps (their mean)
                seconds_per_gb = sum(1 / b for b in between) / len(between)
                print(f"{label:22s} {r['step_ms'] / (r['step_bytes'] / 1e9 * seconds_per_gb * 1000):.2f}x the floor at "
                      f"the {1 / seconds_per_gb:.1f} GB/s read between its steps ({len(between)} reads every "
                      f"{BANDWIDTH_EVERY_STEPS} steps, {min(between):.1f}-{max(between):.1f} GB/s)", flush=True)
    for label, r in results.items():
        if peak is not None and r.get("quantised") and r["prefill_s"] > 0:
            rate = r["prefill_ops"] / r["prefill_s"] / 1e9
            print(f"{label:22s} prefill: {r['prefill_ops'] / 1e9:.0f} G operations in {r['prefill_s']:.2f} s = "
                  f"{rate:.0f} GOPS; {peak / rate:.2f}x from the int8 peak", flush=True)
    engines = [k for k in results if k.startswith("engine")]
    if engines:  # everything relative to the first engine run (--dtypes' first: auto)
        engine = engines[0]
        e = results[engine]
        for other, r in results.items():
            if other == engine:
                continue
            print(f"ratio {engine} / {other}: stride {e['rtf'] / r['rtf']:.2f}x, "
                  f"step {r['step_ms'] / e['step_ms']:.2f}x, prefill {r['prefill_s'] / e['prefill_s']:.2f}x")


if __name__ == "__main__":
    main()
