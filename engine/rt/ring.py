"""A fixed-capacity ring of PCM frames addressed by absolute sample index.

One writer, any number of readers, no locks: the writer first claims the span it is about to
overwrite (`_claimed_until`), copies, then publishes `written_until`. A reader copies what it
wants and then checks that the writer's claim has not reached it meanwhile; if it has, the reader
was too slow and is moved to the live point (counted), never the other way round: the writer
never waits on a reader. Frames are stored interleaved, [capacity, channels], so the channels of
one sample can never slip apart.
"""
from __future__ import annotations

import typing as tp

import numpy as np


class PcmRing:
    """Frames [capacity_samples, channels] float32; sample `i` lives at `i % capacity_samples`."""

    def __init__(self, capacity_samples: int, channels: int):
        if capacity_samples <= 0:
            raise ValueError("ring capacity must be positive")
        self.capacity_samples = int(capacity_samples)
        self.channels = int(channels)
        self._frames = np.zeros((self.capacity_samples, self.channels), dtype=np.float32)
        self.written_until = 0  # samples [oldest_kept, written_until) are readable
        self._claimed_until = 0  # the writer may be overwriting up to here
        self.closed = False  # the writer will write no more
        self.readers: tp.List["RingReader"] = []  # every cursor opened on this ring (status reads them)

    @property
    def reader_overruns(self) -> int:
        """How many times a reader of this ring fell behind and was moved to the live point."""
        return sum(reader.overruns for reader in list(self.readers))

    @property
    def oldest_kept(self) -> int:
        """The oldest absolute sample index that is still valid to read."""
        return max(0, self._claimed_until - self.capacity_samples)

    def write(self, frames: np.ndarray) -> None:
        """Append frames [n, channels] (n ≤ capacity) at `written_until`. Never blocks."""
        frames = np.asarray(frames, dtype=np.float32).reshape(-1, self.channels)
        n = frames.shape[0]
        if n > self.capacity_samples:
            raise ValueError(f"write of {n} samples exceeds the ring's {self.capacity_samples}")
        start = self.written_until
        self._claimed_until = max(self._claimed_until, start + n)  # never back: see take_back
        self._copy_in(start, frames)
        self.written_until = start + n

    def take_back(self, to_sample: int) -> None:
        """The writer forgets its samples from `to_sample` on; the next write starts there (a
        cut-in replaces buffered audio). Only for samples no reader has reached: the caller
        keeps `to_sample` ahead of every reader's cursor (the player's playhead plus what one
        render reads). The claim stays where it was, so `oldest_kept` never moves back over
        slots already overwritten."""
        if not self.oldest_kept <= to_sample <= self.written_until:
            raise ValueError(f"cannot take back to sample {to_sample}: the ring holds "
                             f"[{self.oldest_kept}, {self.written_until})")
        self.written_until = int(to_sample)

    def _copy_in(self, start: int, frames: np.ndarray) -> None:
        at = start % self.capacity_samples
        first = min(frames.shape[0], self.capacity_samples - at)
        self._frames[at:at + first] = frames[:first]
        if first < frames.shape[0]:
            self._frames[:frames.shape[0] - first] = frames[first:]

    def read_into(self, start: int, out: np.ndarray) -> bool:
        """Copy samples [start, start + len(out)) into out [n, channels].

        The caller makes sure the span is below `written_until`. Returns False when part of the
        span was overwritten before or during the copy (the reader fell behind)."""
        if start < self.oldest_kept:
            return False
        self._copy_out(start, out)
        return start >= self.oldest_kept  # the writer's claim did not reach the span meanwhile

    def _copy_out(self, start: int, out: np.ndarray) -> None:
        n = out.shape[0]
        at = start % self.capacity_samples
        first = min(n, self.capacity_samples - at)
        out[:first] = self._frames[at:at + first]
        if first < n:
            out[first:] = self._frames[:n - first]


class RingReader:
    """A cursor into a PcmRing. A reader that falls behind the oldest kept sample jumps to the
    live point; `overruns` counts the jumps and `skipped_samples` what was lost."""

    def __init__(self, ring: PcmRing, start: tp.Optional[int] = None):
        self.ring = ring
        self.cursor = ring.written_until if start is None else int(start)
        self.overruns = 0  # written by the reader's own thread only
        self.skipped_samples = 0
        ring.readers.append(self)

    def available(self) -> int:
        return max(0, self.ring.written_until - self.cursor)

    def read(self, max_samples: int) -> np.ndarray:
        """Return a copy of up to `max_samples` frames [n, channels] from the cursor (n may be 0)."""
        while True:
            if self.cursor < self.ring.oldest_kept:
                self._jump_to_live()
            n = min(max_samples, self.available())
            out = np.empty((n, self.ring.channels), dtype=np.float32)
            if n == 0 or self.ring.read_into(self.cursor, out):
                self.cursor += n
                return out

    def _jump_to_live(self) -> None:
        live = self.ring.written_until
        self.overruns += 1
        self.skipped_samples += live - self.cursor
        self.cursor = live
