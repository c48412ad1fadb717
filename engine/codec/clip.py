"""`--from-audio FILE`: a clip read, resampled to the model's rate and channels, and encoded to
tokens once, so that the radio continues that music (the seed notebook's continuation, done
once instead of every cycle).

Shapes: PCM [samples, channels] float32; codes [1, K, frames].
"""
from __future__ import annotations

import dataclasses
import logging
import typing as tp

import numpy as np
import torch

log = logging.getLogger(__name__)

#: A clip shorter than this gives the model too little to continue.
MIN_CLIP_SECONDS = 1.0
#: RMS below this (about −80 dBFS) is silence.
SILENCE_RMS = 1e-4


class ClipError(ValueError):
    """The clip cannot be used; the message says why and what to do."""


@dataclasses.dataclass
class Clip:
    codes: torch.Tensor  # [1, K, frames]
    seconds: float  # what was kept (after trimming to the context)


def read_clip(path: str, sample_rate: tp.Optional[int], channels: tp.Optional[int],
              trim_start_seconds: float = 0.0, trim_end_seconds: tp.Optional[float] = None,
              flag: str = "--from-audio") -> np.ndarray:
    """The clip [samples, channels] at `sample_rate` with `channels` (None: as in the file: a
    check before the model is loaded), cut to [trim_start, trim_end) seconds of the file. wav,
    flac, ogg and mp3 through libsndfile; other formats through PyAV (ffmpeg). Errors name the
    clip as `flag` FILE."""
    where = f"{flag} {path}"
    try:
        audio, rate = _decode(path)
    except Exception as err:  # noqa: BLE001 - any decoder failure is one clear line
        raise ClipError(f"{where}: cannot read it as audio ({type(err).__name__}: "
                        f"{str(err).splitlines()[0][:160] if str(err) else 'unknown'}); use wav, flac, ogg or mp3") from err
    start = int(round(trim_start_seconds * rate))
    end = audio.shape[0] if trim_end_seconds is None else min(int(round(trim_end_seconds * rate)), audio.shape[0])
    if trim_start_seconds < 0 or start >= end:
        raise ClipError(f"{where}: --trim-start {trim_start_seconds:g} s and --trim-end "
                        f"{'(none)' if trim_end_seconds is None else f'{trim_end_seconds:g} s'} leave nothing "
                        f"of the clip's {audio.shape[0] / rate:.1f} s")
    audio = audio[start:end]
    if audio.shape[0] < MIN_CLIP_SECONDS * rate:
        raise ClipError(f"{where}: {audio.shape[0] / rate:.2f} s is too short; give at least "
                        f"{MIN_CLIP_SECONDS:g} s of music")
    if float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))) < SILENCE_RMS:
        raise ClipError(f"{where}: the clip is silent; give a clip of music")
    if sample_rate is None or channels is None:
        return audio
    return _to_channels(_resample(audio, rate, sample_rate), channels)


def _decode(path: str) -> tp.Tuple[np.ndarray, int]:
    import soundfile
    try:
        audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
        return audio, int(rate)
    except (soundfile.LibsndfileError, RuntimeError, TypeError):
        import av  # formats libsndfile does not read (m4a, opus in webm, …)
        with av.open(path) as container:
            stream = container.streams.audio[0]
            frames = [frame.to_ndarray() for frame in container.decode(stream)]
            rate = stream.codec_context.sample_rate
            layout_channels = stream.codec_context.channels
        data = np.concatenate(frames, axis=-1)
        if data.shape[0] == layout_channels:  # planar [channels, n]
            data = data.T
        else:  # packed [1, n × channels]
            data = data.reshape(-1, layout_channels)
        if np.issubdtype(data.dtype, np.integer):
            data = data / float(np.iinfo(data.dtype).max)
        return data.astype(np.float32), int(rate)


def _resample(audio: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    if rate == target_rate:
        return audio
    import soxr
    return soxr.resample(audio, rate, target_rate, quality="HQ").astype(np.float32)


def _to_channels(audio: np.ndarray, channels: int) -> np.ndarray:
    if audio.shape[1] == channels:
        return audio
    mono = audio.mean(axis=1, keepdims=True)
    return np.repeat(mono, channels, axis=1).astype(np.float32)


@torch.inference_mode()
def encode_clip(compression_model, audio: np.ndarray, keep_seconds: float, frame_rate: float) -> Clip:
    """Tokens of the clip's last `keep_seconds` (the token context): codes [1, K, frames]."""
    sample_rate = int(compression_model.sample_rate)
    keep = int(round(keep_seconds * frame_rate)) * int(round(sample_rate / frame_rate))
    if audio.shape[0] > keep:
        log.info("from-audio: the clip is %.1f s; its last %.1f s (the token context) are kept",
                 audio.shape[0] / sample_rate, keep / sample_rate)
        audio = audio[-keep:]
    device = next(compression_model.parameters()).device
    wav = torch.from_numpy(np.ascontiguousarray(audio.T)).unsqueeze(0).to(device)  # [1, channels, samples]
    codes, _scale = compression_model.encode(wav)
    return Clip(codes=codes, seconds=audio.shape[0] / sample_rate)
