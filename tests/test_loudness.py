"""--loudness: a slow gain to the target (BS.1770, pyloudnorm) and a true-peak limiter."""
import numpy as np
import pyloudnorm
from scipy.signal import resample_poly

from engine.codec.loudness import LoudnessLeveler

SR = 32000


def noise(seconds, level, seed):
    return (np.random.default_rng(seed).standard_normal((int(seconds * SR), 1)) * level).astype(np.float32)


def run(leveler, audio, chunk_seconds=1.0):
    step = int(chunk_seconds * SR)
    return np.concatenate([leveler.process(audio[i:i + step]) for i in range(0, audio.shape[0], step)])


def test_strides_12_db_apart_end_within_1_lu_of_the_target_with_no_fast_gain_step():
    leveler = LoudnessLeveler(SR, 1, target_lufs=-16.0)
    quiet, loud = noise(12, 0.02, 1), noise(12, 0.08, 2)  # 12 dB apart
    meter = pyloudnorm.Meter(SR)
    gains = []
    out = []
    for section in (quiet, loud, quiet):
        for i in range(0, section.shape[0], SR // 2):
            chunk = section[i:i + SR // 2]
            out.append(leveler.process(chunk))
            gains.append(leveler.gain_db)
        assert abs(meter.integrated_loudness(np.concatenate(out)[-3 * SR:].astype(np.float64)) + 16.0) <= 1.0
    steps = np.abs(np.diff(gains)) / 0.5  # dB per second between half-second chunks
    assert steps.max() <= 3.0 + 1e-9 and steps.max() > 2.0  # it moved, never faster than 3 dB/s


def test_no_sample_and_no_true_peak_above_the_ceiling():
    leveler = LoudnessLeveler(SR, 2, target_lufs=-10.0)
    t = np.arange(6 * SR) / SR
    music = 0.05 * np.sin(2 * np.pi * 440 * t)
    music[3 * SR:3 * SR + 800] += 0.95 * np.sin(2 * np.pi * 7000 * t[:800])  # a sudden loud burst
    stereo = np.stack([music, -music], axis=1).astype(np.float32)
    out = run(leveler, stereo, chunk_seconds=0.25)
    ceiling = 10 ** (-1.0 / 20)
    assert np.abs(out).max() <= ceiling + 1e-6
    true_peak = np.abs(resample_poly(out.astype(np.float64), 4, 1, axis=0)).max()
    assert 20 * np.log10(true_peak) <= -1.0 + 0.2
    assert np.abs(out[: 3 * SR - 400]).max() > 0.1  # the music itself was not turned down with it


def test_a_snapshot_restores_the_same_processing():
    leveler = LoudnessLeveler(SR, 1)
    a, b = noise(4, 0.03, 3), noise(2, 0.1, 4)
    leveler.process(a)
    state = leveler.snapshot()
    first = leveler.process(b)
    leveler.process(noise(3, 0.5, 5))
    leveler.restore(state)
    assert np.array_equal(leveler.process(b), first)
