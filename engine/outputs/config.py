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

    def validate(self) -> None:
        """Raise RecordPathError for a recording that could not be written."""
        if self.record_path:
            check_record_path(self.record_path)
