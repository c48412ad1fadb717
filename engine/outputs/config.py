"""Where the played audio goes locally: the sound device, stdout, a recording."""
from __future__ import annotations

import dataclasses
import typing as tp

from .file import check_record_path


@dataclasses.dataclass
class OutputConfig:
    play: bool = True  # the local sound device is the clock (else the system clock paces)
    audio_device: tp.Optional[str] = None  # number or name; None: the system default
    stdout: bool = False  # raw s16le PCM of what is played
    record_path: tp.Optional[str] = None  # .wav or .flac of what is played
    # Testing aid (soak runs): the system clock plays this many times faster than real time.
    clock_speed: float = 1.0

    def validate(self) -> None:
        """Raise RecordPathError for a recording that could not be written, ValueError for a
        clock speed that cannot be honoured."""
        if self.record_path:
            check_record_path(self.record_path)
        if not 0 < self.clock_speed <= 1000:
            raise ClockSpeedError(f"--clock-speed must be above 0 and at most 1000 (got {self.clock_speed:g})")
        if self.clock_speed != 1.0 and self.play:
            raise ClockSpeedError("--clock-speed paces the system clock: add --no-play (a sound card plays "
                                  "at its own rate)")


class ClockSpeedError(ValueError):
    """--clock-speed cannot be honoured; the message says why."""
