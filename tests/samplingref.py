"""The top-k draw both native samplers make (kernels/sampling.cpp on CPU, fused_sampling.py on
CUDA), computed in float64 by a stable sort: for each codebook, the first of the top k of the
guided logits (ties by lower index, -0 equal to +0) whose cumulative softmax weight passes the
uniform times the total."""
import torch


def top_k_inverse_cdf(logits: torch.Tensor, cfg: float, temperature: float, k: int,
                      uniforms: torch.Tensor) -> torch.Tensor:
    """logits [2, K, card] (cond, uncond), uniforms [K] → tokens [K]."""
    guided = (logits[1] + (logits[0] - logits[1]) * cfg).double() + 0.0
    tokens = []
    for book in range(guided.shape[0]):
        order = torch.sort(-guided[book], stable=True).indices[:k]  # ties: the lower entry first
        weights = torch.exp((guided[book, order] - guided[book, order[0]]) / temperature)
        before = int((torch.cumsum(weights, 0) <= uniforms[book].double() * weights.sum()).sum())
        tokens.append(int(order[min(before, k - 1)]))
    return torch.tensor(tokens)
