"""PCM sample format conversions."""
from __future__ import annotations

import numpy as np


def float_to_s16(frames: np.ndarray) -> np.ndarray:
    """float32 [n, channels] in [-1, 1] → int16 [n, channels] (clipped, rounded)."""
    return np.round(np.clip(frames, -1.0, 1.0) * 32767.0).astype(np.int16)
