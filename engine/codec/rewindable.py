"""A stitcher that can go back: the codes of the last strides and snapshots of the decoder (and
of the loudness leveler after it), so that the codes from any recent frame on can be replaced (a
cut-in) and the stream stays one one-shot decode of the codes actually played.

Shapes: codes [1, K, frames]; PCM [samples, channels].
"""
from __future__ import annotations

import typing as tp

import numpy as np
import torch

from .loudness import LoudnessLeveler
from .stitcher import StitchingDecoder


class RewindableDecoder:
    """Pushes codes through `stitcher` in chunks of `chunk_frames`, snapshotting it after each,
    and keeps the last `keep_frames` frames of codes. `rewind(frame)` returns to the stream as it
    was after `frame` frames (codes from `frame` on forgotten)."""

    def __init__(self, stitcher: StitchingDecoder, keep_frames: int, chunk_frames: int = 50,
                 leveler: tp.Optional[LoudnessLeveler] = None):
        self.stitcher = stitcher
        self.leveler = leveler  # applied to everything decoded, and rewound with it
        self.keep_frames = int(keep_frames)
        self.chunk_frames = max(1, int(chunk_frames))
        self.reset()

    def reset(self) -> None:
        self.stitcher.reset()
        self._codes: tp.Optional[torch.Tensor] = None  # [1, K, n] from frame `_codes_start`
        self._codes_start = 0
        self._snapshots: tp.List[tp.Tuple[int, dict]] = [(0, self._snapshot())]

    def _snapshot(self) -> dict:
        return {"stitcher": self.stitcher.snapshot(),
                "leveler": None if self.leveler is None else self.leveler.snapshot()}

    def _restore(self, state: dict) -> None:
        self.stitcher.restore(state["stitcher"])
        if self.leveler is not None:
            self.leveler.restore(state["leveler"])

    def _level(self, pcm: np.ndarray) -> np.ndarray:
        return pcm if self.leveler is None else self.leveler.process(pcm)

    @property
    def frames_pushed(self) -> int:
        return self.stitcher.frames_pushed

    @property
    def emitted_samples(self) -> int:
        return self.stitcher.emitted_samples

    def push(self, codes: torch.Tensor) -> np.ndarray:
        """Append codes [1, K, frames]; return the PCM [samples, channels] now final."""
        codes = codes.to(self.stitcher.device)
        pieces = []
        for at in range(0, codes.shape[-1], self.chunk_frames):
            pieces.append(self._level(self.stitcher.push(codes[..., at:at + self.chunk_frames])))
            self._snapshots.append((self.stitcher.frames_pushed, self._snapshot()))
        self._codes = codes if self._codes is None else torch.cat([self._codes, codes], dim=-1)
        self._trim()
        return np.concatenate(pieces) if pieces else np.zeros((0, self.stitcher.channels), np.float32)

    def flush(self) -> np.ndarray:
        return self._level(self.stitcher.flush())

    def codes(self, start: int, end: int) -> torch.Tensor:
        """The kept codes of frames [start, end) as [1, K, end - start]."""
        if self._codes is None or start < self._codes_start or end > self.frames_pushed:
            raise ValueError(f"frames [{start}, {end}) are not kept "
                             f"([{self._codes_start}, {self.frames_pushed}) are)")
        return self._codes[..., start - self._codes_start:end - self._codes_start]

    @property
    def earliest_rewind_frame(self) -> int:
        return self._snapshots[0][0]

    def rewind(self, frame: int) -> np.ndarray:
        """Return to the stream after `frame` frames: the decoder restored from the latest
        snapshot at or before it and the kept codes up to `frame` pushed again. Returns the PCM
        that re-push emitted (equal to what was emitted the first time, which the caller
        already has); afterwards `emitted_samples` is where the replaced stream starts."""
        if not self.earliest_rewind_frame <= frame <= self.frames_pushed:
            raise ValueError(f"cannot rewind to frame {frame}: frames "
                             f"[{self.earliest_rewind_frame}, {self.frames_pushed}] can be")
        at, state = [(f, s) for f, s in self._snapshots if f <= frame][-1]
        replay = self.codes(at, frame)
        self._restore(state)
        self._snapshots = [(f, s) for f, s in self._snapshots if f <= at]
        self._codes = self._codes[..., :frame - self._codes_start]
        pcm = (self._level(self.stitcher.push(replay)) if replay.shape[-1]
               else np.zeros((0, self.stitcher.channels), np.float32))
        self._snapshots.append((frame, self._snapshot()))
        return pcm

    def _trim(self) -> None:
        oldest = max(0, self.frames_pushed - self.keep_frames)
        while len(self._snapshots) > 1 and self._snapshots[1][0] <= oldest:
            self._snapshots.pop(0)
        cut = min(oldest, self._snapshots[0][0]) - self._codes_start
        if cut > 0 and self._codes is not None:
            self._codes = self._codes[..., cut:]
            self._codes_start += cut
