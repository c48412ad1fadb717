"""--from-audio: a clip's tokens are the first context; --play-intro plays it and joins seam-free."""
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch

from engine.codec.clip import read_clip
from engine.station.config import ModelConfig, StationConfig
from engine.station.station import Station
from netutil import ROOT
from test_stitcher import SEAM_SNR_DB, one_shot, snr_db

SR = 32000


def write_clip(tmp_path, seconds=3.0, rate=44100, channels=2, name="clip.wav", level=0.3):
    t = np.arange(int(seconds * rate)) / rate
    tone = level * np.sin(2 * np.pi * (220 + 200 * t) * t)
    audio = np.stack([tone, 0.5 * tone][:channels], axis=1).astype(np.float32)
    path = str(tmp_path / name)
    soundfile.write(path, audio, rate)
    return path


def test_the_first_context_is_the_clips_last_context_seconds_of_tokens(tiny_model, tmp_path):
    path = write_clip(tmp_path, seconds=3.0)
    station = Station(StationConfig(from_audio_path=path, context_seconds=2, stride_seconds=1,
                                   seed=1), tiny_model, model_config=ModelConfig("tiny"))
    import soxr
    audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
    mono = soxr.resample(audio, rate, SR).mean(axis=1, keepdims=True)[-2 * SR:]
    with torch.inference_mode():
        expected, _ = tiny_model.compression_model.encode(torch.from_numpy(mono.T.copy()).unsqueeze(0))
    assert station.generator.context.shape == (1, 4, 100)
    assert torch.equal(station.generator.context, expected)


def test_play_intro_starts_with_the_clip_and_joins_seam_free(tiny_model, tmp_path):
    path = write_clip(tmp_path, seconds=1.5, rate=SR, channels=1)
    station = Station(StationConfig(from_audio_path=path, play_intro=True, context_seconds=2, loudness_lufs=None,
                                   stride_seconds=1, duration_seconds=3.0, seed=1), tiny_model, model_config=ModelConfig("tiny"))
    clip_codes = station.producer.intro_codes
    generated = []
    real = station.generator.next_stride
    station.generator.next_stride = lambda c, n, p=None: (generated.append(real(c, n, p)), generated[-1])[1]
    station.producer.run()
    assert station.producer.error is None and station.stream_ring.written_until == 3 * SR
    stream = np.empty((3 * SR, 1), np.float32)
    assert station.stream_ring.read_into(0, stream)
    tokens = torch.cat([clip_codes] + generated[1:], dim=-1)  # generated[0]: the warm-up
    reference = one_shot(tiny_model.compression_model, tokens)[:3 * SR]
    assert snr_db(stream, reference) >= SEAM_SNR_DB
    join = clip_codes.shape[-1] * 640
    assert snr_db(stream[join - SR // 5:join + SR // 5], reference[join - SR // 5:join + SR // 5]) >= SEAM_SNR_DB
    intro = one_shot(tiny_model.compression_model, clip_codes)
    assert snr_db(stream[:join - 6 * 640], intro[:join - 6 * 640]) >= SEAM_SNR_DB  # the clip itself


def test_a_long_clip_is_trimmed_to_the_context_and_trim_flags_cut_it(tmp_path):
    path = write_clip(tmp_path, seconds=4.0, rate=SR, channels=1)
    cut = read_clip(path, SR, 1, trim_start_seconds=1.0, trim_end_seconds=3.5)
    assert cut.shape == (int(2.5 * SR), 1)


@pytest.mark.parametrize("make, message", [
    (lambda p: (p.write_text("not audio at all"), str(p))[1], "cannot read it as audio"),
    (lambda p: write_clip(p.parent, level=0.0, name="silent.wav"), "the clip is silent"),
    (lambda p: write_clip(p.parent, seconds=0.5, name="short.wav"), "too short"),
    (lambda p: write_clip(p.parent, seconds=2.0, name="trim.wav") + "|--trim-start|5", "leave nothing"),
])
def test_unusable_clips_exit_2_with_a_clear_line(tmp_path, make, message):
    path, *extra = make(tmp_path / "clip.wav").split("|")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "server.py"), "--model", "tiny", "--no-play",
                             "--from-audio", path, *extra], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_an_mp3_clip_is_read(tmp_path):
    wav = write_clip(tmp_path, seconds=2.0, rate=44100, channels=2)
    mp3 = str(tmp_path / "clip.mp3")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", wav, mp3], check=True, timeout=60)
    audio = read_clip(mp3, SR, 1)
    assert abs(audio.shape[0] / SR - 2.0) < 0.1 and np.sqrt(np.mean(audio ** 2)) > 0.05
