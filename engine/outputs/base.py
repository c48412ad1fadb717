"""Readers of the program ring (what was played): each a thread with its own cursor."""
from __future__ import annotations

import logging
import threading

import numpy as np

from ..rt.ring import PcmRing, RingReader

log = logging.getLogger(__name__)


class RingSink(threading.Thread):
    """Reads everything played, in order, and hands it to `consume`. It runs until the ring is
    closed and drained, or `stop()`; a sink that fails is logged and stops alone: the station and
    the other sinks go on."""

    name_for_logs = "sink"

    def __init__(self, ring: PcmRing, block_samples: int = 4096, poll_seconds: float = 0.02):
        super().__init__(name=self.name_for_logs, daemon=True)
        self.reader = RingReader(ring, start=ring.written_until)
        self.block_samples = block_samples
        self.poll_seconds = poll_seconds
        self.samples_written = 0
        self.error: BaseException | None = None
        self._stop_event = threading.Event()

    def consume(self, frames: np.ndarray) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Called once, on this thread, after the last `consume`."""

    def explain(self, err: Exception) -> str:
        """What went wrong, for the log and /status."""
        return f"{type(err).__name__}: {err}"

    def stop(self) -> None:
        """Stop after writing what has been played so far."""
        self._stop_event.set()

    def health(self) -> dict:
        """For /status: writing, stopped or failed (with the error), and how much it has written."""
        state = "failed" if self.error is not None else "writing" if self.is_alive() else "stopped"
        return {"state": state, "error": None if self.error is None else str(self.error)[:200],
                "samples_written": self.samples_written}

    def run(self) -> None:
        try:
            self._drain_loop()
        except Exception as err:
            self.error = RuntimeError(self.explain(err))
            log.error("%s: stopped after %d samples: %s; the other outputs and the stream go on",
                      self.name_for_logs, self.samples_written, self.error)
        finally:
            try:
                self.finish()
            except Exception as err:
                self.error = self.error or err
                log.error("%s: could not finish cleanly: %s", self.name_for_logs, err)

    def _drain_loop(self) -> None:
        overruns = 0
        while True:
            stopping = self._stop_event.is_set() or self.reader.ring.closed
            frames = self.reader.read(self.block_samples)
            if self.reader.overruns != overruns:
                overruns = self.reader.overruns
                log.warning("%s: fell behind the live stream; skipped to the live point (%d times)",
                            self.name_for_logs, overruns)
            if frames.shape[0]:
                self.consume(frames)
                self.samples_written += frames.shape[0]
            elif stopping:
                return
            else:
                self._stop_event.wait(self.poll_seconds)
