"""Log lines of one station among several: prefixed with its name (`[lofi] stride 3: ...`)."""
from __future__ import annotations

import logging


class StationLog(logging.LoggerAdapter):
    """`logger`'s lines, prefixed with `[NAME] ` when the station has a name (a lineup)."""

    def __init__(self, logger: logging.Logger, station: str = ""):
        super().__init__(logger, {"station": station})

    def process(self, msg, kwargs):
        station = self.extra["station"]
        return (f"[{station}] {msg}" if station else msg), kwargs
