"""The quality figures of a precision: cross-entropy of codes under the fast decoder, and how
close its guided logits stay to a reference decoder's (bench/bench_quality.py and the precision
tests; not used while playing)."""
from __future__ import annotations

import typing as tp

import torch

from .generate import pattern_sequence
from .model import FastLM


def guided_logits(model: FastLM, codes: torch.Tensor, attributes, cfg_coef: float = 3.0,
                  prefill_positions: tp.Optional[int] = None) -> tp.Tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced guided logits of codes [K, T] under `model`: (logits [K, S-1, card] in
    fp32, the targets [K, S-1] they predict), S the length of the delay pattern's sequence.
    All from one prefill, or (`prefill_positions` = n) the first n from a prefill and the rest
    from decode steps, one position at a time: the path that samples all but the first token of
    a stride (its own kernels: the native step on CPU, the CUDA graph)."""
    sequence = pattern_sequence(model, codes.to(model.device))  # [K, S]
    model.set_conditions(attributes)
    inputs = sequence[:, :-1].unsqueeze(0).expand(2, -1, -1)
    n = inputs.shape[-1] if prefill_positions is None else max(1, min(prefill_positions, inputs.shape[-1]))
    with torch.inference_mode():
        logits = model.prefill(inputs[..., :n], last_only=False)  # [2, K, n, card]
        stepped = [model.step(sequence[:, p], p) for p in range(n, inputs.shape[-1])]  # [2, K, card] each
        if stepped:
            logits = torch.cat([logits, torch.stack(stepped, dim=2)], dim=2)
    return logits[1] + (logits[0] - logits[1]) * cfg_coef, sequence[:, 1:]


def logit_agreement(reference: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                    special_token: int, top_k: tp.Sequence[int] = (10, 250)) -> tp.Dict[str, float]:
    """How close `logits` stay to `reference` (both [K, S, card], from `guided_logits`) at the
    positions that predict a real code: the relative error ‖logits − reference‖ / ‖reference‖,
    and for each k the mean share of the reference's top-k codes that are also in the top-k."""
    real = targets != special_token  # [K, S]
    ref, got = reference[real], logits[real]  # [N, card]
    figures = {"logit_relative_error": ((got - ref).norm() / ref.norm()).item()}
    for k in top_k:
        ref_top, got_top = ref.topk(k, dim=-1).indices, got.topk(k, dim=-1).indices
        shared = (ref_top.unsqueeze(-1) == got_top.unsqueeze(-2)).any(-1).float().sum(-1)
        figures[f"top{k}_overlap"] = (shared / k).mean().item()
    return figures


def cross_entropy(model: FastLM, codes: torch.Tensor, attributes, cfg_coef: float = 3.0) -> float:
    """Mean cross-entropy (nats per token) of codes [K, T] under `model` with guidance
    `cfg_coef`, teacher-forced (the usual quantisation-quality figure)."""
    guided, targets = guided_logits(model, codes, attributes, cfg_coef)  # [K, S-1, card]
    real = targets != model.special_token
    log_probs = torch.log_softmax(guided, dim=-1)
    picked = log_probs.gather(-1, targets.clamp(max=model.card - 1).unsqueeze(-1)).squeeze(-1)
    return -picked[real].mean().item()
