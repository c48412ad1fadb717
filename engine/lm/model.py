"""The fast decoder's transformer: audiocraft's MusicGen LM weights, run our own way.

Built like gpt-fast's `model.py`: the weights converted once (`weights.py`, in the precision
`quantize.py` gives them), a static KV cache allocated once (`cache.py`), and two ways through
the layers: `prefill` of a run of positions (the token context of the window, in causal chunks on
CPU) and `step` of one position (with static shapes, replayed as a CUDA graph on CUDA:
`graph.py`). Classifier-free guidance is one batch of 2 (conditional, unconditional); the
cross-attention keys/values of the text condition are computed once per prompt. The loop that
samples from it is `generate.py`.

Shapes: B = 2 (cond, uncond), K codebooks, T positions, D model dim, H heads, Dh = D / H.
"""
from __future__ import annotations

import logging
import typing as tp

import torch
import torch.nn.functional as F

from .cache import KVCache, additive_mask, prefill_attention_backends
from .conditions import CrossConditions
from .fused_step import FusedStep, available as fused_step_available
from .graph import StepGraph
from .hardware import QUANTISED, compute_dtypes, resolve_dtype, resolve_kernels, resolve_kv_cache
from .kernels import load_cpu_kernels
from .native_step import NativeStep, why_not_fused
from .quantize import Dense, step_weights_onto_huge_pages
from .split_attention import SplitAttention, available as split_attention_available
from .weights import activation, check_supported, convert, release_source_weights

log = logging.getLogger(__name__)

#: On CPU the prefill runs in chunks of this many positions: bounded activations (2 × 256 × 4096
#: fp32 = 8 MiB for musicgen-small's feed-forward) that the allocator reuses instead of faulting
#: in. On CUDA it is one pass (measured on an H100: 20 s of context in 0.07 s in chunks of 256).
PREFILL_CHUNK_POSITIONS = 256
#: The cache holds a multiple of this many positions, so that the static step's attention mask
#: is aligned for CUDA's fused attention kernels.
CACHE_ALIGN_POSITIONS = 16


class FastLM:
    """Runs an audiocraft `LMModel`'s weights (`generate.generate` samples from it as
    `LMModel.generate` does).

    `max_frames`: the longest sequence (prompt + new frames) a generation will ask for; the
    KV cache holds max_frames + max(delays) + 1 positions.
    `dtype`: "auto" | "fp32" | "bf16" | "fp16" | "int8" | "int4" (hardware.resolve_dtype).
    `fuse_epilogues`: residual adds (and, on CUDA in 16 bits, the GELU) inside the GEMMs
    (`_layers`); False: as separate ops (the bench's baseline). `split_attention`: the static
    step's self-attention on the fixed-span kernel (split_attention.py, CUDA) instead of SDPA.
    `fused_step`: the static step on the fused Triton kernels where they run (fused_step.py: CUDA,
    dense weights; 1.8x the torch step for musicgen-small on an H200); False: torch's ops.
    `kernels`: "auto" | "graph" | "native" | "compiled" | "eager". graph: the decode step with
    static shapes (attention over the whole cache under a mask), captured once as a CUDA graph
    and replayed at every position (on CPU the same step runs eagerly: for tests); native: the
    AVX-512 kernels of `kernels/` for the decode step's int8 / int4 linears and its attention
    over an fp16 or 8-bit cache, the whole step through the layers in one native call where all
    of it can be (`native_step`; built once, about half a minute, cached on disk; where they
    cannot be built: compiled); compiled:
    the decode attention made by torch.compile, fbgemm's int8 linears; eager: torch's kernels
    only. auto: hardware.resolve_kernels.
    """

    def __init__(self, lm, max_frames: int, dtype: str = "auto",
                 device: tp.Optional[torch.device] = None, kernels: str = "auto", kv_cache: str = "auto",
                 fuse_epilogues: bool = True, split_attention: bool = False, fused_step: bool = True):
        self.delays = check_supported(lm)
        self.lm = lm  # for the condition provider (text encoder), kept in its own precision
        self.device = device or next(lm.parameters()).device
        self.mode = resolve_dtype(dtype, self.device)
        self.compute_dtype, self.cache_dtype = compute_dtypes(self.mode)
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
        self.activation = activation(t.layers[0])
        self.max_positions = int(max_frames) + max(self.delays) + 1
        cache_positions = -(-self.max_positions // CACHE_ALIGN_POSITIONS) * CACHE_ALIGN_POSITIONS
        kernels = resolve_kernels(kernels, self.device, self.mode, self.dim, kv_cache)
        native = load_cpu_kernels() if kernels == "native" and self.device.type == "cpu" else None
        self.kernels = "compiled" if kernels == "native" and native is None else kernels
        self.native = native  # the loaded CPU kernels module (also the sampler's: generate.py), or None
        weights = convert(lm, self.mode, self.compute_dtype, native)
        self.layers, self.embeddings = weights.layers, weights.embeddings  # embeddings [K, card+1, D]
        self.out_norm, self.head = weights.out_norm, weights.head
        self._native_gelu = native.gelu if native is not None and self.activation is F.gelu else None
        # Residual adds in the GEMMs; on CUDA in 16 bits, the GELU in ff1's GEMM too (`_layers`).
        self.fuse_epilogues = bool(fuse_epilogues)
        self.gelu_epilogue = (self.fuse_epilogues and self.device.type == "cuda" and self.activation is F.gelu
                              and self.compute_dtype in (torch.bfloat16, torch.float16)
                              and all(isinstance(layer.ff1, Dense) for layer in self.layers))
        self.cross = CrossConditions(lm, self.layers, self.heads, self.head_dim, self.compute_dtype)
        self.cache_dtype = resolve_kv_cache(kv_cache, self.mode, self.cache_dtype, native, self.kernels)
        self.cache = KVCache(len(self.layers), self.heads, cache_positions, self.head_dim,
                             self.cache_dtype, self.device, self.kernels, native)
        # Positional embeddings for every cached position, computed once: [positions, D].
        self.pos_emb = self._sin_embedding(cache_positions).to(self.compute_dtype)
        # The static decode step's inputs (kernels="graph") and its CUDA graph.
        self._step_tokens = torch.zeros(2, self.num_codebooks, 1, dtype=torch.long, device=self.device)
        self._step_position = torch.zeros(1, dtype=torch.long, device=self.device)
        self._positions = torch.arange(cache_positions, device=self.device)
        self.step_graph = StepGraph(self._forward_static, self.device)
        self._split = (SplitAttention(2, self.heads, cache_positions, self.head_dim, self.device)
                       if split_attention and self.device.type == "cuda" and split_attention_available() else None)
        self._fused = None
        if fused_step and self.kernels == "graph":
            unfused = fused_step_available(self)
            self._fused = FusedStep(self) if unfused is None else None
            if unfused is not None and self.device.type == "cuda":
                log.info("decoder: the decode step runs on torch's ops, not the fused kernels (%s)", unfused)
        # native: the decode step's layers in one native call where everything in them can be.
        if self.kernels == "native":
            step_weights_onto_huge_pages([lin for layer in self.layers for lin in layer.linears()] + [self.head])
        unfused = why_not_fused(self) if native is not None else "no native kernels"
        self.native_step = NativeStep(self, native) if unfused is None else None
        if self.kernels == "native" and unfused is not None:
            log.info("decoder: the decode step runs as torch ops around the native kernels (%s)", unfused)

    def _sin_embedding(self, length: int) -> torch.Tensor:
        """audiocraft's `create_sin_embedding` for positions 0..length-1, in fp32: [length, D]."""
        half = self.dim // 2
        positions = torch.arange(length, dtype=torch.float32, device=self.device).view(-1, 1)
        adim = torch.arange(half, dtype=torch.float32, device=self.device).view(1, -1)
        max_period = torch.full([], self.max_period, dtype=torch.float32, device=self.device)
        phase = positions / (max_period ** (adim / (half - 1)))
        return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)

    def parameter_bytes(self) -> int:
        """Bytes of the layers' weights read per decode step (the memory-bandwidth floor of a step)."""
        return sum(lin.weight_bytes() for layer in self.layers for lin in layer.linears())

    def step_bytes(self, positions: int) -> int:
        """Bytes one decode step reads with `positions` cached: every layer's weights and the
        output heads, the self-attention keys and values of both CFG rows up to there, and the
        text condition's cross-attention keys and values."""
        cross = self.cross.keys
        cross_bytes = 0 if cross is None else 2 * cross.numel() * cross.element_size()
        return self.parameter_bytes() + self.head.weight_bytes() + positions * self.cache.position_bytes() + cross_bytes

    def prefill_ops(self, positions: int, text_positions: int = 0) -> int:
        """Arithmetic operations (2 per multiply-add) of a prefill of `positions` for both CFG
        rows: the layers' linears at every position and the causal self-attention (plus the
        cross-attention over `text_positions`, which rows in `cross.silent_rows` leave out with
        its linears: `_cross_attention`); the output heads run at the last position only."""
        per_row = sum(lin.shape[0] * lin.shape[1] for layer in self.layers for lin in layer.linears())
        cross_per_row = sum(lin.shape[0] * lin.shape[1]
                            for layer in self.layers for lin in (layer.q_cross, layer.out_cross))
        self_attention = len(self.layers) * self.dim * positions * positions
        cross_attention = len(self.layers) * self.dim * 2 * positions * text_positions
        silent = len(self.cross.silent_rows)
        return 2 * (2 * (positions * per_row + self_attention + cross_attention)
                    - silent * (positions * cross_per_row + cross_attention))

    @property
    def native_linears(self) -> bool:
        """Every int8 (int4) linear of the decode step runs on the native kernel."""
        linears = [lin for layer in self.layers for lin in layer.linears()]
        return self.mode in QUANTISED and all(getattr(lin, "native", False) for lin in linears)

    def release_source_weights(self) -> int:
        """Free audiocraft's copies of the weights this decoder converted (weights.py)."""
        return release_source_weights(self.lm)

    # -- conditions -------------------------------------------------------------------------
    def set_conditions(self, attributes, weights: tp.Optional[tp.Sequence[float]] = None) -> None:
        """The text condition: one audiocraft ConditioningAttributes (a prompt), or a list of
        them mixed with `weights` (conditions.py). Computed once per prompt set."""
        if not isinstance(attributes, (list, tuple)):
            attributes = [attributes]
        replaced = self.cross.set(attributes, weights)
        if self._fused is not None:
            replaced = self._fused.conditions_changed() or replaced
            if len(attributes) > 1:
                self._fused.mix(weights)
        if replaced:
            self.step_graph.invalidate()

    def mix_conditions(self, weights: tp.Sequence[float]) -> None:
        """New weights for the prompts of the last `set_conditions` (a morph step)."""
        self.cross.mix(weights)
        if self._fused is not None:
            self._fused.mix(weights)

    # -- the transformer ----------------------------------------------------------------------
    def _embed(self, tokens: torch.Tensor, positional: torch.Tensor) -> torch.Tensor:
        """tokens [B, K, T] and their sinusoidal embeddings [T, D] → the input x [B, T, D]."""
        x = self.embeddings[0][tokens[:, 0]]
        for k in range(1, tokens.shape[1]):
            x = x + self.embeddings[k][tokens[:, k]]
        return x + self.positional_scale * positional

    def _layers(self, x: torch.Tensor,
                self_attention: tp.Callable[[int, torch.Tensor], torch.Tensor],
                cross: tp.Optional[tp.Tuple[torch.Tensor, torch.Tensor, tp.Optional[torch.Tensor]]] = None,
                last_attention: tp.Optional[tp.Callable[[int, torch.Tensor], torch.Tensor]] = None,
                silent_rows: tp.Sequence[int] = ()) -> torch.Tensor:
        """x [B, T, D] through every layer. `self_attention(layer, qkv)` stores the fresh
        keys/values qkv[1:] (qkv [3, B, H, T, Dh]: queries, keys, values) in the cache and returns
        the attention output [B, H, T, Dh]. `cross`: the text condition's (keys, values [L, B, H,
        Tc, Dh], mask [B, 1, 1, Tc] or None); default: this decoder's (`set_conditions`).
        `last_attention(layer, qkv)`: where only the last position's output is wanted (a prefill),
        the last layer's self-attention, which stores every position's keys/values and returns
        the last query's output [B, H, 1, Dh]; from there that layer runs on the last position
        alone (→ x [B, 1, D]): its other linears at the other positions feed nothing.
        `silent_rows`: rows whose text condition is all zeros (`CrossConditions.silent_rows`):
        their cross-attention is left out (`_cross_attention`).
        With `fuse_epilogues`, each residual add is the C of its GEMM and, where `gelu_epilogue`,
        the GELU runs in the first feed-forward GEMM: 3 or 4 kernels fewer per layer."""
        B, T, D = x.shape
        H, Dh = self.heads, self.head_dim
        cross_k, cross_v, cross_mask = cross or (self.cross.keys, self.cross.values, None)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            qkv = layer.qkv(layer.norm_self(x)).view(B, T, 3, H, Dh).permute(2, 0, 3, 1, 4)
            if i == last and last_attention is not None and T > 1:
                a = last_attention(i, qkv)
                x, T = x[:, -1:], 1
            else:
                a = self_attention(i, qkv)
            x = self._residual(layer.out_self, x, a.transpose(1, 2).reshape(B, T, D).to(self.compute_dtype))
            x = self._cross_attention(layer, x, cross_k[i], cross_v[i], cross_mask, silent_rows)
            h = layer.norm_ff(x)
            h = layer.ff1.gelu(h) if self.gelu_epilogue else self._activate(layer.ff1(h))
            x = self._residual(layer.ff2, x, h)
        return x

    def _cross_attention(self, layer, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                         mask: tp.Optional[torch.Tensor], silent_rows: tp.Sequence[int] = ()) -> torch.Tensor:
        """x [B, T, D] plus its cross-attention to the text condition (keys, values [B, H, Tc, Dh],
        mask [B, 1, 1, Tc] or None). A row in `silent_rows` has all-zero keys and values (CFG's
        unconditional row: audiocraft zeroes a nulled text's embedding, and MusicGen's key/value
        projections have no bias), so its attention output is exactly zero and its residual
        gains only the out-projection's bias: the norm, the query and out-projections and the
        attention run for the other rows alone (a prefill's linears 1/14 fewer per such row)."""
        B, T, D = x.shape
        H, Dh = self.heads, self.head_dim
        talking = [r for r in range(B) if r not in silent_rows]
        if len(talking) < B:
            if not talking:
                return x if layer.out_cross.bias is None else x + layer.out_cross.bias
            rows = torch.tensor(talking, device=x.device)
            spoken = self._cross_attention(layer, x.index_select(0, rows), keys.index_select(0, rows),
                                           values.index_select(0, rows),
                                           None if mask is None else mask.index_select(0, rows))
            quiet = x if layer.out_cross.bias is None else x + layer.out_cross.bias
            return quiet.index_copy(0, rows, spoken)
        q = layer.q_cross(layer.norm_cross(x)).view(B, T, H, Dh).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return self._residual(layer.out_cross, x, a.transpose(1, 2).reshape(B, T, D).to(self.compute_dtype))

    def _activate(self, x: torch.Tensor) -> torch.Tensor:
        """The feed-forward activation; GELU of fp32 on the native kernel where it is loaded
        (torch's exact GELU takes 0.2-0.4 s of a 20 s prefill on 2 cores; the same erf form as
        the fused decode step's)."""
        if self._native_gelu is not None and x.dtype == torch.float32:
            return self._native_gelu(x)
        return self.activation(x)

    def _residual(self, linear, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """residual + linear(x): one GEMM with `fuse_epilogues` (quantize.Dense.add_to)."""
        return linear.add_to(residual, x) if self.fuse_epilogues else residual + linear(x)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, ..., D] → logits [B, ..., K * card] in fp32."""
        if self.out_norm is not None:
            x = self.out_norm(x)
        return self.head(x).float()

    def forward(self, tokens: torch.Tensor, start: int, last_only: bool = True,
                cache: tp.Optional[KVCache] = None, cross: tp.Optional[CrossConditions] = None) -> torch.Tensor:
        """tokens [2, K, T] at positions start..start+T-1 → logits [2, K, card] of the last one
        (`last_only=False`: of every position, [2, K, T, card]). `cache` and `cross`: another
        generation's (a slot of a batched decoder: batch.py); default: this decoder's."""
        cache = cache or self.cache
        cross = cross or self.cross
        B, K, T = tokens.shape
        end = start + T
        x = self._embed(tokens, self.pos_emb[start:end])  # [B, T, D]
        mask = None
        if 1 < T < end:  # a later prefill chunk: causal against everything cached before it
            mask = torch.ones(T, end, dtype=torch.bool, device=self.device).tril(diagonal=start)

        def self_attention(i: int, qkv: torch.Tensor) -> torch.Tensor:
            q, k, v = qkv.unbind(0)
            cache.write(i, start, k, v)
            if T > 1 and (native := cache.attend_chunk(i, q, start)) is not None:
                return native
            if T == end:  # the first prefill chunk: causal within the fresh keys/values
                return F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
            if mask is not None:
                keys, values = cache.read(i, end, self.compute_dtype)
                return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
            return cache.attend(i, q, end)

        def last_attention(i: int, qkv: torch.Tensor) -> torch.Tensor:
            cache.write(i, start, qkv[1], qkv[2])
            return cache.attend(i, qkv[0][:, :, -1:], end)

        # (a single position gains nothing from leaving the silent rows out: only prefills do)
        x = self._layers(x, self_attention, (cross.keys, cross.values, None), last_attention if last_only else None,
                         cross.silent_rows if T > 1 else ())
        logits = self._logits(x[:, -1] if last_only else x)
        if last_only:
            return logits.view(B, K, self.card)
        return logits.view(B, T, K, self.card).transpose(1, 2)

    def _forward_static(self) -> torch.Tensor:
        """The decode step of `_step_tokens` [2, K, 1] at position `_step_position` [1] (both
        on the device), with no shape or Python value depending on the position, so that one
        CUDA graph replays it at every position: keys/values go into the cache by index_copy_,
        and the query attends over the whole cache under a mask (cached positions ≤ position;
        later ones hold stale values and are masked out). → logits [2, K, card]."""
        tokens, position = self._step_tokens, self._step_position
        if self._fused is not None:
            return self._fused(tokens, position)
        B, K, _ = tokens.shape
        x = self._embed(tokens, self.pos_emb.index_select(0, position))  # [B, 1, D]
        mask = (additive_mask(self._positions <= position, self.compute_dtype).view(1, 1, 1, -1)
                if self._split is None else None)

        # [B]: the split kernel's per-row positions (made only where it runs: this is every step)
        rows_position = position.expand(B).contiguous() if self._split is not None else None

        def self_attention(i: int, qkv: torch.Tensor) -> torch.Tensor:
            self.cache.write_at(i, position, qkv[1:])
            if self._split is not None:
                return self._split(qkv[0], self.cache.k[i], self.cache.v[i], rows_position)
            return self.cache.attend_masked(i, qkv[0], mask)

        return self._logits(self._layers(x, self_attention)[:, -1]).view(B, K, self.card)

    def step(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        """tokens [K] at `position` → logits [2, K, card]. With `native_step` (CPU): the layers
        in one native call. kernels="graph": the static step (step_graph: replayed as a CUDA
        graph on CUDA, captured on first use and again after the text condition changes shape;
        eager elsewhere); otherwise `forward`."""
        if self.native_step is not None:
            return self._step_native(tokens, position)
        if self.kernels != "graph":
            return self.forward(tokens.view(1, -1, 1).expand(2, -1, -1), position)
        self._step_tokens.copy_(tokens.view(1, -1, 1).expand(2, -1, -1))
        self._step_position.fill_(position)
        return self.step_graph()

    def _step_native(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        """`step` on the native fused step (native_step.py): tokens [K] → logits [2, K, card]."""
        x = self.native_step.embed(tokens.view(1, -1), torch.tensor([position]))
        text = self.cross.keys.shape[3]
        x = self.native_step(x.expand(2, -1), self.cache, (0, 1), (position, position),
                             self.cross.keys, self.cross.values, (text, text))
        return (x if self.native_step.logits else self._logits(x)).view(2, self.num_codebooks, self.card)

    def prefill(self, tokens: torch.Tensor, last_only: bool = True, cache: tp.Optional[KVCache] = None,
                cross: tp.Optional[CrossConditions] = None) -> torch.Tensor:
        """tokens [2, K, T] from position 0, in causal chunks of PREFILL_CHUNK_POSITIONS on CPU,
        in one pass on CUDA → logits of the last position [2, K, card] (`last_only=False`: all,
        [2, K, T, card]). `cache`, `cross`: as `forward`."""
        chunk = PREFILL_CHUNK_POSITIONS if self.device.type == "cpu" else max(1, tokens.shape[-1])
        with prefill_attention_backends(self.device):
            chunks = [self.forward(tokens[..., a:a + chunk], a, last_only, cache, cross)
                      for a in range(0, tokens.shape[-1], chunk)]
        return chunks[-1] if last_only else torch.cat(chunks, dim=2)
