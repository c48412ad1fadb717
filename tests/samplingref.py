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


def sampling_cases(repeat: int = 1, many_ties: bool = False):
    """(logits [2, 4, card], k, temperature, uniforms [4]) to draw with: cards of 17 to 2048, k of
    5 to 250, a tie at the top of every codebook's guided logits with the first uniform 0 (the
    lower entry of the tie must come out: token 1); with `many_ties`, the last codebook's logits
    are a few repeated values, -0 beside +0."""
    torch.manual_seed(0)
    for card, k, temperature, draws in [(300, 250, 1.0, 4), (300, 5, 0.7, 4), (2048, 250, 1.0, 1), (17, 17, 2.0, 4)]:
        for _ in range(draws * repeat):
            logits = torch.randn(2, 4, card) * 3
            logits[:, :, 1:3] = 100.0
            if many_ties:
                logits[:, 3, :] = torch.randint(-2, 3, (2, card)).float() * 0.5
                logits[:, 3, 5], logits[:, 3, 4] = -0.0, 0.0
            uniforms = torch.rand(4)
            uniforms[0] = 0.0
            yield logits, k, temperature, uniforms
