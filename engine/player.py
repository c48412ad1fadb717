"""The playhead: turns the stream ring into the played program, block by block, in real time.

`Player.render(out)` is what the sound-device callback (or the paced clock) calls. It copies from
the stream ring at the playhead into `out`, never blocks, takes no lock, allocates nothing big, and
logs nothing. When the playhead reaches audio not yet written (an underrun), it fades the last
samples out, plays silence, and fades back in once `resume_samples` are buffered again: no click.
The stream time does not advance during an underrun, so no generated music is skipped.

Everything rendered (music and underrun silence alike) is appended to the program ring, which the
stdout and file sinks read: they get exactly what was played.
"""
from __future__ import annotations

import threading
import time
import typing as tp

import numpy as np

from .ring import PcmRing


class Player:
    """Reads `stream` at `playhead` (absolute stream sample index) and writes `program`."""

    def __init__(self, stream: PcmRing, program: PcmRing, sample_rate: int, *,
                 end_sample: tp.Optional[int] = None, fade_seconds: float = 0.005,
                 resume_seconds: float = 0.5):
        self.stream = stream
        self.program = program
        self.sample_rate = sample_rate
        self.end_sample = end_sample
        self.fade_samples = max(1, int(fade_seconds * sample_rate))
        self.resume_samples = int(resume_seconds * sample_rate)
        self.playhead = 0
        self.played_samples = 0  # program samples written, underrun silence included
        self.underruns = 0
        self.underrun_samples = 0
        self.starved = False
        self._fade_in_pending = False
        self.finished = False
        self._fade_out = np.linspace(1.0, 0.0, self.fade_samples, dtype=np.float32)[:, None]
        self._fade_in = self._fade_out[::-1].copy()

    def _remaining(self) -> int:
        """Stream samples left before the end (a large number when endless)."""
        return (1 << 62) if self.end_sample is None else self.end_sample - self.playhead

    def render(self, out: np.ndarray) -> bool:
        """Fill out [n, channels] with the next n samples of the program. Returns True when the
        stream has ended (the rest of `out` is silence and nothing more will be played)."""
        n = out.shape[0]
        remaining = self._remaining()
        if remaining <= 0 or self.finished:
            out[:] = 0.0
            self._finish()
            return True
        available = self.stream.written_until - self.playhead
        stream_ends_in_view = available >= remaining
        if self.starved:
            if available >= min(self.resume_samples, remaining):
                self.starved = False
                self._fade_in_pending = True
            else:
                out[:] = 0.0
                self._publish(out)
                self.underrun_samples += n
                return False
        take = min(n, remaining)
        if available >= take + self.fade_samples or stream_ends_in_view:
            self._copy(out[:take])
            if self._fade_in_pending:
                k = min(take, self.fade_samples)
                out[:k] *= self._fade_in[:k]
                self._fade_in_pending = False
            out[take:] = 0.0
            self._publish(out[:take])
            if take == remaining:
                self._finish()
                return True
            return False
        # Underrun: play what is there, fading out over its tail, then silence.
        take = max(0, min(n, available))
        self._copy(out[:take])
        k = min(take, self.fade_samples)
        if k:
            out[take - k:take] *= self._fade_out[self.fade_samples - k:]
        out[take:] = 0.0
        self._publish(out)
        self.underruns += 1
        self.underrun_samples += n - take
        self.starved = True
        return False

    def _copy(self, out: np.ndarray) -> None:
        if not self.stream.read_into(self.playhead, out):
            out[:] = 0.0  # cannot happen while the producer respects buffer-ahead; stay silent
        self.playhead += out.shape[0]

    def _publish(self, frames: np.ndarray) -> None:
        self.program.write(frames)
        self.played_samples += frames.shape[0]

    def _finish(self) -> None:
        self.finished = True
        self.program.closed = True


class PacedClock(threading.Thread):
    """Drives a Player at real-time pace when no sound device plays (`--no-play`)."""

    def __init__(self, player: Player, block_samples: int = 480):
        super().__init__(name="paced-clock", daemon=True)
        self.player = player
        self.block_samples = block_samples
        self._stop_event = threading.Event()
        self._block = np.zeros((block_samples, player.stream.channels), dtype=np.float32)

    def run(self) -> None:
        sample_rate = self.player.sample_rate
        started = time.monotonic()
        rendered = 0
        while not self._stop_event.is_set():
            due = int((time.monotonic() - started) * sample_rate)
            while rendered + self.block_samples <= due:
                if self.player.render(self._block):
                    return
                rendered += self.block_samples
            self._stop_event.wait(self.block_samples / sample_rate)

    def stop(self) -> None:
        self._stop_event.set()
