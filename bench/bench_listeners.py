#!/usr/bin/env python3
"""How many WebSocket (Opus) listeners one station holds at real-time pace.

Starts `server.py --model tiny --no-play` (generation included, as in production), then holds
N = 100, 250, 500, 1000 … listeners on loopback from one client process (aiohttp), each reading
everything it is sent. For each N it measures, over a steady window: the station's CPU seconds per
wall second (psutil) above its idle baseline, hence CPU per listener, and whether every listener
kept up: no listener dropped by the station and none more than `--max-behind` seconds behind the
newest packet any listener saw.

With `--flood RATE` another client sends RATE control commands per second meanwhile (status,
set_params, malformed ones, over POST /control), most of them refused by the rate limit; the
step is held only if the audio also went on without an underrun.

    python bench/bench_listeners.py                  # up to 1000 listeners
    python bench/bench_listeners.py --counts 100,2000
    python bench/bench_listeners.py --counts 1000 --flood 200
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import resource
import sys
import time

import psutil

from benchutil import ROOT, start_station, status

sys.path.insert(0, ROOT)
from engine.net import protocol  # noqa: E402


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Listener:
    def __init__(self):
        self.last_sample = None
        self.bytes = 0
        self.closed = None


async def listen(session, url, listener: Listener) -> None:
    try:
        async with session.ws_connect(url, max_msg_size=1 << 20, compress=0) as ws:
            async for msg in ws:
                if msg.type.name == "BINARY":
                    listener.last_sample = protocol.HEADER.unpack_from(msg.data)[4]
                    listener.bytes += len(msg.data)
            listener.closed = f"closed {ws.close_code}"
    except Exception as err:  # counted as not held
        listener.closed = f"{type(err).__name__}: {err}"


TOKEN = "bench-token-0123456789"


async def flood(port: int, rate: float, answers: collections.Counter, stop: asyncio.Event) -> None:
    """POST /control at `rate` commands per second from one client, counting the answers."""
    import aiohttp
    commands = [{"type": "status"}, {"type": "set_params", "temperature": 1.0, "when": "next"},
                {"type": "set_prompt", "prompt": 123}, {"type": "nonsense"}, "not json"]
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            started = time.monotonic()
            command = random.choice(commands)
            try:
                async with session.post(f"http://127.0.0.1:{port}/control", data=json.dumps(command),
                                        headers={"Authorization": f"Bearer {TOKEN}"}) as response:
                    await response.read()
                    answers[response.status] += 1
            except aiohttp.ClientError as err:
                answers[type(err).__name__] += 1
            await asyncio.sleep(max(0.0, 1.0 / rate - (time.monotonic() - started)))


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


async def measure(port, server: psutil.Process, counts, window, max_behind, sample_rate, flood_rate=0.0):
    import aiohttp
    url = f"ws://127.0.0.1:{port}/ws?codec=opus"
    connector = aiohttp.TCPConnector(limit=0)
    results = []
    async with aiohttp.ClientSession(connector=connector) as session:
        c0, t0 = cpu_seconds(server), time.monotonic()
        await asyncio.sleep(window)
        baseline = (cpu_seconds(server) - c0) / (time.monotonic() - t0)
        print(f"station alone (tiny model generating, encoders running): {baseline:.3f} CPU-s/s", flush=True)
        listeners, tasks = [], []
        answers: collections.Counter = collections.Counter()
        stop_flood = asyncio.Event()
        flooding = asyncio.ensure_future(flood(port, flood_rate, answers, stop_flood)) if flood_rate else None
        for n in counts:
            before = status(port)
            dropped_before, underruns_before = before["listeners_dropped"], before["underruns"]
            while len(listeners) < n:
                listener = Listener()
                listeners.append(listener)
                tasks.append(asyncio.ensure_future(listen(session, url, listener)))
                if len(listeners) % 50 == 0:
                    await asyncio.sleep(0.05)
            await asyncio.sleep(3.0)  # settle after the joins and their bursts
            c0, t0 = cpu_seconds(server), time.monotonic()
            bytes0 = sum(x.bytes for x in listeners)
            await asyncio.sleep(window)
            elapsed = time.monotonic() - t0
            cpu = (cpu_seconds(server) - c0) / elapsed
            rate = (sum(x.bytes for x in listeners) - bytes0) / elapsed / n
            newest = max(x.last_sample or 0 for x in listeners)
            behind = max((newest - (x.last_sample or 0)) / sample_rate for x in listeners)
            try:
                st = status(port)
            except OSError as err:  # the station's loop is saturated: not held
                print(f"{n:5d} listeners: /status did not answer ({err}) -> NOT held", flush=True)
                break
            dropped = st["listeners_dropped"] - dropped_before
            underruns = st["underruns"] - underruns_before
            failed = sum(1 for x in listeners if x.closed)
            held = (dropped == 0 and failed == 0 and behind <= max_behind and st["listeners_total"] >= n
                    and underruns == 0)
            results.append((n, cpu, baseline, behind, dropped, failed, held, rate))
            print(f"{n:5d} listeners: station CPU {cpu:.3f} s/s ({1000 * (cpu - baseline) / n:.3f} ms CPU "
                  f"per listener per s), worst listener {behind:.2f} s behind, {dropped} dropped, "
                  f"{failed} failed, {underruns} underruns, {rate / 1000:.1f} kB/s each -> "
                  f"{'held' if held else 'NOT held'}", flush=True)
            if flood_rate:
                print(f"       control flood so far: {sum(answers.values())} commands, answers {dict(answers)}",
                      flush=True)
            if not held:
                break
        stop_flood.set()
        if flooding is not None:
            await flooding
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--counts", default="100,250,500,1000")
    p.add_argument("--window", type=float, default=10.0,
                   help="seconds measured per step (one 10 s stride each, so generation averages out)")
    p.add_argument("--flood", type=float, default=0.0, metavar="RATE",
                   help="control commands per second sent by another client meanwhile (default: none)")
    p.add_argument("--max-behind", type=float, default=1.0,
                   help="a listener further behind than this (s) counts as not keeping up")
    args = p.parse_args()
    raise_fd_limit()
    proc, port, st = start_station("--max-listeners", "0", "--max-listeners-per-ip", "0", "--control-token", TOKEN)
    try:
        print(f"bench: {os.cpu_count()} cores; station = server.py --model tiny --no-play; "
              f"clients = one aiohttp process on loopback; Opus over WebSocket", flush=True)
        results = asyncio.run(measure(port, psutil.Process(proc.pid), [int(c) for c in args.counts.split(",")],
                                      args.window, args.max_behind, st["sample_rate"], args.flood))
        held = [r for r in results if r[6]]
        if held:
            n, cpu, baseline = held[-1][:3]
            print(f"largest count held: {n} listeners; CPU per listener {1000 * (cpu - baseline) / n:.3f} ms/s "
                  f"({100 * (cpu - baseline) / n:.4f} % of a core)")
        else:
            print("no listener count was held")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
