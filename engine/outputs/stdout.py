"""`--stdout`: raw s16le PCM of what is played, at the model's rate and channel count."""
from __future__ import annotations

import typing as tp

import numpy as np

from ..rt.pcm import float_to_s16
from ..rt.ring import PcmRing
from .base import RingSink


class PcmPipeSink(RingSink):
    """Writes s16le frames to a binary stream (stdout by default). A closed pipe stops this sink
    only."""

    name_for_logs = "stdout"

    def __init__(self, ring: PcmRing, stream: tp.BinaryIO):
        super().__init__(ring)
        self.stream = stream

    def consume(self, frames: np.ndarray) -> None:
        try:
            self.stream.write(float_to_s16(frames).tobytes())
        except BrokenPipeError as err:
            raise RuntimeError("the reading end of stdout closed") from err

    def finish(self) -> None:
        try:
            self.stream.flush()
        except (BrokenPipeError, ValueError):
            pass
