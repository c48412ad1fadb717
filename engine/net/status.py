"""One status snapshot for everyone: built by one writer (the network loop) once per period and
shared by every WebSocket listener, as the audio is: its cost does not grow with the listeners."""
from __future__ import annotations

import asyncio
import json
import typing as tp

from .broadcast import Broadcaster

#: How often WebSocket listeners get a `status` message.
STATUS_PERIOD_SECONDS = 2.0


class StatusPublisher:
    """`/status` and the WebSocket `status` messages, from `station.status()` plus the network
    figures. Runs on the network loop: `run()` publishes one message every `period_seconds` for
    all WebSocket listeners; `snapshot()` answers one `/status` request, fresh."""

    def __init__(self, station, broadcaster: Broadcaster, period_seconds: float = STATUS_PERIOD_SECONDS):
        self.station = station
        self.broadcaster = broadcaster
        self.period_seconds = period_seconds
        self.builds = 0  # snapshots built so far
        self._message = ""  # the last published `status` message, serialised once
        self._published: tp.Optional[asyncio.Event] = None

    def snapshot(self) -> dict:
        """The station's and the network's figures now."""
        b = self.broadcaster
        snapshot = self.station.status()
        snapshot.update(listeners=b.counts(), listeners_total=len(b.listeners),
                        listeners_dropped=b.dropped_total, network_tasks=len(asyncio.all_tasks()))
        self.builds += 1
        return snapshot

    async def run(self) -> None:
        """Publish a snapshot every period until cancelled."""
        self._published = self._published or asyncio.Event()
        while True:
            await asyncio.sleep(self.period_seconds)
            self._message = json.dumps({"type": "status", **self.snapshot()})
            published, self._published = self._published, asyncio.Event()
            published.set()

    async def next_message(self) -> str:
        """Wait for the next published `status` message (the same string for every listener)."""
        self._published = self._published or asyncio.Event()
        await self._published.wait()
        return self._message


def health(status: dict, give_up_after_seconds: float) -> tp.Tuple[int, dict]:
    """`/healthz` for supervisors and proxies: 200 while the station plays (or pre-fills), 503
    once generation has failed for good or has been failing for the whole retry window."""
    failing = status.get("failing_seconds", 0.0)
    if status.get("failed"):
        return 503, {"ok": False, "state": "failed", "failing_seconds": failing}
    if failing >= give_up_after_seconds:
        return 503, {"ok": False, "state": "failing", "failing_seconds": failing}
    state = "playing" if status.get("first_sound_seconds") is not None else "starting"
    return 200, {"ok": True, "state": state, "failing_seconds": failing}
