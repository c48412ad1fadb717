"""The quality figure of a precision: cross-entropy of codes under the fast decoder
(bench/bench_quality.py and the precision tests; not used while playing)."""
from __future__ import annotations

import torch

from .generate import pattern_sequence
from .model import FastLM


def cross_entropy(model: FastLM, codes: torch.Tensor, attributes, cfg_coef: float = 3.0) -> float:
    """Mean cross-entropy (nats per token) of codes [K, T] under `model` with guidance
    `cfg_coef`, teacher-forced (the usual quantisation-quality figure)."""
    sequence = pattern_sequence(model, codes.to(model.device))  # [K, S]
    model.set_conditions(attributes)
    inputs = sequence[:, :-1].unsqueeze(0).expand(2, -1, -1)
    with torch.inference_mode():
        logits = model.prefill(inputs, last_only=False)
    guided = logits[1] + (logits[0] - logits[1]) * cfg_coef  # [K, S-1, card]
    targets = sequence[:, 1:]
    real = targets != model.special_token
    log_probs = torch.log_softmax(guided, dim=-1)
    picked = log_probs.gather(-1, targets.clamp(max=model.card - 1).unsqueeze(-1)).squeeze(-1)
    return -picked[real].mean().item()
