"""audiocraft's `LMModel` → the fast decoder's weights: what it supports, and the conversion of
each layer into the chosen precision.

Shapes: K codebooks, card entries per codebook, D model dim.
"""
from __future__ import annotations

import dataclasses
import typing as tp

import torch
import torch.nn.functional as F

from .quantize import Dense, Linear, linear


class UnsupportedModel(ValueError):
    """The LM uses a feature the fast decoder does not implement (audiocraft's loop is used)."""


def check_supported(lm) -> tp.List[int]:
    """Return the codebook delays, or raise UnsupportedModel naming what is missing."""
    from audiocraft.modules.codebooks_patterns import DelayedPatternProvider
    pattern = lm.pattern_provider
    if not isinstance(pattern, DelayedPatternProvider) or pattern.flatten_first or pattern.empty_initial:
        raise UnsupportedModel("only the plain delay codebook pattern is implemented")
    if any(len(lm.fuser.fuse2cond.get(op, [])) for op in ("sum", "prepend", "input_interpolate")):
        raise UnsupportedModel("only cross-attention conditioning is implemented (not melody/prepend)")
    if getattr(lm.fuser, "cross_attention_pos_emb", False):
        raise UnsupportedModel("cross-attention positional embedding is not implemented")
    t = lm.transformer
    if t.positional_embedding != "sin":
        raise UnsupportedModel(f"positional embedding {t.positional_embedding!r} is not implemented")
    for layer in t.layers:
        a = layer.self_attn
        if (not layer.norm_first or layer.cross_attention is None or a.kv_repeat != 1 or a.rope
                or a.qk_layer_norm or a.past_context is not None or not a.custom
                or not isinstance(layer.layer_scale_1, torch.nn.Identity)
                or not isinstance(layer.norm1, torch.nn.LayerNorm)):
            raise UnsupportedModel("transformer layer variant not implemented "
                                   "(needs norm-first, cross-attention, plain MHA, layer norm)")
    if lm.two_step_cfg:
        raise UnsupportedModel("two-step CFG is not implemented")
    return list(pattern.delays)


def activation(layer) -> tp.Callable[[torch.Tensor], torch.Tensor]:
    """The feed-forward activation of an audiocraft transformer layer."""
    act = layer.activation
    if act is F.gelu or isinstance(act, torch.nn.GELU):
        return F.gelu
    if act is F.relu or isinstance(act, torch.nn.ReLU):
        return F.relu
    raise UnsupportedModel(f"activation {act!r} not implemented")


@dataclasses.dataclass
class Norm:
    weight: torch.Tensor
    bias: tp.Optional[torch.Tensor]
    eps: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)


@dataclasses.dataclass
class Layer:
    """One transformer layer: self-attention, cross-attention to the text, feed-forward."""
    norm_self: Norm
    qkv: Linear
    out_self: Linear
    norm_cross: Norm
    q_cross: Linear
    kv_cross: Dense  # used once per prompt: kept dense
    out_cross: Linear
    norm_ff: Norm
    ff1: Linear
    ff2: Linear

    def linears(self) -> tp.Tuple[Linear, ...]:
        """The linears read at every decode step."""
        return (self.qkv, self.out_self, self.q_cross, self.out_cross, self.ff1, self.ff2)


@dataclasses.dataclass
class Weights:
    """Everything the decoder reads, converted: layers, embeddings [K, card + 1, D], the output
    norm and the K codebook heads as one linear [K * card, D]."""
    layers: tp.List[Layer]
    embeddings: torch.Tensor
    out_norm: tp.Optional[Norm]
    head: Linear


@torch.no_grad()
def convert(lm, mode: str, compute_dtype: torch.dtype, native=None) -> Weights:
    """The weights of audiocraft's `lm` in precision `mode` ("fp32" | "bf16" | "fp16" | "int8" |
    "int4"), dense ones in `compute_dtype`; `native`: the loaded CPU kernels for the quantised
    decode rows."""
    cd = compute_dtype

    def norm(module) -> Norm:
        return Norm(module.weight.detach().to(cd), None if module.bias is None
                    else module.bias.detach().to(cd), module.eps)

    def lin(weight, bias=None) -> Linear:
        return linear(weight, bias, mode, cd, native)

    layers = []
    for layer in lm.transformer.layers:
        sa, ca = layer.self_attn, layer.cross_attention
        D = sa.embed_dim
        ca_bias = ca.in_proj_bias
        layers.append(Layer(
            norm_self=norm(layer.norm1),
            qkv=lin(sa.in_proj_weight, sa.in_proj_bias),
            out_self=lin(sa.out_proj.weight, sa.out_proj.bias),
            norm_cross=norm(layer.norm_cross),
            q_cross=lin(ca.in_proj_weight[:D], None if ca_bias is None else ca_bias[:D]),
            kv_cross=Dense(ca.in_proj_weight[D:], None if ca_bias is None else ca_bias[D:], cd),
            out_cross=lin(ca.out_proj.weight, ca.out_proj.bias),
            norm_ff=norm(layer.norm2),
            ff1=lin(layer.linear1.weight, layer.linear1.bias),
            ff2=lin(layer.linear2.weight, layer.linear2.bias),
        ))
    embeddings = torch.stack([e.weight.detach() for e in lm.emb]).to(cd)
    head_w = torch.cat([head.weight for head in lm.linears])
    head_b = torch.cat([head.bias for head in lm.linears]) if lm.linears[0].bias is not None else None
    return Weights(layers=layers, embeddings=embeddings,
                   out_norm=norm(lm.out_norm) if lm.out_norm is not None else None,
                   head=lin(head_w, head_b))


def release_source_weights(lm) -> int:
    """Free audiocraft's own copies of the weights `convert` took (transformer, embeddings,
    heads); the text conditioner and fuser stay. Afterwards `lm` can no longer run by itself.
    Returns the bytes freed (musicgen-small fp32: about 1.7 GB)."""
    freed = 0
    for module in (lm.transformer, lm.emb, lm.linears, lm.out_norm):
        if module is None:
            continue
        for param in module.parameters():
            freed += param.numel() * param.element_size()
            param.data = torch.empty(0, dtype=param.dtype, device=param.device)
    return freed
