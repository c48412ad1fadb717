"""Sampling the next tokens of every codebook from guided logits."""
from __future__ import annotations

import typing as tp

import torch

from .split_attention import available as triton_available


def sample(logits: torch.Tensor, cfg_coef: float, temperature: float, top_k: int, top_p: float,
           generator: tp.Optional[torch.Generator], kernels=None) -> torch.Tensor:
    """logits [2, K, card] (cond, uncond) → tokens [K]; the distribution of audiocraft's
    `_sample_next_token`, all codebooks in one call. temperature 0: greedy. Top-k draws run in
    one call, by inverse CDF from one uniform of `generator` per codebook: on CPU on `kernels`,
    the loaded native CPU kernels (FastLM.native), where given (fp32 logits); on CUDA on the
    Triton kernel of fused_sampling.py, where Triton is."""
    if temperature > 0 and top_k > 0 and top_p <= 0.0:
        draw = None  # the one-call top-k sampler for these logits, if any
        if kernels is not None and logits.dtype == torch.float32 and logits.device.type == "cpu":
            draw = kernels.sample_top_k
        elif logits.device.type == "cuda" and triton_available():
            from .fused_sampling import sample_top_k as draw
        if draw is not None:
            uniforms = torch.rand(logits.shape[1], generator=generator, device=logits.device)
            return draw(logits, cfg_coef, temperature, min(top_k, logits.shape[-1]), uniforms)
    cond, uncond = logits[0], logits[1]
    guided = uncond + (cond - uncond) * cfg_coef  # [K, card]
    if temperature <= 0:
        return guided.argmax(dim=-1)
    if top_p > 0.0:
        probs = torch.softmax(guided / temperature, dim=-1)
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        cumulative = sorted_probs.cumsum(dim=-1)
        sorted_probs = sorted_probs * ((cumulative - sorted_probs) <= top_p)
        pick = torch.multinomial(sorted_probs, 1, generator=generator)
        return order.gather(-1, pick).squeeze(-1)
    if top_k > 0:
        values, indices = guided.topk(min(top_k, guided.shape[-1]), dim=-1)
        probs = torch.softmax(values / temperature, dim=-1)
        pick = torch.multinomial(probs, 1, generator=generator)
        return indices.gather(-1, pick).squeeze(-1)
    probs = torch.softmax(guided / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
