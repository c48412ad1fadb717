"""The playhead: turns the stream ring into the played program, block by block, in real time.

`Player.render(out)` is what the sound-device callback (or the paced clock) calls. It copies from
the stream ring at the playhead into `out`, never blocks, takes no lock, allocates nothing big, and
logs nothing. When the playhead reaches audio not yet written (an underrun), it fades the last
samples out, plays silence, and fades back in once `resume_samples` are buffered again: no click.
The stream time does not advance during an underrun, so no generated music is skipped.

Everything rendered (music and underrun silence alike) is appended to the program ring, which the
outputs and the encoders read: they get exactly what was played. What calls `render` is a clock:
the sound device (device.py) or the system clock (clock.py).
"""
from __future__ import annotations

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
