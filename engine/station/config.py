"""The configuration records and their validation: the model the process plays from
(`ModelConfig`) and each station's settings (`StationConfig`: prompt, window, sampling,
buffering, outputs of generation)."""
from __future__ import annotations

import dataclasses
import os
import typing as tp

from ..lm.hardware import DTYPE_CHOICES, KV_CACHE_CHOICES
from .faults import FaultPlan, FaultSpecError

#: MusicGen checkpoints are trained on 30 s excerpts; no window may exceed this.
MUSICGEN_MAX_DURATION_SECONDS = 30.0
#: Longest text prompt accepted (characters); longer prompts are refused with an error.
MAX_PROMPT_CHARS = 2000
#: Upper bounds of the sampling settings (flags and control commands alike).
MAX_TEMPERATURE = 10.0
MAX_TOP_K = 2048  # MusicGen's codebook size
MAX_CFG = 30.0


class ConfigError(ValueError):
    """A setting is out of range; the message says which and what to do."""


#: How the sampling settings are named on the command line and in control commands.
FLAG_NAMES = {"temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p", "cfg": "--cfg"}
COMMAND_NAMES = {name: name for name in FLAG_NAMES}


def validate_sampling(temperature: float, top_k: int, top_p: float, cfg: float,
                      names: tp.Mapping[str, str] = FLAG_NAMES) -> None:
    """Raise ConfigError for sampling settings out of range, naming them as `names` does.
    temperature 0 is greedy; top_k 0 and top_p 0 disable those filters."""
    if not 0 <= temperature <= MAX_TEMPERATURE:
        raise ConfigError(f"{names['temperature']} must be between 0 and {MAX_TEMPERATURE:g} (got {temperature:g})")
    if not 0 <= top_k <= MAX_TOP_K:
        raise ConfigError(f"{names['top_k']} must be between 0 and {MAX_TOP_K} (got {top_k})")
    if not 0.0 <= top_p <= 1.0:
        raise ConfigError(f"{names['top_p']} must be between 0 and 1 (got {top_p:g})")
    if not 0 <= cfg <= MAX_CFG:
        raise ConfigError(f"{names['cfg']} must be between 0 and {MAX_CFG:g} (got {cfg:g})")


@dataclasses.dataclass
class ModelConfig:
    """The model every station of the process plays from, and where and how it runs."""

    name: str = "facebook/musicgen-small"  # a hub name, a local folder, tiny or random-*
    # The folder of the text encoder (T5) the checkpoint names; None: DIR/t5-base beside a model
    # folder's files, else the Hugging Face cache (models/checkpoint.py).
    text_encoder: tp.Optional[str] = None
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto | fp32 | bf16 | fp16 | int8 | int4 (lm/hardware.py: resolve_dtype)
    kv_cache: str = "auto"  # auto | fp16 | int8 | int4: the decoder's KV cache (lm/hardware.py: resolve_kv_cache)

    def validate(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"--device must be auto, cpu or cuda (got {self.device!r})")
        if self.dtype not in DTYPE_CHOICES:
            raise ConfigError(f"--dtype must be one of {', '.join(DTYPE_CHOICES)} (got {self.dtype!r})")
        if self.kv_cache not in KV_CACHE_CHOICES:
            raise ConfigError(f"--kv-cache must be one of {', '.join(KV_CACHE_CHOICES)} (got {self.kv_cache!r})")


@dataclasses.dataclass
class StationConfig:
    """What one station plays and how, in the units its names say."""

    prompt: str = "warm lofi hip hop with vinyl crackle"
    # Weighted prompts to start from instead (((text, weight), ...), weights summing to 1: a
    # lineup station's `prompts`); `prompt` is then the strongest of them.
    prompts: tp.Optional[tp.Tuple[tp.Tuple[str, float], ...]] = None
    schedule_path: tp.Optional[str] = None  # a programme of prompts (station/schedule.py), watched
    # Continue this clip (codec/clip.py): its tokens are the first context; play_intro plays it first.
    from_audio_path: tp.Optional[str] = None
    trim_start_seconds: float = 0.0
    trim_end_seconds: tp.Optional[float] = None
    play_intro: bool = False
    # Melody models: the clip whose melody (chroma) conditions every stride, looped over stream time.
    melody_path: tp.Optional[str] = None
    # Loudness target of everything played (codec/loudness.py); None: off. True peak ≤ −1 dBTP.
    loudness_lufs: tp.Optional[float] = -16.0
    # Failing strides are retried; generation ends when failures last this long (station/faults.py).
    give_up_after_seconds: float = 300.0
    # RADIO_FAULTS: fault drills for tests (station/faults.py); None: none.
    fault_spec: tp.Optional[str] = None
    # Sliding window (seconds): each stride sees the last `context_seconds` of tokens.
    window_seconds: float = 30.0
    context_seconds: float = 20.0
    stride_seconds: float = 10.0
    # The first stride's length; each next one doubles up to the stride. None: 1 s on CUDA
    # (first sound within about a second), the full stride on CPU (which pre-fills anyway).
    first_stride_seconds: tp.Optional[float] = None
    # Sampling.
    temperature: float = 1.0
    top_k: int = 250
    top_p: float = 0.0
    cfg_coef: float = 3.0
    seed: int = 0
    # Buffering (seconds). None: derived from the stride (see `resolved_buffer_ahead_seconds`).
    buffer_ahead_seconds: tp.Optional[float] = None
    prefill_seconds: float = 0.0
    history_seconds: float = 10.0
    # Stop after this much audio has been played (None: endless).
    duration_seconds: tp.Optional[float] = None
    # Save what the station needs to continue here after every stride; resume from it at start
    # (station/state.py). None: no state kept.
    state_dir: tp.Optional[str] = None

    @property
    def resolved_buffer_ahead_seconds(self) -> float:
        """Default: two strides plus one second, so that a producer at real-time speed
        starts the next stride with a whole stride still buffered."""
        if self.buffer_ahead_seconds is not None:
            return self.buffer_ahead_seconds
        return 2.0 * self.stride_seconds + 1.0

    def validate(self, max_duration_seconds: float = MUSICGEN_MAX_DURATION_SECONDS) -> None:
        """Raise ConfigError for any setting a stride loop cannot honour."""
        if self.stride_seconds <= 0:
            raise ConfigError(f"--stride must be positive (got {self.stride_seconds:g} s)")
        if self.context_seconds < 0:
            raise ConfigError(f"--context must be zero or positive (got {self.context_seconds:g} s)")
        if self.window_seconds <= 0:
            raise ConfigError(f"--window must be positive (got {self.window_seconds:g} s)")
        if self.window_seconds > max_duration_seconds:
            raise ConfigError(
                f"--window {self.window_seconds:g} s is longer than the model's maximum of "
                f"{max_duration_seconds:g} s; use --window {max_duration_seconds:g} or less")
        if self.context_seconds + self.stride_seconds > self.window_seconds:
            raise ConfigError(
                f"--context {self.context_seconds:g} s + --stride {self.stride_seconds:g} s must fit "
                f"in --window {self.window_seconds:g} s")
        if self.first_stride_seconds is not None and not 0 < self.first_stride_seconds <= self.stride_seconds:
            raise ConfigError(f"--first-stride must be between 0 and --stride ({self.stride_seconds:g} s), "
                              f"got {self.first_stride_seconds:g} s")
        validate_sampling(self.temperature, self.top_k, self.top_p, self.cfg_coef)
        if self.resolved_buffer_ahead_seconds < self.stride_seconds:
            raise ConfigError(
                f"--buffer-ahead {self.resolved_buffer_ahead_seconds:g} s must hold at least one "
                f"stride ({self.stride_seconds:g} s)")
        if self.prefill_seconds < 0 or self.prefill_seconds > self.resolved_buffer_ahead_seconds:
            raise ConfigError(
                f"--prefill must be between 0 and --buffer-ahead "
                f"({self.resolved_buffer_ahead_seconds:g} s), got {self.prefill_seconds:g} s")
        if self.duration_seconds is not None and self.duration_seconds <= 0:
            raise ConfigError(f"--duration must be positive (got {self.duration_seconds:g} s)")
        if len(self.prompt) > MAX_PROMPT_CHARS:
            raise ConfigError(
                f"--prompt is {len(self.prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
        if self.loudness_lufs is not None and not -40.0 <= self.loudness_lufs <= -5.0:
            raise ConfigError(f"--loudness must be between -40 and -5 LUFS, or off (got {self.loudness_lufs:g})")
        if self.give_up_after_seconds <= 0:
            raise ConfigError(f"--give-up-after must be positive (got {self.give_up_after_seconds:g} s)")
        try:
            FaultPlan.parse(self.fault_spec)
        except FaultSpecError as err:
            raise ConfigError(str(err)) from err
        if self.play_intro and not self.from_audio_path:
            raise ConfigError("--play-intro plays the --from-audio clip first: give --from-audio FILE")
        if self.trim_start_seconds < 0:
            raise ConfigError(f"--trim-start must be zero or positive (got {self.trim_start_seconds:g} s)")
        if self.trim_end_seconds is not None and self.trim_end_seconds <= self.trim_start_seconds:
            raise ConfigError(f"--trim-end ({self.trim_end_seconds:g} s) must be after --trim-start "
                              f"({self.trim_start_seconds:g} s)")
        if self.state_dir is not None and os.path.exists(self.state_dir) and not os.path.isdir(self.state_dir):
            raise ConfigError(f"--state-dir {self.state_dir!r} is a file; give a folder (created if missing)")
