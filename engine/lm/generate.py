"""The generation loop: what audiocraft's `LMModel.generate` computes (delay pattern,
classifier-free guidance, top-k / top-p sampling), the way gpt-fast's `generate.py` runs it:
one prefill of the prompt, then one decode step per position against the static cache.

Shapes: K codebooks, P prompt frames, S pattern positions.
"""
from __future__ import annotations

import time
import typing as tp

import torch

from .model import FastLM
from .sampling import sample

#: progress(step, total_steps), called after every decode step.
ProgressCallback = tp.Callable[[int, int], None]
#: weights_at(timestep) → the prompts' weights for that timestep (of this generation, prompt
#: included), or None when they do not change there.
WeightsCallback = tp.Callable[[int], tp.Optional[tp.Sequence[float]]]


def pattern_sequence(model: FastLM, codes: torch.Tensor) -> torch.Tensor:
    """codes [K, T] → the delayed pattern sequence [K, T + max(delays) + 1] the model reads:
    position s holds timestep s - 1 - delay[k], the special token elsewhere."""
    K, T = codes.shape
    sequence = torch.full((K, T + max(model.delays) + 1), model.special_token,
                          dtype=torch.long, device=codes.device)
    for k, d in enumerate(model.delays):
        sequence[k, 1 + d:1 + d + T] = codes[k]
    return sequence


class Layout(tp.NamedTuple):
    """A generation laid out in pattern positions: `sequence` [K, S] (the prompt in place, the
    rest to fill), `generated` [S, K] (positions holding a timestep to generate: not prompt, not
    a special token), `first` (the first position to sample), `steps` (S), `total` (frames),
    `prompt_frames` (P)."""
    sequence: torch.Tensor
    generated: torch.Tensor
    first: int
    steps: int
    total: int
    prompt_frames: int


def layout(model: FastLM, prompt: tp.Optional[torch.Tensor], new_frames: int) -> Layout:
    """prompt codes [1, K, P] (or None) and `new_frames` → their Layout (ValueError when they
    exceed the cache)."""
    K, delays = model.num_codebooks, model.delays
    P = 0 if prompt is None else prompt.shape[-1]
    total = P + int(new_frames)
    steps = total + max(delays) + 1  # pattern sequence length S
    if steps > model.max_positions:
        raise ValueError(f"{total} frames exceed the cache ({model.max_positions} positions)")
    codes = torch.full((K, total), -1, dtype=torch.long, device=model.device)
    if P:
        codes[:, :P] = prompt[0].to(model.device)
    timesteps = torch.arange(steps).view(-1, 1) - 1 - torch.tensor(delays).view(1, -1)
    generated = ((timesteps >= P) & (timesteps < total)).to(model.device)  # [S, K]
    return Layout(pattern_sequence(model, codes), generated, P + 1 + min(delays), steps, total, P)


def unpattern(model: FastLM, sequence: torch.Tensor, total: int) -> torch.Tensor:
    """The pattern sequence [K, S] → codes [1, K, total] (each codebook without its delay)."""
    return torch.stack([sequence[k, 1 + d:1 + d + total] for k, d in enumerate(model.delays)]).unsqueeze(0)


def check_finite(logits: torch.Tensor) -> None:
    """FloatingPointError for NaN or inf logits (a broken checkpoint or device)."""
    if not bool(torch.isfinite(logits).all()):
        raise FloatingPointError("the language model gave NaN or inf logits")


@torch.inference_mode()
def generate(model: FastLM, prompt: tp.Optional[torch.Tensor], attributes, new_frames: int, *,
             temperature: float = 1.0, top_k: int = 250, top_p: float = 0.0,
             cfg_coef: float = 3.0, generator: tp.Optional[torch.Generator] = None,
             progress: tp.Optional[ProgressCallback] = None,
             timings: tp.Optional[tp.Dict[str, float]] = None,
             weights_at: tp.Optional[WeightsCallback] = None,
             logits_hook: tp.Optional[tp.Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """prompt codes [1, K, P] (or None) → codes [1, K, P + new_frames], like
    `LMModel.generate(prompt, [attributes], max_gen_len=P + new_frames, ...)`.
    NaN or inf logits (a broken checkpoint or device; `logits_hook`, applied to the prefill's
    logits, lets fault drills make them) raise FloatingPointError before anything is sampled.
    `attributes`: one prompt, or a list of weighted prompts whose weights `weights_at` gives
    per timestep (a morph: the step that samples timestep t of the first codebook reads the
    weights of t). `timings`, when given, receives prefill_seconds, decode_seconds and
    decode_steps."""
    sequence, generated, first, steps, total, P = layout(model, prompt, new_frames)
    model.set_conditions(attributes, None if weights_at is None else weights_at(P))
    started = time.perf_counter()
    logits = model.prefill(sequence[:, :first].unsqueeze(0).expand(2, -1, -1))
    if logits_hook is not None:
        logits = logits_hook(logits)
    check_finite(logits)
    prefill_done = time.perf_counter()
    for offset in range(first, steps):
        tokens = sample(logits, cfg_coef, temperature, top_k, top_p, generator, model.native)
        sequence[:, offset] = torch.where(generated[offset], tokens, sequence[:, offset])
        if progress is not None:
            progress(1 + offset - first, steps - first)
        if offset + 1 < steps:
            # The step samples timestep `offset` of the first codebook (the last ones: of the
            # delayed codebooks only, still within this generation's frames).
            if weights_at is not None and (weights := weights_at(min(offset, total - 1))) is not None:
                model.mix_conditions(weights)
            logits = model.step(sequence[:, offset], offset)
    if timings is not None:
        timings.update(prefill_seconds=prefill_done - started,
                       decode_seconds=time.perf_counter() - prefill_done,
                       decode_steps=steps - first - 1)
    return unpattern(model, sequence, total)
