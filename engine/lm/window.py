"""The token window: each stride continues from the last `context` seconds of generated codes.

No audio is decoded or re-encoded between strides: the prompt of stride n+1 is the tail of the
codes of strides ≤ n. Memory is bounded by the context length. The generator knows nothing of
audio or time.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import typing as tp

import torch

from .batcher import StrideBatcher, StrideRequest
from .generate import ProgressCallback, generate
from .hardware import QUANTISED, resolve_dtype
from .model import FastLM
from .weights import UnsupportedModel

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How each next token is drawn (sampling.sample): temperature 0 is greedy."""
    temperature: float = 1.0
    top_k: int = 250
    top_p: float = 0.0
    cfg_coef: float = 3.0


@dataclasses.dataclass(frozen=True)
class PromptMix:
    """Weighted text prompts (weights > 0 summing to 1), optionally morphing: from
    `start_weights` to `weights` over stream frames [morph_start_frame, + morph_frames), step by
    step (lm/conditions.py mixes them inside each decode step)."""
    texts: tp.Tuple[str, ...]
    weights: tp.Tuple[float, ...]
    start_weights: tp.Optional[tp.Tuple[float, ...]] = None
    morph_start_frame: int = 0
    morph_frames: int = 0

    def weights_at(self, frame: int) -> tp.Tuple[float, ...]:
        """The weights at stream frame `frame`."""
        if self.start_weights is None or self.morph_frames <= 0:
            return self.weights
        a = min(1.0, max(0.0, (frame - self.morph_start_frame) / self.morph_frames))
        return tuple((1.0 - a) * s + a * w for s, w in zip(self.start_weights, self.weights))

    def settled(self, frame: int) -> "PromptMix":
        """The same mix from `frame` on, without a finished morph and its zero-weight prompts."""
        if self.start_weights is not None and frame < self.morph_start_frame + self.morph_frames:
            return self
        live = [(text, w) for text, w in zip(self.texts, self.weights) if w > 0]
        return PromptMix(tuple(t for t, _ in live), tuple(w for _, w in live))

    def single_from(self, frame: int) -> tp.Optional[str]:
        """The one prompt heard alone from `frame` on (weight 1, no morph left), else None."""
        settled = self.settled(frame)
        return settled.texts[0] if len(settled.texts) == 1 and settled.start_weights is None else None

    def dominant(self) -> str:
        return max(zip(self.weights, self.texts))[1]


#: What a stride is conditioned on: one prompt, or weighted prompts.
Conditioning = tp.Union[str, PromptMix]


class WindowGenerator:
    """Generates codes [1, K, frames] stride after stride with a sliding token context.

    `context_frames`: how many of the last emitted frames prompt the next stride.
    `max_frames`: the longest context + stride that will be asked for (default: the model's
    maximum duration).
    `seed`: each stride n is sampled from a generator seeded with (seed, n), so a run is
    reproducible stride by stride whatever else the process does between strides.
    `dtype`: precision of the fast decoder (hardware.resolve_dtype: auto | fp32 | bf16 | fp16 | int8 | int4).
    Models the fast decoder does not implement (e.g. melody conditioning) run through
    audiocraft's own `generate`, with autocast for bf16/fp16; so does `fast=False`.
    `kernels`: how the fast decoder's step runs (FastLM: auto | graph | native | compiled | eager).
    `kv_cache`: the KV cache's precision (hardware.resolve_kv_cache: auto | fp16 | int8 | int4).
    `release_weights`: once the fast decoder holds its own copy, free audiocraft's (the model's
    LM can no longer generate by itself: for a process that owns the model, like the server).
    `batcher`: run the strides in the shared decode steps of several stations (batcher.py),
    as `station`, which must have joined it; `buffered()` (seconds of audio the station has
    buffered) orders the admissions. The batcher's decoder is used (`dtype`, `fast`, `kernels`
    and `release_weights` are its owner's business).
    """

    def __init__(self, model, context_frames: int, sampling: SamplingParams, seed: int,
                 max_frames: tp.Optional[int] = None, dtype: str = "auto", fast: bool = True,
                 release_weights: bool = False, kernels: str = "auto", kv_cache: str = "auto",
                 batcher: tp.Optional[StrideBatcher] = None,
                 station: str = "", buffered: tp.Callable[[], float] = lambda: 0.0):
        self.model = model
        self.lm = model.lm
        self.context_frames = int(context_frames)
        self.sampling = sampling
        self.seed = int(seed)
        self.device = next(self.lm.parameters()).device
        self.dtype = resolve_dtype(dtype, self.device)
        self.stride_index = 0
        self.frames_emitted = 0
        self.last_timings: tp.Dict[str, float] = {}
        self._context: tp.Optional[torch.Tensor] = None  # [1, K, <= context_frames]
        self._melody: tp.Optional[torch.Tensor] = None  # [channels, samples] at the model's rate
        self.fast: tp.Optional[FastLM] = None
        self.batcher, self.station, self.buffered = batcher, station, buffered
        if batcher is not None:
            self.fast, self.dtype = batcher.fast, batcher.fast.mode
            return
        if max_frames is None:
            max_frames = int(round(float(model.max_duration) * float(model.frame_rate)))
        reason = "asked for"
        if fast:
            try:
                self.fast = FastLM(self.lm, max_frames=max_frames, dtype=self.dtype, device=self.device,
                                   kernels=kernels, kv_cache=kv_cache)
            except UnsupportedModel as err:
                reason = str(err)
        if self.fast is not None:
            log.info("decoder: fast loop, %s weights (%.1f MB read per step), %s KV cache of %d positions, "
                     "%s decode step", self.dtype, self.fast.parameter_bytes() / 1e6,
                     self.fast.cache.precision, self.fast.max_positions,
                     self.fast.kernels + (", fused" if self.fast.native_step is not None else ""))
            if release_weights:
                log.info("decoder: freed audiocraft's copy of the LM weights (%.0f MB)",
                         self.fast.release_source_weights() / 1e6)
        else:
            if self.dtype in QUANTISED:
                self.dtype = "fp32"
            log.info("decoder: audiocraft's generate loop (%s), %s", reason, self.dtype)

    @property
    def context(self) -> tp.Optional[torch.Tensor]:
        """The codes [1, K, T ≤ context_frames] that will prompt the next stride."""
        return self._context

    def set_context(self, codes: tp.Optional[torch.Tensor]) -> None:
        """Continue from these codes [1, K, T] (their last `context_frames` are kept)."""
        if codes is None or self.context_frames == 0:
            self._context = None
        else:
            self._context = codes[..., -self.context_frames:].to(self.device).clone()

    def restart_at(self, frame: int, context: tp.Optional[torch.Tensor]) -> None:
        """Continue from stream frame `frame`, prompted by `context` codes [1, K, T] (their last
        `context_frames`; None: from nothing, a new piece). A cut-in rewinds this way; the
        stride count, and so the seeds, go on."""
        self.set_context(context)
        self.frames_emitted = int(frame)

    def set_melody(self, wav: tp.Optional[torch.Tensor]) -> None:
        """The melody clip [channels, samples] at the model's sample rate (melody models; None:
        none). It is looped over stream time, and each generation is conditioned on the part under
        its window, as audiocraft's MusicGen does for generations beyond 30 s."""
        self._melody = None if wav is None else wav.to(self.device)

    def _melody_under(self, first_frame: int) -> torch.Tensor:
        """The looped melody [channels, max_duration × sample rate] from stream frame `first_frame`."""
        hop_samples = int(round(self.model.sample_rate / self.model.frame_rate))
        window_samples = int(round(float(self.model.max_duration) * self.model.sample_rate))
        positions = torch.arange(window_samples, device=self.device) + first_frame * hop_samples
        return self._melody[..., positions % self._melody.shape[-1]]

    def _conditions(self, prompt: str, first_frame: int = 0):
        """audiocraft's conditioning attributes of `prompt`, with the melody under the window
        whose first frame is stream frame `first_frame` (melody models)."""
        melody = None if self._melody is None else [self._melody_under(first_frame)]
        attributes, _ = self.model._prepare_tokens_and_attributes([prompt], None, melody_wavs=melody)
        return attributes

    def _fast_conditioning(self, conditioning: Conditioning, prompt_frames: int):
        """(attributes, weights_at) for the fast decoder: one prompt takes the unweighted path;
        weighted prompts give the decoder their weights per timestep of this generation."""
        if isinstance(conditioning, str):
            return self._conditions(conditioning)[0], None
        single = conditioning.single_from(self.frames_emitted)
        if single is not None:
            return self._conditions(single)[0], None
        conditioning = conditioning.settled(self.frames_emitted)
        attributes, _ = self.model._prepare_tokens_and_attributes(list(conditioning.texts), None)
        first_frame = self.frames_emitted - prompt_frames  # the stream frame of timestep 0
        last = {}

        def weights_at(timestep: int):
            weights = conditioning.weights_at(first_frame + timestep)
            if last.get("weights") == weights:
                return None
            last["weights"] = weights
            return weights
        return attributes, weights_at

    def warm_up(self, prompt: str, frames: int = 10) -> torch.Tensor:
        """Generate `frames` throwaway frames (no context) so that first-call costs (CUDA graph
        capture, kernel loading, allocator growth) stay out of the first real stride. Leaves the
        context, the stride count and the seeds as they were. Returns the codes [1, K, frames]."""
        state = self.state()
        self._context = None
        try:
            return self.next_stride(prompt, frames)
        finally:
            self.restore(state)

    def state(self) -> tuple:
        """What a stride changes (context, stride count, frames emitted): `restore` undoes a
        stride that failed half-way, so that it is retried from the same context."""
        return self._context, self.stride_index, self.frames_emitted

    def restore(self, state: tuple) -> None:
        self._context, self.stride_index, self.frames_emitted = state

    def next_stride(self, prompt: Conditioning, frames: int,
                    progress: tp.Optional[ProgressCallback] = None,
                    logits_hook: tp.Optional[tp.Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
        """Generate `frames` new frames of codes [1, K, frames] continuing the context,
        conditioned on `prompt` (a text, or weighted texts: PromptMix). `logits_hook`: fault
        drills only (lm/generate.py)."""
        prompt_codes = self._context
        prompt_frames = 0 if prompt_codes is None else prompt_codes.shape[-1]
        stride_seed = self.seed * 1_000_003 + self.stride_index
        s = self.sampling
        self.last_timings = {}
        if self.fast is not None:
            generator = torch.Generator(self.device).manual_seed(stride_seed)
            attributes, weights_at = self._fast_conditioning(prompt, prompt_frames)
            if self.batcher is not None:  # in the decode steps shared with the other stations
                codes = self.batcher.generate(StrideRequest(
                    station=self.station, prompt=prompt_codes, attributes=attributes, new_frames=frames,
                    temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, cfg_coef=s.cfg_coef,
                    generator=generator, progress=progress, weights_at=weights_at, logits_hook=logits_hook,
                    timings=self.last_timings, buffered=self.buffered))
            else:
                codes = generate(
                    self.fast, prompt_codes, attributes, frames, temperature=s.temperature,
                    top_k=s.top_k, top_p=s.top_p, cfg_coef=s.cfg_coef, generator=generator,
                    progress=progress, timings=self.last_timings, weights_at=weights_at, logits_hook=logits_hook)
        else:
            torch.manual_seed(stride_seed)
            random.seed(stride_seed)  # a melody model's Demucs shifts its input at random (python's random)
            autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.dtype)
            autocast = (torch.autocast(self.device.type, dtype=autocast_dtype)
                        if autocast_dtype is not None else contextlib.nullcontext())
            if not isinstance(prompt, str):  # audiocraft's loop takes one prompt: the strongest
                prompt = prompt.dominant()
            with torch.inference_mode(), autocast:
                codes = self.lm.generate(
                    prompt_codes, self._conditions(prompt, self.frames_emitted - prompt_frames),
                    max_gen_len=prompt_frames + frames,
                    use_sampling=s.temperature > 0, temp=max(s.temperature, 1e-5), top_k=s.top_k,
                    top_p=s.top_p, cfg_coef=s.cfg_coef, callback=progress)
        new_codes = codes[..., prompt_frames:].clone()
        keep = min(self.context_frames, codes.shape[-1])
        self._context = codes[..., codes.shape[-1] - keep:].clone() if keep > 0 else None
        self.stride_index += 1
        self.frames_emitted += frames
        return new_codes
