"""`--loudness LUFS`: a slow gain toward a loudness target and a true-peak limiter, applied once
to the decoded PCM before the stream ring, so that every output and the recording get the same
audio.

- Loudness is measured ITU-R BS.1770 style (pyloudnorm: K-weighting, gated 400 ms blocks) over
  the last `window_seconds` of the audio before gain; the gain moves toward (target − loudness)
  at most `max_slew_db_per_second`, sample by sample, never in a step.
- The true peak (4× oversampled) is held at `ceiling_dbtp`: the gain drops ahead of a peak (a
  look-ahead within the chunk) and recovers over `release_seconds`.
- A cut-in rewinds it with the decoder (`snapshot` / `restore`, then the re-decoded audio is run
  through again), so the audio after a cut continues the same gain curve.

Shapes: PCM [samples, channels] float32.
"""
from __future__ import annotations

import collections
import typing as tp

import numpy as np

#: Oversampling for the true-peak estimate (BS.1770 asks for at least 4× at 48 kHz).
TRUE_PEAK_OVERSAMPLING = 4


class LoudnessLeveler:
    def __init__(self, sample_rate: int, channels: int, target_lufs: float = -16.0,
                 ceiling_dbtp: float = -1.0, max_slew_db_per_second: float = 3.0,
                 window_seconds: float = 3.0, lookahead_seconds: float = 0.005,
                 release_seconds: float = 0.1, max_gain_db: float = 20.0):
        import pyloudnorm
        self.sample_rate = sample_rate
        self.channels = channels
        self.target_lufs = target_lufs
        self.ceiling = 10 ** (ceiling_dbtp / 20)
        self.max_slew_db_per_sample = max_slew_db_per_second / sample_rate
        self.window_samples = int(window_seconds * sample_rate)
        self.lookahead_samples = max(1, int(lookahead_seconds * sample_rate))
        self.release = float(np.exp(-1.0 / (release_seconds * sample_rate)))
        self.max_gain_db = max_gain_db
        self._meter = pyloudnorm.Meter(sample_rate)
        self.gain_db = 0.0  # the loudness gain at the next sample
        self._limit = 1.0  # the limiter's gain at the last sample
        self._history: tp.Deque[np.ndarray] = collections.deque()  # the last window of audio before gain
        self._history_samples = 0

    # -- state, for cut-ins -----------------------------------------------------------------------
    def snapshot(self) -> dict:
        return {"gain_db": self.gain_db, "limit": self._limit, "history": list(self._history),
                "history_samples": self._history_samples}

    def restore(self, state: dict) -> None:
        self.gain_db, self._limit = state["gain_db"], state["limit"]
        self._history = collections.deque(state["history"])
        self._history_samples = state["history_samples"]

    # -- processing ---------------------------------------------------------------------------------
    def loudness(self) -> float:
        """The loudness (LUFS) of the last window before gain (−inf when silent or too short)."""
        if self._history_samples < int(0.4 * self.sample_rate):
            return float("-inf")
        audio = np.concatenate(list(self._history))[-self.window_samples:]
        return float(self._meter.integrated_loudness(audio.astype(np.float64)))

    def process(self, pcm: np.ndarray) -> np.ndarray:
        """pcm [n, channels] → levelled and limited [n, channels] (same length, no delay)."""
        n = pcm.shape[0]
        if n == 0:
            return pcm
        self._remember(pcm)
        measured = self.loudness()
        target_db = self.gain_db if not np.isfinite(measured) else float(
            np.clip(self.target_lufs - measured, -self.max_gain_db, self.max_gain_db))
        steps = np.arange(1, n + 1, dtype=np.float64) * self.max_slew_db_per_sample
        gain_db = self.gain_db + np.clip(target_db - self.gain_db, -steps, steps)
        self.gain_db = float(gain_db[-1])
        out = pcm * (10 ** (gain_db / 20)).astype(np.float32)[:, None]
        return (out * self._limiter_gain(out)[:, None]).astype(np.float32)

    def _remember(self, pcm: np.ndarray) -> None:
        self._history.append(pcm.copy())
        self._history_samples += pcm.shape[0]
        while self._history_samples - self._history[0].shape[0] >= self.window_samples:
            self._history_samples -= self._history.popleft().shape[0]

    def _limiter_gain(self, audio: np.ndarray) -> np.ndarray:
        """Per-sample gain [n] that keeps the true peak at or under the ceiling: the gain each
        sample needs (from the 4× oversampled peak), applied `lookahead` early (a minimum over
        the samples ahead), released exponentially."""
        from scipy.ndimage import minimum_filter1d
        from scipy.signal import resample_poly
        k = TRUE_PEAK_OVERSAMPLING
        peaks = np.abs(resample_poly(audio, k, 1, axis=0)).max(axis=1)
        peaks = peaks[:audio.shape[0] * k].reshape(-1, k).max(axis=1)
        peaks = np.maximum(peaks, np.abs(audio).max(axis=1))
        need = np.minimum(1.0, self.ceiling / np.maximum(peaks, 1e-12))
        ahead = minimum_filter1d(need, size=2 * self.lookahead_samples + 1, origin=-self.lookahead_samples,
                                 mode="nearest")
        gains = np.empty_like(ahead)
        level = self._limit
        for i, wanted in enumerate(ahead):  # attack at once, release slowly
            level = wanted if wanted < level else min(wanted, 1.0 - (1.0 - level) * self.release)
            gains[i] = level
        self._limit = level
        return gains.astype(np.float32)
