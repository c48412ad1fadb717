"""`--record FILE`: writes exactly what was played to a .wav or .flac file, tagged with how it
was made (`tags`: title, comment, software, date: libsndfile's string fields)."""
from __future__ import annotations

import os
import shutil
import typing as tp

import numpy as np
import soundfile

from ..rt.ring import PcmRing
from .base import RingSink

#: File extension → libsndfile (format, subtype). WAV keeps the float samples bit-exact.
RECORD_FORMATS = {".wav": ("WAV", "FLOAT"), ".flac": ("FLAC", "PCM_24")}


class RecordPathError(ValueError):
    """The record path cannot be written; the message says why."""


def check_record_path(path: str) -> None:
    """Refuse, before anything is loaded, a path that could not be recorded to."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in RECORD_FORMATS:
        raise RecordPathError(f"--record {path!r}: use a .wav or .flac file name")
    if os.path.isdir(path):
        raise RecordPathError(f"--record {path!r} is a directory; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise RecordPathError(f"--record {path!r}: the folder {folder!r} does not exist")
    existed = os.path.exists(path)
    try:
        with open(path, "ab"):
            pass
    except OSError as err:
        raise RecordPathError(f"--record {path!r}: not writable ({err.strerror})") from err
    if not existed:
        os.remove(path)


class FileRecorder(RingSink):
    """Appends played frames to a sound file; closing it (on stop, Ctrl-C or SIGTERM) finalises
    the header so the file is complete and valid."""

    name_for_logs = "record"

    def __init__(self, ring: PcmRing, path: str, sample_rate: int,
                 tags: tp.Optional[tp.Dict[str, str]] = None):
        check_record_path(path)
        super().__init__(ring)
        file_format, subtype = RECORD_FORMATS[os.path.splitext(path)[1].lower()]
        self.path = path
        self.file = soundfile.SoundFile(path, mode="w", samplerate=sample_rate,
                                        channels=ring.channels, format=file_format, subtype=subtype)
        for name, value in (tags or {}).items():  # Vorbis comments in FLAC, an INFO chunk in WAV
            setattr(self.file, name, value)

    def consume(self, frames: np.ndarray) -> None:
        self.file.write(frames)

    def explain(self, err: Exception) -> str:
        """libsndfile says "System error" for a full or removed disk: say what the disk says."""
        folder = os.path.dirname(os.path.abspath(self.path))
        try:
            free = f"{shutil.disk_usage(folder).free / 1e6:.0f} MB free there"
        except OSError as disk:
            free = f"its folder cannot be reached: {disk.strerror}"
        return (f"writing {self.path} failed ({err}; {free}); the file is closed and holds the first "
                f"{self.samples_written / self.file.samplerate:.1f} s")

    def finish(self) -> None:
        self.file.close()
