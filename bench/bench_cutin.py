#!/usr/bin/env python3
"""Prompt-change latency: how long after a `set_prompt` command with `when: "now"` its first
changed sample is played (the station's own measure, `radio_prompt_change_latency_seconds`:
command received → the playhead reaches the cut-in). One station plays in real time from the
system clock, as `server.py --no-play` does; commands go through the same Controller as
`POST /control` and the WebSocket, at spread-out points of the stride cycle.

    python bench/bench_cutin.py --device cuda --model random-small      # the issue's goal: ≤ 1.5 s
    python bench/bench_cutin.py --model tiny --changes 3                 # CPU, quick
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import threading
import time
import typing as tp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PROMPTS = ["dark ambient with rain", "fast breakbeat with a rolling bassline", "late night jazz trio",
           "epic orchestral soundtrack", "acoustic folk guitar", "warm lofi hip hop"]


def steer(station, changes: int, gap_seconds: float, stop: threading.Event, results: tp.List[dict]) -> None:
    """From a side thread (as the network loop would): wait for the first sound, then send
    `changes` cut-ins, each `gap_seconds` (and a little more each time, to spread the commands
    over the stride cycle) of playing after the previous one was heard."""
    from engine.net.control import ControlAuth, Controller
    controller = Controller(station, ControlAuth("127.0.0.1", "bench"))
    heard: tp.Dict[int, float] = {}
    heard_event = threading.Event()

    def on_heard(change, program_sample: int) -> None:
        heard[change.number] = change.latency_seconds
        heard_event.set()
    station.add_heard_listener(on_heard)
    try:
        while not stop.is_set() and station.player.played_samples == 0:
            stop.wait(0.05)
        for i in range(changes):
            settle_samples = (gap_seconds + (i % 4) * 0.9) * station.sample_rate
            start = station.player.played_samples
            while not stop.is_set() and station.player.played_samples - start < settle_samples:
                stop.wait(0.02)
            if stop.is_set():
                return
            heard_event.clear()
            sent = time.monotonic()
            result = controller.handle({"type": "set_prompt", "prompt": PROMPTS[i % len(PROMPTS)], "when": "now",
                                        "id": i}, "bench")
            if not result.get("ok"):
                raise RuntimeError(f"the command was refused: {result}")
            while not stop.is_set() and result["change"] not in heard:
                heard_event.wait(0.5)
                heard_event.clear()
            results.append({"change": result["change"], "when": result["when"], "wall_seconds": time.monotonic() - sent,
                            "station_seconds": heard.get(result["change"]),
                            "buffered_seconds": round(station.buffered_samples / station.sample_rate, 2)})
    finally:
        stop.set()


def main(argv: tp.Optional[tp.Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="random-small")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--changes", type=int, default=6)
    p.add_argument("--gap", type=float, default=3.0, help="seconds played between one change heard and the next command")
    p.add_argument("--goal", type=float, default=1.5, help="seconds from command to changed sound")
    p.add_argument("--timeout", type=float, default=240.0, help="give up after this many seconds")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("engine.codec", "engine.lm"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    import torch

    from engine.radio import load
    from engine.rt.clock import PacedClock
    from engine.station.config import ModelConfig, StationConfig
    from engine.station.station import Station
    models = ModelConfig(name=args.model, device=args.device, dtype=args.dtype)
    model = load(models, args.device)
    station = Station(StationConfig(prompt="warm lofi hip hop", seed=1), model, model_config=models,
                      release_lm_weights=True)
    stop = threading.Event()
    results: tp.List[dict] = []
    side = threading.Thread(target=steer, args=(station, args.changes, args.gap, stop, results), daemon=True)
    side.start()
    threading.Timer(args.timeout, stop.set).start()
    station.play(PacedClock(station.player), stop)  # generation in the main thread, as server.py does
    side.join(timeout=5)
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"{os.cpu_count()} CPU threads"
    print(f"bench_cutin: {args.model} on {args.device} ({name}), dtype {args.dtype}; "
          f"underruns {station.player.underruns}")
    for r in results:
        print(f"change {r['change']:2d} ({r['when']}): heard {r['station_seconds']} s after the command "
              f"(seen here after {r['wall_seconds']:.2f} s); buffered when heard {r['buffered_seconds']} s")
    heard = [r["station_seconds"] for r in results if r["station_seconds"] is not None]
    if heard:
        print(f"cut-in latency: median {statistics.median(heard):.2f} s, worst {max(heard):.2f} s over {len(heard)} "
              f"changes; goal ≤ {args.goal} s: {'met' if max(heard) <= args.goal else 'NOT met'}")
    else:
        print("cut-in latency: no change was heard")
    os._exit(0)  # the Timer thread and the device's threads need not be waited for


if __name__ == "__main__":
    main()
