"""`--record FILE` also writes `FILE.json`: how the recording was made (model, seed, settings)
and every prompt or parameter change at the second of the recording where it is heard, so a
listener can find the minute they liked and how it was made. Rewritten atomically after each
change (temporary file, then rename): it is always complete and valid."""
from __future__ import annotations

import json
import os
import threading
import typing as tp


class RecordingLog:
    def __init__(self, recording_path: str, about: dict):
        self.path = recording_path + ".json"
        self._document = dict(about, changes=[])
        self._lock = threading.Lock()
        self._write()

    def add(self, entry: dict) -> None:
        with self._lock:
            self._document["changes"].append(entry)
            self._write()

    def _write(self) -> None:
        temporary = self.path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as f:
            json.dump(self._document, f, ensure_ascii=False, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, self.path)

    @property
    def changes(self) -> tp.List[dict]:
        with self._lock:
            return list(self._document["changes"])
