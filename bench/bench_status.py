#!/usr/bin/env python3
"""CPU spent on WebSocket status messages with N listeners: one shared snapshot per period
(engine/net/status.py) against a snapshot built by every listener's ticker (the earlier design),
measured side by side with the same snapshot builder, in one process.

    python bench/bench_status.py                  # 100, 1000 and 5000 listeners
    python bench/bench_status.py --counts 1000
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


class FakeStation:
    """The station side of a snapshot (its cost does not depend on the listeners)."""

    def __init__(self):
        from engine.station.metrics import EngineMetrics
        self.metrics = EngineMetrics(sample_rate=32000, model="tiny", seed=1)

    def status(self) -> dict:
        return self.metrics.snapshot()


async def measure(listeners: int, period_seconds: float, reps: int) -> tuple:
    from engine.net.broadcast import Broadcaster
    from engine.net.status import StatusPublisher
    from engine.rt.ring import PcmRing
    broadcaster = Broadcaster(PcmRing(32000, 1), 32000, 1)
    publisher = StatusPublisher(FakeStation(), broadcaster)
    for _ in range(listeners):
        broadcaster.join("ws-opus", "opus")
    # Each WebSocket listener is three coroutines on the loop (pump, client reader, ticker).
    idle = [asyncio.ensure_future(asyncio.sleep(3600)) for _ in range(3 * listeners)]
    await asyncio.sleep(0)
    started = time.process_time()
    for _ in range(reps):
        json.dumps({"type": "status", **publisher.snapshot()})
    per_build = (time.process_time() - started) / reps
    for task in idle:
        task.cancel()
    shared = per_build / period_seconds  # one build per period
    per_listener = per_build * listeners / period_seconds  # every ticker builds its own
    return per_build, shared, per_listener


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--counts", default="100,1000,5000")
    p.add_argument("--reps", type=int, default=100)
    args = p.parse_args()
    warnings.simplefilter("ignore")
    from engine.net.status import STATUS_PERIOD_SECONDS
    print(f"bench: status messages every {STATUS_PERIOD_SECONDS:g} s; CPU ms per wall second on one core")
    for n in (int(c) for c in args.counts.split(",")):
        per_build, shared, per_listener = asyncio.run(measure(n, STATUS_PERIOD_SECONDS, args.reps))
        print(f"{n:5d} listeners: one snapshot {1e3 * per_build:.3f} ms; shared {1e3 * shared:.3f} ms/s, "
              f"built per listener {1e3 * per_listener:.1f} ms/s; ratio {per_listener / shared:.0f}x")


if __name__ == "__main__":
    main()
