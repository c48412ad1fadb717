"""A fast decoder for MusicGen's language model: audiocraft's weights, our own loop.

What it computes is audiocraft's `LMModel.generate` (delay pattern, classifier-free guidance,
top-k / top-p sampling); how it computes it follows gpt-fast's `generate.py`:

- prefill: the whole prompt (the token context of the window) in causal chunks;
- a decode step (`_forward` of one position): through the transformer against a static KV cache
  [layers, 2, heads, max_positions, head_dim], allocated once, written in place;
- classifier-free guidance as one batch of 2 (conditional, unconditional);
- the cross-attention keys/values of the text condition computed once per prompt, not per step;
- the 4 codebook heads as one matmul, and their sampling fused into one top-k/multinomial;
- weights in the chosen precision: fp32, bf16, fp16, or int8 (per-channel weights with
  dynamically quantised activations: fbgemm's VNNI kernels on x86 CPUs, the fastest at batch 2
  there, with an fp16 KV cache); `auto` picks by hardware (`resolve_dtype`).

Shapes: B = 2 (cond, uncond), K codebooks, T positions, D model dim, H heads, Dh = D / H.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import typing as tp
import warnings

import torch
import torch.nn.functional as F

from .config import DTYPE_CHOICES

log = logging.getLogger(__name__)

#: How the decode step runs: see FastLM.
KERNEL_CHOICES = ("auto", "graph", "native", "compiled", "eager")
_TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ProgressCallback = tp.Callable[[int, int], None]
#: On CPU the prefill runs in chunks of this many positions: bounded activations (2 × 256 × 4096
#: fp32 = 8 MiB for musicgen-small's feed-forward) that the allocator reuses instead of faulting
#: in. On CUDA it is one pass (measured on an H100: 20 s of context in 0.07 s in chunks of 256).
PREFILL_CHUNK_POSITIONS = 256


class UnsupportedModel(ValueError):
    """The LM uses a feature the fast decoder does not implement (audiocraft's loop is used)."""


def cpu_flags() -> tp.Set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def resolve_dtype(name: str, device: torch.device) -> str:
    """`auto` → the fastest precision that keeps the model's quality on this hardware:
    CUDA: bf16 where supported, else fp16; CPU: int8 where fbgemm has VNNI/AVX2 kernels
    (cross-entropy gap measured by bench/bench_quality.py), else fp32."""
    if name not in DTYPE_CHOICES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPE_CHOICES)} (got {name!r})")
    if device.type == "cuda":
        if name == "int8":
            raise ValueError("--dtype int8 is a CPU path; use bf16 or fp16 on CUDA")
        if name == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return name
    if name != "auto":
        return name
    flags = cpu_flags()
    if "fbgemm" in torch.backends.quantized.supported_engines and (
            "avx512_vnni" in flags or "avx2" in flags):
        return "int8"
    return "fp32"


# -- linear layers in each precision ------------------------------------------------------------
class _Dense:
    """y = x W^T + b with W [out, in] stored in `dtype`."""

    def __init__(self, weight: torch.Tensor, bias: tp.Optional[torch.Tensor], dtype: torch.dtype):
        self.weight = weight.detach().to(dtype).contiguous()
        self.bias = None if bias is None else bias.detach().to(dtype).contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def weight_bytes(self) -> int:
        return self.weight.numel() * self.weight.element_size()


class _Int8:
    """Per-output-channel symmetric int8 weights, activations quantised per call. Input and
    output are fp32. Prefill (many rows): fbgemm's dynamic int8 GEMM. Decode (≤ 4 rows): the
    native VNNI kernel when `kernels` is given (engine/kernels/int8_gemv.cpp: per-row int8
    activations, reads the weights at ~33 GB/s here where fbgemm reaches ~27), else fbgemm."""

    def __init__(self, weight: torch.Tensor, bias: tp.Optional[torch.Tensor], kernels=None):
        w = weight.detach().float()
        scales = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
        self.bias = None if bias is None else bias.detach().float().contiguous()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            qweight = torch.quantize_per_channel(
                w, scales.double(), torch.zeros_like(scales, dtype=torch.long), 0, torch.qint8)
            self.packed = torch.ops.quantized.linear_prepack(qweight, self.bias)
        self.kernels = kernels if w.shape[1] % 64 == 0 else None
        if self.kernels is not None:
            self.weight = qweight.int_repr().contiguous()
            self.scales = scales.float().contiguous()
            self.row_sums = kernels.prepare(self.weight)
            self._no_bias = torch.empty(0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1])
        if self.kernels is not None and rows.shape[0] <= 4:
            y = self.kernels.gemv(rows, self.weight, self.row_sums, self.scales,
                                  self._no_bias if self.bias is None else self.bias)
        else:
            y = torch.ops.quantized.linear_dynamic(rows, self.packed, True)
        return y.view(*shape[:-1], y.shape[-1])

    def weight_bytes(self) -> int:
        return self.packed.unpack()[0].numel() if self.kernels is None else self.weight.numel()


def _linear(weight, bias, mode: str, compute_dtype: torch.dtype, kernels=None):
    return _Int8(weight, bias, kernels) if mode == "int8" else _Dense(weight, bias, compute_dtype)


@dataclasses.dataclass
class _Norm:
    weight: torch.Tensor
    bias: tp.Optional[torch.Tensor]
    eps: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)


@dataclasses.dataclass
class _Layer:
    norm_self: _Norm
    qkv: tp.Any
    out_self: tp.Any
    norm_cross: _Norm
    q_cross: tp.Any
    kv_cross: _Dense  # used once per prompt: kept dense
    out_cross: tp.Any
    norm_ff: _Norm
    ff1: tp.Any
    ff2: tp.Any


def _decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Softmax attention of one query: q [B, H, 1, Dh], keys/values [B, H, T, Dh] in any
    precision → [B, H, 1, Dh] fp32. Written as reductions so that torch.compile makes it one
    pass over the cache, converting as it reads."""
    scale = q.shape[-1] ** -0.5
    scores = (q.float() * keys.float()).sum(-1, keepdim=True) * scale  # [B, H, T, 1]
    weights = torch.softmax(scores, dim=-2)
    return (weights * values.float()).sum(-2, keepdim=True)


class _KVCache:
    """Self-attention keys and values of every layer, allocated once: [layers, 2, H, positions,
    Dh] in `dtype`.

    `kernels`: "native" | "compiled" | anything else (eager). The first two run `attend` as
    a kernel that reads the cache once, converting as it goes (CPU attention kernels for a single
    query over an fp16/bf16 cache are 4-6x slower than fp32, and the cache is as many bytes per
    step as the weights): the native AVX-512 one (`native`: the loaded engine/kernels module,
    fp16 only) or one made by torch.compile. "eager": torch's SDPA or `_decode_attention`.
    (An int8 cache with per-position scales halved the bytes again but was no faster end to end.)"""

    def __init__(self, layers: int, heads: int, positions: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device, kernels: str, native=None):
        shape = (layers, 2, heads, positions, head_dim)
        self.dtype = dtype
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self._native = native if (kernels == "native" and dtype == torch.float16
                                  and head_dim % 16 == 0) else None
        self._kernel = (torch.compile(_decode_attention, dynamic=True)
                        if kernels in ("native", "compiled") and self._native is None else None)

    @property
    def kernel(self) -> str:
        """Which decode attention runs: native, compiled or eager."""
        return "native" if self._native is not None else "compiled" if self._kernel is not None else "eager"

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v [B, H, T, Dh] for positions start..start+T-1."""
        end = start + k.shape[2]
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v

    def write_at(self, layer: int, position: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v [B, H, 1, Dh] for the position held in the device tensor `position` [1] (no
        host value: a CUDA graph replays it at every position)."""
        self.k[layer].index_copy_(2, position, k)
        self.v[layer].index_copy_(2, position, v)

    def attend_masked(self, layer: int, q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """q [B, H, 1, Dh] against every cached position where `mask` [1, 1, 1, positions] is
        True → [B, H, 1, Dh] (shapes independent of how many are cached)."""
        return F.scaled_dot_product_attention(q, self.k[layer], self.v[layer], attn_mask=mask)

    def read(self, layer: int, end: int, dtype: torch.dtype) -> tp.Tuple[torch.Tensor, torch.Tensor]:
        """Positions 0..end-1 as [B, H, end, Dh] in `dtype`."""
        return self.k[layer, :, :, :end].to(dtype), self.v[layer, :, :, :end].to(dtype)

    def attend(self, layer: int, q: torch.Tensor, end: int) -> torch.Tensor:
        """One query q [B, H, 1, Dh] against positions 0..end-1 → [B, H, 1, Dh]."""
        if self._native is not None:
            B, H, _, Dh = q.shape
            P = self.k.shape[3]
            scores = self._native.scores(q.reshape(B * H, Dh).float(), self.k[layer].view(B * H, P, Dh), end)
            weights = torch.softmax(scores, dim=-1)
            return self._native.weighted(weights, self.v[layer].view(B * H, P, Dh)).view(B, H, 1, Dh)
        k, v = self.k[layer, :, :, :end], self.v[layer, :, :, :end]
        if self._kernel is not None:
            try:
                return self._kernel(q, k, v)
            except Exception as err:  # e.g. no C++ compiler: the same math, eagerly
                log.warning("fused attention unavailable (%s); using the eager kernel",
                            str(err).splitlines()[0][:200])
                self._kernel = None
        if q.dtype == self.dtype:
            return F.scaled_dot_product_attention(q, k, v)
        return _decode_attention(q, k, v)


def _prefill_attention_backends(device: torch.device):
    """On CUDA, the prefill's attention runs in flash / memory-efficient kernels, not cuDNN's:
    cuDNN builds a plan for every new sequence length, and each stride's context has a new one
    (measured on an H100: the second stride of the 1, 2, 4 s ramp took 1.2 s instead of 0.3)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def _check_supported(lm) -> tp.List[int]:
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


class FastLM:
    """Runs an audiocraft `LMModel`'s weights; `generate` matches `LMModel.generate`.

    `max_frames`: the longest sequence (prompt + new frames) `generate` will be asked for; the
    KV cache holds max_frames + max(delays) + 1 positions.
    `kernels`: "auto" | "graph" | "native" | "compiled" | "eager". graph: the decode step with
    static shapes (attention over the whole cache under a mask), captured once as a CUDA graph
    and replayed at every position, so a step costs one launch instead of hundreds (on CPU the
    same step runs eagerly: for tests); native: the AVX-512 kernels of engine/kernels for the
    decode step's int8 linears and fp16 attention (built once, about half a minute, cached on
    disk; where they cannot be built: compiled); compiled: the decode attention made by
    torch.compile, fbgemm's int8 linears; eager: torch's kernels only.
    auto = graph on CUDA; on CPU native for reduced precision and models of width ≥ 512, else
    eager.
    """

    def __init__(self, lm, max_frames: int, dtype: str = "auto",
                 device: tp.Optional[torch.device] = None,
                 kernels: str = "auto"):
        self.delays = _check_supported(lm)
        self.lm = lm  # for the condition provider (text encoder), kept in its own precision
        self.device = device or next(lm.parameters()).device
        self.mode = resolve_dtype(dtype, self.device)
        # int8: fp32 activations (the quantised kernels take fp32) and an fp16 KV cache.
        self.compute_dtype = torch.float32 if self.mode == "int8" else _TORCH_DTYPES[self.mode]
        self.cache_dtype = torch.float16 if self.mode == "int8" else self.compute_dtype
        t = lm.transformer
        first = t.layers[0].self_attn
        self.dim = first.embed_dim
        self.heads = first.num_heads
        self.head_dim = self.dim // self.heads
        self.num_codebooks = lm.num_codebooks
        self.card = lm.card
        self.special_token = lm.special_token_id
        self.max_period = t.max_period
        self.positional_scale = t.positional_scale
        self.activation = self._activation(t.layers[0])
        self.max_positions = int(max_frames) + max(self.delays) + 1
        # The cache holds a multiple of 16 positions so that the static step's attention mask is
        # aligned for CUDA's fused attention kernels.
        cache_positions = -(-self.max_positions // 16) * 16
        mode, cd = self.mode, self.compute_dtype
        if kernels not in KERNEL_CHOICES:
            raise ValueError(f"kernels must be one of {', '.join(KERNEL_CHOICES)} (got {kernels!r})")
        if kernels == "auto":
            reduced = self.device.type == "cpu" and self.mode != "fp32"
            kernels = ("graph" if self.device.type == "cuda"
                       else "native" if reduced and self.dim >= 512 else "eager")
        native = None
        if kernels == "native" and self.device.type == "cpu":
            from .kernels import load_cpu_kernels
            native = load_cpu_kernels()
        self.kernels = kernels if native is not None or kernels != "native" else "compiled"

        def norm(module) -> _Norm:
            return _Norm(module.weight.detach().to(cd), None if module.bias is None
                         else module.bias.detach().to(cd), module.eps)

        def lin(module):
            return _linear(module.weight, module.bias, mode, cd, native)

        self.layers: tp.List[_Layer] = []
        D = self.dim
        with torch.no_grad():
            for layer in t.layers:
                sa, ca = layer.self_attn, layer.cross_attention
                ca_bias = ca.in_proj_bias
                self.layers.append(_Layer(
                    norm_self=norm(layer.norm1),
                    qkv=_linear(sa.in_proj_weight, sa.in_proj_bias, mode, cd, native),
                    out_self=lin(sa.out_proj),
                    norm_cross=norm(layer.norm_cross),
                    q_cross=_linear(ca.in_proj_weight[:D], None if ca_bias is None else ca_bias[:D],
                                    mode, cd, native),
                    kv_cross=_Dense(ca.in_proj_weight[D:], None if ca_bias is None else ca_bias[D:], cd),
                    out_cross=lin(ca.out_proj),
                    norm_ff=norm(layer.norm2),
                    ff1=lin(layer.linear1),
                    ff2=lin(layer.linear2),
                ))
            self.embeddings = torch.stack([e.weight.detach() for e in lm.emb]).to(cd)  # [K, card+1, D]
            self.out_norm = norm(lm.out_norm) if lm.out_norm is not None else None
            head_w = torch.cat([lin_.weight for lin_ in lm.linears])  # [K*card, D]
            head_b = (torch.cat([lin_.bias for lin_ in lm.linears])
                      if lm.linears[0].bias is not None else None)
            self.head = _linear(head_w, head_b, mode, cd, native)
        self._cross: tp.Optional[tp.Tuple[str, tp.List[torch.Tensor], tp.List[torch.Tensor]]] = None
        self.cache = _KVCache(len(self.layers), self.heads, cache_positions, self.head_dim,
                              self.cache_dtype, self.device, self.kernels, native)
        # Positional embeddings for every cached position, computed once: [positions, D].
        self.pos_emb = self._sin_embedding(cache_positions).to(cd)
        # The static decode step's inputs and output (kernels="graph"), and its CUDA graph.
        self._step_tokens = torch.zeros(2, self.num_codebooks, 1, dtype=torch.long, device=self.device)
        self._step_position = torch.zeros(1, dtype=torch.long, device=self.device)
        self._positions = torch.arange(cache_positions, device=self.device)
        self._step_logits: tp.Optional[torch.Tensor] = None
        self._graph: tp.Optional["torch.cuda.CUDAGraph"] = None

    @staticmethod
    def _activation(layer) -> tp.Callable[[torch.Tensor], torch.Tensor]:
        act = layer.activation
        if act is F.gelu or isinstance(act, torch.nn.GELU):
            return F.gelu
        if act is F.relu or isinstance(act, torch.nn.ReLU):
            return F.relu
        raise UnsupportedModel(f"activation {act!r} not implemented")

    def _sin_embedding(self, length: int) -> torch.Tensor:
        """audiocraft's `create_sin_embedding` for positions 0..length-1, in fp32: [length, D]."""
        half = self.dim // 2
        positions = torch.arange(length, dtype=torch.float32, device=self.device).view(-1, 1)
        adim = torch.arange(half, dtype=torch.float32, device=self.device).view(1, -1)
        max_period = torch.full([], self.max_period, dtype=torch.float32, device=self.device)
        phase = positions / (max_period ** (adim / (half - 1)))
        return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)

    def parameter_bytes(self) -> int:
        """Bytes of weights read per decode step (the memory-bandwidth floor of a step)."""
        total = 0
        for layer in self.layers:
            for lin in (layer.qkv, layer.out_self, layer.q_cross, layer.out_cross, layer.ff1, layer.ff2):
                total += lin.weight_bytes()
        return total

    def release_source_weights(self) -> int:
        """Free audiocraft's own copies of the weights this decoder has converted (transformer,
        embeddings, heads); the text conditioner and fuser stay. Afterwards `self.lm` can no
        longer run by itself. Returns the bytes freed (musicgen-small fp32: about 1.7 GB)."""
        lm, freed = self.lm, 0
        for module in (lm.transformer, lm.emb, lm.linears, lm.out_norm):
            if module is None:
                continue
            for param in module.parameters():
                freed += param.numel() * param.element_size()
                param.data = torch.empty(0, dtype=param.dtype, device=param.device)
        return freed

    # -- conditions -------------------------------------------------------------------------
    def set_conditions(self, attributes) -> None:
        """Compute the cross-attention keys/values for [conditioned, unconditioned] once.
        `attributes`: one audiocraft ConditioningAttributes (the text prompt)."""
        from audiocraft.modules.conditioners import ClassifierFreeGuidanceDropout
        key = repr(attributes)
        if self._cross is not None and self._cross[0] == key:
            return
        lm = self.lm
        conditions = [attributes] + ClassifierFreeGuidanceDropout(p=1.0)([attributes])
        tensors = lm.condition_provider(lm.condition_provider.tokenize(conditions))
        sources = [cond for name, (cond, _mask) in tensors.items()
                   if name in lm.fuser.cond2fuse and lm.fuser.cond2fuse[name] == "cross"]
        src = torch.cat(sources, dim=1).to(self.compute_dtype)  # [2, Tc, D]
        keys, values = [], []
        for layer in self.layers:
            kv = layer.kv_cross(src)  # [2, Tc, 2D]
            k, v = kv.view(2, -1, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            keys.append(k.contiguous())
            values.append(v.contiguous())
        if self._cross is not None and self._cross[1][0].shape == keys[0].shape:
            # Same shape: into the same tensors, which a captured CUDA graph reads.
            for old, new in zip(self._cross[1] + self._cross[2], keys + values):
                old.copy_(new)
            self._cross = (key, self._cross[1], self._cross[2])
        else:
            self._cross = (key, keys, values)
            self._graph = None

    # -- the transformer ----------------------------------------------------------------------
    def _embed(self, tokens: torch.Tensor, positional: torch.Tensor) -> torch.Tensor:
        """tokens [B, K, T] and their sinusoidal embeddings [T, D] → the input x [B, T, D]."""
        x = self.embeddings[0][tokens[:, 0]]
        for k in range(1, tokens.shape[1]):
            x = x + self.embeddings[k][tokens[:, k]]
        return x + self.positional_scale * positional

    def _layers(self, x: torch.Tensor,
                self_attention: tp.Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
                ) -> torch.Tensor:
        """x [B, T, D] through every layer. `self_attention(layer, q, k, v)` stores the fresh
        keys/values [B, H, T, Dh] in the cache and returns the attention output [B, H, T, Dh]."""
        B, T, D = x.shape
        H, Dh = self.heads, self.head_dim
        _, cross_k, cross_v = self._cross
        for i, layer in enumerate(self.layers):
            qkv = layer.qkv(layer.norm_self(x)).view(B, T, 3, H, Dh).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)  # [B, H, T, Dh]
            a = self_attention(i, q, k, v)
            x = x + layer.out_self(a.transpose(1, 2).reshape(B, T, D).to(self.compute_dtype))
            q = layer.q_cross(layer.norm_cross(x)).view(B, T, H, Dh).transpose(1, 2)
            a = F.scaled_dot_product_attention(q, cross_k[i], cross_v[i])
            x = x + layer.out_cross(a.transpose(1, 2).reshape(B, T, D).to(self.compute_dtype))
            x = x + layer.ff2(self.activation(layer.ff1(layer.norm_ff(x))))
        return x

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, ..., D] → logits [B, ..., K * card] in fp32."""
        if self.out_norm is not None:
            x = self.out_norm(x)
        return self.head(x).float()

    def _forward(self, tokens: torch.Tensor, start: int, last_only: bool = True) -> torch.Tensor:
        """tokens [2, K, T] at positions start..start+T-1 → logits [2, K, card] of the last one
        (`last_only=False`: of every position, [2, K, T, card])."""
        B, K, T = tokens.shape
        end = start + T
        x = self._embed(tokens, self.pos_emb[start:end])  # [B, T, D]
        mask = None
        if 1 < T < end:  # a later prefill chunk: causal against everything cached before it
            mask = torch.ones(T, end, dtype=torch.bool, device=self.device).tril(diagonal=start)

        def self_attention(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            self.cache.write(i, start, k, v)
            if T == end:  # the first prefill chunk: causal within the fresh keys/values
                return F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
            if mask is not None:
                keys, values = self.cache.read(i, end, self.compute_dtype)
                return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
            return self.cache.attend(i, q, end)

        x = self._layers(x, self_attention)
        logits = self._logits(x[:, -1] if last_only else x)
        if last_only:
            return logits.view(B, K, self.card)
        return logits.view(B, T, K, self.card).transpose(1, 2)

    # -- the decode step with static shapes (CUDA graphs) ----------------------------------------
    def _forward_static(self) -> torch.Tensor:
        """The decode step of `_step_tokens` [2, K, 1] at position `_step_position` [1] (both
        on the device), with no shape or Python value depending on the position, so that one
        CUDA graph replays it at every position: keys/values go into the cache by index_copy_,
        and the query attends over the whole cache under a mask (cached positions ≤ position;
        later ones hold stale values and are masked out). → logits [2, K, card]."""
        tokens, position = self._step_tokens, self._step_position
        B, K, _ = tokens.shape
        x = self._embed(tokens, self.pos_emb.index_select(0, position))  # [B, 1, D]
        mask = (self._positions <= position).view(1, 1, 1, -1)  # [1, 1, 1, cached positions]

        def self_attention(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            self.cache.write_at(i, position, k, v)
            return self.cache.attend_masked(i, q, mask)

        return self._logits(self._layers(x, self_attention)[:, -1]).view(B, K, self.card)

    def _step(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        """tokens [K] at `position` → logits [2, K, card]. kernels="graph": the static step,
        replayed as a CUDA graph on CUDA (captured on first use and again after the text
        condition changes shape), run eagerly elsewhere; otherwise `_forward`."""
        if self.kernels != "graph":
            return self._forward(tokens.view(1, -1, 1).expand(2, -1, -1), position)
        self._step_tokens.copy_(tokens.view(1, -1, 1).expand(2, -1, -1))
        self._step_position.fill_(position)
        if self.device.type != "cuda":
            return self._forward_static()
        if self._graph is None:
            self._capture()
        self._graph.replay()
        return self._step_logits

    def _capture(self) -> None:
        """Capture `_forward_static` as a CUDA graph (after warm-up runs on a side stream, as
        torch requires). It writes the cache at `_step_position`: harmless, since every
        position a step reads is written again by this generation's prefill or steps first."""
        started = time.perf_counter()
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._forward_static()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step_logits = self._forward_static()
        self._graph = graph
        log.info("decoder: decode step captured as a CUDA graph in %.2f s", time.perf_counter() - started)

    def _prefill(self, tokens: torch.Tensor, last_only: bool = True) -> torch.Tensor:
        """tokens [2, K, T] from position 0, in causal chunks of PREFILL_CHUNK_POSITIONS on CPU,
        in one pass on CUDA → logits of the last position [2, K, card] (`last_only=False`: all,
        [2, K, T, card])."""
        chunk = PREFILL_CHUNK_POSITIONS if self.device.type == "cpu" else max(1, tokens.shape[-1])
        with _prefill_attention_backends(self.device):
            chunks = [self._forward(tokens[..., a:a + chunk], a, last_only)
                      for a in range(0, tokens.shape[-1], chunk)]
        return chunks[-1] if last_only else torch.cat(chunks, dim=2)

    def cross_entropy(self, codes: torch.Tensor, attributes, cfg_coef: float = 3.0) -> float:
        """Mean cross-entropy (nats per token) of codes [K, T] under this model with guidance
        `cfg_coef`, teacher-forced (the usual quantisation-quality figure)."""
        sequence = self.pattern_sequence(codes.to(self.device))  # [K, S]
        self.set_conditions(attributes)
        inputs = sequence[:, :-1].unsqueeze(0).expand(2, -1, -1)
        with torch.inference_mode():
            logits = self._prefill(inputs, last_only=False)
        guided = logits[1] + (logits[0] - logits[1]) * cfg_coef  # [K, S-1, card]
        targets = sequence[:, 1:]
        real = targets != self.special_token
        log_probs = torch.log_softmax(guided, dim=-1)
        picked = log_probs.gather(-1, targets.clamp(max=self.card - 1).unsqueeze(-1)).squeeze(-1)
        return -picked[real].mean().item()

    # -- sampling -------------------------------------------------------------------------------
    @staticmethod
    def sample(logits: torch.Tensor, cfg_coef: float, temperature: float, top_k: int, top_p: float,
               generator: tp.Optional[torch.Generator]) -> torch.Tensor:
        """logits [2, K, card] (cond, uncond) → tokens [K]; the distribution of audiocraft's
        `_sample_next_token`, all codebooks in one call."""
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

    # -- generation -----------------------------------------------------------------------------
    def pattern_sequence(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [K, T] → the delayed pattern sequence [K, T + max(delays) + 1] the model reads:
        position s holds timestep s - 1 - delay[k], the special token elsewhere."""
        K, T = codes.shape
        sequence = torch.full((K, T + max(self.delays) + 1), self.special_token,
                              dtype=torch.long, device=codes.device)
        for k, d in enumerate(self.delays):
            sequence[k, 1 + d:1 + d + T] = codes[k]
        return sequence

    @torch.inference_mode()
    def generate(self, prompt: tp.Optional[torch.Tensor], attributes, new_frames: int, *,
                 temperature: float = 1.0, top_k: int = 250, top_p: float = 0.0,
                 cfg_coef: float = 3.0, generator: tp.Optional[torch.Generator] = None,
                 progress: tp.Optional[ProgressCallback] = None,
                 timings: tp.Optional[tp.Dict[str, float]] = None) -> torch.Tensor:
        """prompt codes [1, K, P] (or None) → codes [1, K, P + new_frames], like
        `LMModel.generate(prompt, [attributes], max_gen_len=P + new_frames, ...)`.
        `timings`, when given, receives prefill_seconds, decode_seconds and decode_steps."""
        K, delays = self.num_codebooks, self.delays
        P = 0 if prompt is None else prompt.shape[-1]
        total = P + int(new_frames)
        steps = total + max(delays) + 1  # pattern sequence length S
        if steps > self.max_positions:
            raise ValueError(f"{total} frames exceed the cache ({self.max_positions} positions)")
        self.set_conditions(attributes)
        # The delayed pattern sequence [K, S]: position s holds timestep s - 1 - delay[k].
        codes = torch.full((K, total), -1, dtype=torch.long, device=self.device)
        if P:
            codes[:, :P] = prompt[0].to(self.device)
        sequence = self.pattern_sequence(codes)
        first = P + 1 + min(delays)  # the first step that holds a timestep to generate
        # generated[s, k]: position s of codebook k holds a timestep to generate (not prompt,
        # not a special token).
        timesteps = torch.arange(steps).view(-1, 1) - 1 - torch.tensor(delays).view(1, -1)
        generated = ((timesteps >= P) & (timesteps < total)).to(self.device)  # [S, K]
        started = time.perf_counter()
        logits = self._prefill(sequence[:, :first].unsqueeze(0).expand(2, -1, -1))
        prefill_done = time.perf_counter()
        for offset in range(first, steps):
            tokens = self.sample(logits, cfg_coef, temperature, top_k, top_p, generator)
            sequence[:, offset] = torch.where(generated[offset], tokens, sequence[:, offset])
            if progress is not None:
                progress(1 + offset - first, steps - first)
            if offset + 1 < steps:
                logits = self._step(sequence[:, offset], offset)
        if timings is not None:
            timings.update(prefill_seconds=prefill_done - started,
                           decode_seconds=time.perf_counter() - prefill_done,
                           decode_steps=steps - first - 1)
        out = torch.stack([sequence[k, 1 + d:1 + d + total] for k, d in enumerate(delays)])
        return out.unsqueeze(0)
