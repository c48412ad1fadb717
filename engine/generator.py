"""The token window: each stride continues from the last `context` seconds of generated codes.

No audio is decoded or re-encoded between strides: the prompt of stride n+1 is the tail of the
codes of strides ≤ n. Memory is bounded by the context length. The generator knows nothing of
audio or time.
"""
from __future__ import annotations

import contextlib
import dataclasses
import typing as tp

import torch

ProgressCallback = tp.Callable[[int, int], None]


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_k: int = 250
    top_p: float = 0.0
    cfg_coef: float = 3.0


class WindowGenerator:
    """Generates codes [1, K, frames] stride after stride with a sliding token context.

    `context_frames`: how many of the last emitted frames prompt the next stride.
    `seed`: each stride n is sampled after seeding torch with (seed, n), so a run is reproducible
    stride by stride whatever else the process does between strides.
    """

    def __init__(self, model, context_frames: int, sampling: SamplingParams, seed: int,
                 autocast_dtype: tp.Optional[torch.dtype] = None):
        self.model = model
        self.lm = model.lm
        self.context_frames = int(context_frames)
        self.sampling = sampling
        self.seed = int(seed)
        self.autocast_dtype = autocast_dtype
        self.device = next(self.lm.parameters()).device
        self.stride_index = 0
        self.frames_emitted = 0
        self._context: tp.Optional[torch.Tensor] = None  # [1, K, <= context_frames]

    @property
    def context(self) -> tp.Optional[torch.Tensor]:
        """The codes [1, K, T ≤ context_frames] that will prompt the next stride."""
        return self._context

    def _conditions(self, prompt: str):
        attributes, _ = self.model._prepare_tokens_and_attributes([prompt], None)
        return attributes

    def next_stride(self, prompt: str, frames: int,
                    progress: tp.Optional[ProgressCallback] = None) -> torch.Tensor:
        """Generate `frames` new frames of codes [1, K, frames] continuing the context."""
        prompt_codes = self._context
        prompt_frames = 0 if prompt_codes is None else prompt_codes.shape[-1]
        torch.manual_seed(self.seed * 1_000_003 + self.stride_index)
        s = self.sampling
        autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype)
                    if self.autocast_dtype is not None else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            codes = self.lm.generate(
                prompt_codes, self._conditions(prompt), max_gen_len=prompt_frames + frames,
                use_sampling=s.temperature > 0, temp=max(s.temperature, 1e-5), top_k=s.top_k,
                top_p=s.top_p, cfg_coef=s.cfg_coef, callback=progress)
        new_codes = codes[..., prompt_frames:].clone()
        keep = min(self.context_frames, codes.shape[-1])
        self._context = codes[..., codes.shape[-1] - keep:].clone() if keep > 0 else None
        self.stride_index += 1
        self.frames_emitted += frames
        return new_codes
