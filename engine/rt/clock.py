"""The system clock as the station's clock: drives a Player at real-time pace when no sound
device plays (`--no-play`)."""
from __future__ import annotations

import threading
import time

import numpy as np

from .player import Player


class PacedClock(threading.Thread):
    """Drives a Player at real-time pace when no sound device plays (`--no-play`), or `speed`
    times faster (a testing aid: a soak run plays a day in an hour)."""

    def __init__(self, player: Player, block_samples: int = 480, speed: float = 1.0):
        super().__init__(name="paced-clock", daemon=True)
        self.player = player
        self.speed = float(speed)
        self.block_samples = block_samples
        self._stop_event = threading.Event()
        self._block = np.zeros((block_samples, player.stream.channels), dtype=np.float32)
        self.underflows = 0  # a paced clock has no device buffer to run dry (see DeviceOutput)

    def run(self) -> None:
        sample_rate = self.player.sample_rate
        started = time.monotonic()
        rendered = 0
        while not self._stop_event.is_set():
            due = int((time.monotonic() - started) * sample_rate * self.speed)
            while rendered + self.block_samples <= due:
                if self.player.render(self._block):
                    return
                rendered += self.block_samples
            self._stop_event.wait(max(0.002, self.block_samples / sample_rate / self.speed))

    def stop(self) -> None:
        self._stop_event.set()
