"""The single-station decode step on CUDA as fused Triton kernels (fused_kernels.py): 7 kernels per
layer instead of 12, for the step that a CUDA graph replays (model.py `_forward_static`).

Per layer:
1. layer norm + qkv GEMV, the keys and values written into the cache at the step's position;
2. the self-attention over the cached positions up to the step's (split_attention.py: one
   kernel, the cache cut into spans that the GPU's SMs read in parallel);
3. out-projection GEMV + residual;
4. layer norm + the folded cross-attention's scores (below);
5. softmax per head + the folded values-and-out-projection GEMV + residual;
6. layer norm + ff1 GEMV + GELU;
7. ff2 GEMV + residual.

The folded cross-attention. The text condition's keys K and values V are fixed for a prompt, so
the query and out projections fold into them once per prompt: a head's scores are
q·kₜ/√Dh = norm(x)·(W_qₕᵀ kₜ)/√Dh + b_qₕ·kₜ/√Dh, i.e. norm(x) times A [H·Tc, D] plus a bias; and
its output through the out projection is Σₜ pₜ (W_oₕ vₜ), i.e. p times B [D, H·Tc]. Both per CFG
row (the unconditional row's text differs). That is 2 kernels instead of 4 and, for prompts of up
to FOLD_TEXT_POSITIONS text tokens, fewer bytes than W_q and W_o. Longer prompts, and models whose
head count times Tp is not a power of two (musicgen-medium's 24 heads), keep the projections (norm
+ q GEMV, SDPA over the text, out GEMV + residual). Weighted prompts mix in the
folded space (A, its bias and B are linear in K and V): one small op per tensor per morph step.

Shapes: B = 2 rows (cond, uncond), D model dim, H heads, Dh = D / H, Tc text positions padded to
Tp (a power of two; padded scores are PADDED_SCORE), L layers.
"""
from __future__ import annotations

import os
import typing as tp

import torch
import torch.nn.functional as F

from .fused_kernels import Blocks, embed, gemv, next_power_of_two, softmax_gemv
from .quantize import Dense
from .split_attention import SplitAttention, available as triton_available

#: The self-attention's cut of the cache (split_attention.py) for one station: 64 positions per
#: span, read 64 at a time, measured fastest of 32-256 on an H200 (0.99 against 1.06 ms per step
#: at 128: more spans, more SMs reading).
ATTENTION_SPAN_POSITIONS = 64
#: The folded cross-attention's launch sizes (bench/gpu/probe_gemv.py, H200): the scores' GEMV,
#: one output per program (its weights are a few KiB per row); the softmax + values GEMV.
SCORES_BLOCKS = Blocks(n=1, k=1024, warps=4)
VALUES_BLOCKS = Blocks(n=4, warps=2)
#: Prompts of at most this many text tokens run the folded cross-attention (A and B are then
#: fewer bytes than the query and out projections for every MusicGen shape).
FOLD_TEXT_POSITIONS = 32
#: The folded scores' bias at padded text positions: exp() of it is 0, and unlike -inf it stays
#: finite when prompts are mixed with a weight of 0.
PADDED_SCORE = -1e30


def available(fast) -> tp.Optional[str]:
    """None where `fast` (a FastLM) can run this step, else why not."""
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"  # (on CPU: the tests)
    if (fast.device.type != "cuda" and not interpreted) or not triton_available():
        return "needs CUDA and Triton"
    if fast.activation is not F.gelu:
        return "the feed-forward activation is not GELU"
    linears = [lin for layer in fast.layers for lin in layer.linears()] + [fast.head]
    if not all(isinstance(lin, Dense) for lin in linears) or fast.cache.quantized:
        return "quantised weights or cache"
    return None


class FusedStep:
    """`fast`'s decode step (a FastLM on CUDA in bf16, fp16 or fp32 with `available(fast)` None)
    on the fused kernels. `conditions_changed()` after its text condition was set (True: the
    tensors were replaced, a captured graph must be captured again); `mix(weights)` after a morph
    step. `blocks`: launch sizes per (N, K) GEMV shape, where not the default."""

    def __init__(self, fast, blocks: tp.Optional[tp.Mapping[tp.Tuple[int, int], Blocks]] = None):
        self.fast = fast
        self.blocks = dict(blocks or {})
        _, _, _, P, Dh = fast.cache.k.shape
        self.attention = SplitAttention(2, fast.heads, P, Dh, fast.device, ATTENTION_SPAN_POSITIONS,
                                        ATTENTION_SPAN_POSITIONS)
        self.text_positions = 0  # Tc of the current condition (0: none set)
        self.padded = 0  # Tp: the folded tensors' text positions; 0: not folded
        self.scores_weight = self.scores_bias = self.values_weight = None  # A, its bias, B: [L, 2, ...]
        self._bank: tp.Optional[tp.Tuple[torch.Tensor, ...]] = None  # A, bias, B of each prompt [n, L, ...]
        self._weights: tp.Optional[tp.Tuple[float, ...]] = None
        self._key: tp.Optional[str] = None  # the prompt set folded (CrossConditions' key)

    # -- the text condition -------------------------------------------------------------------
    def conditions_changed(self) -> bool:
        """Fold the text condition `fast.cross` holds (a new prompt set): True when the folded
        tensors changed shape (a captured graph must be captured again)."""
        cross = self.fast.cross
        if cross.key == self._key:
            return False
        self._key = cross.key
        tc = cross.keys.shape[3]
        padded = next_power_of_two(tc) if tc <= FOLD_TEXT_POSITIONS else 0
        if padded and next_power_of_two(self.fast.heads * padded) != self.fast.heads * padded:
            padded = 0  # (softmax_gemv reads H · Tp scores at once: a power of two)
        replaced = (tc, padded) != (self.text_positions, self.padded)
        self.text_positions, self.padded, self._weights = tc, padded, None
        if not padded:
            self.scores_weight = self.scores_bias = self.values_weight = self._bank = None
            return replaced
        bank_keys, bank_values = cross.bank  # [n, L, H, Tc, Dh]: each prompt's
        prompts = self._fold(bank_keys, bank_values)  # [n, L, ...]
        uncond = self._fold(cross.keys[:, 1].unsqueeze(0), cross.values[:, 1].unsqueeze(0))  # [1, L, ...]
        if replaced or self.scores_weight is None:
            self.scores_weight, self.scores_bias, self.values_weight = (
                torch.stack([p[0], u[0]], dim=1).contiguous() for p, u in zip(prompts, uncond))
        else:  # in place: a captured graph reads these tensors
            for mine, p, u in zip((self.scores_weight, self.scores_bias, self.values_weight), prompts, uncond):
                mine[:, 0].copy_(p[0])
                mine[:, 1].copy_(u[0])
        self._bank = prompts
        return replaced

    def mix(self, weights: tp.Sequence[float]) -> None:
        """The conditional row as Σ wᵢ · prompt i (as CrossConditions.mix, in folded space)."""
        weights = tuple(float(w) for w in weights)
        if self._bank is None or weights == self._weights:
            return
        w = torch.tensor(weights, dtype=torch.float32, device=self.fast.device)
        for mine, bank in zip((self.scores_weight, self.scores_bias, self.values_weight), self._bank):
            mine[:, 0].copy_((w.view(-1, *[1] * (bank.dim() - 1)) * bank.float()).sum(0))
        self._weights = weights

    def _fold(self, keys: torch.Tensor, values: torch.Tensor) -> tp.Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """keys, values [R, L, H, Tc, Dh] → A [R, L, H·Tp, D] (compute dtype), its bias
        [R, L, H·Tp] fp32 (PADDED_SCORE at padded positions), B [R, L, D, H·Tp] (compute dtype)."""
        fast = self.fast
        R, L, H, Tc, Dh = keys.shape
        D, Tp, scale = fast.dim, self.padded, Dh ** -0.5
        dtype = fast.compute_dtype
        a = torch.zeros(R, L, H, Tp, D, dtype=dtype, device=keys.device)
        bias = torch.full((R, L, H, Tp), PADDED_SCORE, dtype=torch.float32, device=keys.device)
        b = torch.zeros(R, L, D, H, Tp, dtype=dtype, device=keys.device)
        for i, layer in enumerate(fast.layers):
            k, v = keys[:, i].float(), values[:, i].float()  # [R, H, Tc, Dh]
            w_q = layer.q_cross.weight.float().view(H, Dh, D)
            a[:, i, :, :Tc] = (torch.einsum("rhtd,hdk->rhtk", k, w_q) * scale).to(dtype)
            q_bias = layer.q_cross.bias
            bias[:, i, :, :Tc] = (0.0 if q_bias is None else
                                  torch.einsum("rhtd,hd->rht", k, q_bias.float().view(H, Dh)) * scale)
            w_o = layer.out_cross.weight.float().view(D, H, Dh)
            b[:, i, :, :, :Tc] = torch.einsum("nhd,rhtd->rnht", w_o, v).to(dtype)
        return a.view(R, L, H * Tp, D), bias.view(R, L, H * Tp), b.view(R, L, D, H * Tp)

    # -- the step ---------------------------------------------------------------------------
    def __call__(self, tokens: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """tokens [2, K, 1], position [1] (device tensors) → logits [2, K, card] fp32, the
        keys and values of this position written into the cache."""
        fast = self.fast
        B, K, _ = tokens.shape
        H, Dh, D = fast.heads, fast.head_dim, fast.dim
        x = embed(tokens.view(B, K), fast.embeddings, fast.pos_emb, position, fast.positional_scale)
        positions = position.expand(B).contiguous()  # [B]: the attention's, per row
        kv = fast.cache.kv
        if self.padded:  # the folded cross-attention's launch sizes ([L, 2, N, K] weights)
            scores_blocks = self.blocks.get(tuple(self.scores_weight.shape[2:]), SCORES_BLOCKS)
            values_blocks = self.blocks.get(tuple(self.values_weight.shape[2:]), VALUES_BLOCKS)
        for i, layer in enumerate(fast.layers):
            q = self._gemv(x, layer.qkv, norm=layer.norm_self, cache=(kv[:, i], position))
            a = self.attention(q.view(B, H, 1, Dh), kv[0, i], kv[1, i], positions)
            x = self._gemv(a.reshape(B, D), layer.out_self, residual=x)
            if self.padded:
                scores = gemv(x, self.scores_weight[i], self.scores_bias[i], norm=layer.norm_cross,
                              out_dtype=torch.float32, blocks=scores_blocks)
                x = softmax_gemv(scores, self.values_weight[i], layer.out_cross.bias, x, self.padded,
                                 block_n=values_blocks.n, warps=values_blocks.warps)
            else:
                q = self._gemv(x, layer.q_cross, norm=layer.norm_cross)
                a = F.scaled_dot_product_attention(q.view(B, H, 1, Dh), fast.cross.keys[i], fast.cross.values[i])
                x = self._gemv(a.reshape(B, D), layer.out_cross, residual=x)
            h = self._gemv(x, layer.ff1, norm=layer.norm_ff, gelu=True)
            x = self._gemv(h, layer.ff2, residual=x)
        logits = self._gemv(x, fast.head, norm=fast.out_norm, out_dtype=torch.float32)
        return logits.view(B, K, fast.card)

    def _gemv(self, x: torch.Tensor, linear, **options) -> torch.Tensor:
        shape = linear.shape
        return gemv(x, linear.weight, linear.bias, blocks=self.blocks.get(shape), **options)
