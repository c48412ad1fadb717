"""Several generations in the same decode steps: a batched decoder over one FastLM's weights.

Each generation (a station's stride) holds a slot: two rows of the batch (cond, uncond), its own
rows of the KV cache, its own text condition and its own position. A slot is prefilled alone
(2 rows, its own shapes: `FastLM.prefill` on the slot's views), and every decode step runs all
slots at once with static shapes: tokens [2S, K, 1], one position per row, the self-attention
masked per row to the positions that row holds, the cross-attention over the text conditions
padded to a common length (a multiple of TEXT_BUCKET) and masked per row (on CPU, where nothing
is captured, each slot's self-attention reads only its own positions, with the cache's kernels).
A masked step (CUDA) computes the first n slots, n the smallest power of two that holds every busy slot
(idle slots among them are computed and ignored: their rows write only their own cache, which
their next prefill overwrites). On CUDA each n is one CUDA graph (padded: a few sizes, captured
once each, not per change of membership; captured again only when the text bucket grows), and
the capacity is a power of two. A row's numbers do not depend on n: the self-attention runs in a
kernel that does not split the cache by batch size (split_attention.py; without Triton the
memory-efficient SDPA) and the GEMMs in calls of at most
INVARIANT_GEMM_ROWS rows (measured op by op on an H100, bench/gpu/probe_rows.py, and the whole
step bitwise from 1 to 64 stations, probe_step.py), so a station's tokens are the same alone as
in any batch.

Shapes: S slots, B = 2S rows, K codebooks, L layers, H heads, Tc text positions, Dh head dim.
"""
from __future__ import annotations

import functools
import typing as tp

import torch
import torch.nn.functional as F

from .cache import additive_mask, row_invariant_attention
from .conditions import CrossConditions
from .fused_kernels import next_power_of_two
from .graph import StepGraph
from .model import FastLM
from .quantize import activations_per_group, gemm_rows_at_most
from .split_attention import SplitAttention, available as split_attention_available

#: The masked step's GEMMs run at most this many rows each: cuBLAS gives a row bitwise the same
#: result at 2..32 rows for every linear of musicgen-small and -large, but not at 64 (measured on
#: an H100, bench/gpu/probe_rows.py), so that stations' rows never depend on the batch size.
INVARIANT_GEMM_ROWS = 32
#: Text conditions are padded to a multiple of this many positions (T5 tokens): prompts of up to
#: this many tokens (most are under 30) share one shape, whatever the other stations play.
TEXT_BUCKET = 64


class BatchedDecoder:
    """`slots` generations over `fast`'s weights (whose own cache becomes slot 0's rows).
    `masked`: the step's self-attention over the whole cache under per-row masks (static: what
    the CUDA graph replays); False: each slot over its own positions; None: masked on CUDA."""

    def __init__(self, fast: FastLM, slots: int, masked: tp.Optional[bool] = None):
        self.fast = fast
        self.masked = fast.device.type == "cuda" if masked is None else bool(masked)
        self.slots = padded_slots(int(slots)) if self.masked else int(slots)
        rows = 2 * self.slots
        self.cache = fast.cache.with_rows(rows)
        fast.cache = self.cache.slot(0)  # one allocation: the decoder's own cache is slot 0
        self.conditions = [CrossConditions(fast.lm, fast.layers, fast.heads, fast.head_dim, fast.compute_dtype)
                           for _ in range(self.slots)]
        self.cross_keys: tp.Optional[torch.Tensor] = None  # [L, B, H, Tc, Dh]
        self.cross_values: tp.Optional[torch.Tensor] = None
        self.cross_mask: tp.Optional[torch.Tensor] = None  # [B, 1, 1, Tc]: the slot's own positions
        device = fast.device
        self._tokens = torch.full((rows, fast.num_codebooks, 1), fast.special_token, dtype=torch.long, device=device)
        self._positions = torch.zeros(rows, dtype=torch.long, device=device)
        self._grid = torch.arange(self.cache.k.shape[3], device=device)
        self._rows = torch.arange(rows, device=device)
        self._idle_tokens = torch.full((fast.num_codebooks,), fast.special_token, dtype=torch.long, device=device)
        self._linears = [lin for layer in fast.layers for lin in layer.linears()] + [fast.head]
        self._slot_caches = [self.cache.slot(slot) for slot in range(self.slots)]
        self._ends = [1] * self.slots  # positions each slot attends to (host values: CPU only)
        self._busy = [True] * self.slots  # slots with a stride in this step (CPU only: idle ones skip int8 work)
        self._graphs: tp.Dict[int, StepGraph] = {}  # slots computed → its step (graph)
        # CUDA: the self-attention cut into fixed spans (split_attention.py), else memory-efficient SDPA
        L, _, H, P, Dh = self.cache.k.shape
        self._split = (SplitAttention(rows, H, P, Dh, device)
                       if self.masked and device.type == "cuda" and split_attention_available() else None)

    @property
    def attention(self) -> str:
        """The step's self-attention: "split" (CUDA, split_attention.py), "memory-efficient"
        (CUDA without Triton), "sdpa" (masked on CPU: tests) or "per-slot" (CPU: each slot over
        its own positions)."""
        if self._split is not None:
            return "split"
        if self.masked:
            return "memory-efficient" if self.fast.device.type == "cuda" else "sdpa"
        return "per-slot"

    @property
    def step_sizes(self) -> tp.List[int]:
        """The slot counts a step has been computed for (on CUDA: the CUDA graphs)."""
        return sorted(self._graphs)

    # -- conditions -------------------------------------------------------------------------
    def set_conditions(self, slot: int, attributes, weights: tp.Optional[tp.Sequence[float]] = None) -> None:
        """Slot `slot`'s text condition: as FastLM.set_conditions."""
        if not isinstance(attributes, (list, tuple)):
            attributes = [attributes]
        self.conditions[slot].set(attributes, weights)
        self._place(slot)

    def mix_conditions(self, slot: int, weights: tp.Sequence[float]) -> None:
        self.conditions[slot].mix(weights)
        self._place(slot)

    def _place(self, slot: int) -> None:
        """Copy the slot's condition into the padded batch tensors (in place unless the bucket
        grows: then they are made anew, every slot placed again, the graph captured again)."""
        keys = self.conditions[slot].keys  # [L, 2, H, Tc, Dh]
        length = keys.shape[3]
        if self.cross_keys is None or length > self.cross_keys.shape[3]:
            padded = -(-length // TEXT_BUCKET) * TEXT_BUCKET
            L, _, H, _, Dh = keys.shape
            shape = (L, 2 * self.slots, H, padded, Dh)
            self.cross_keys = torch.zeros(shape, dtype=keys.dtype, device=keys.device)
            self.cross_values = torch.zeros(shape, dtype=keys.dtype, device=keys.device)
            self.cross_mask = torch.zeros((2 * self.slots, 1, 1, padded), dtype=torch.bool, device=keys.device)
            self.cross_mask[:, ..., 0] = True  # idle rows attend somewhere (their output is ignored)
            for graph in self._graphs.values():
                graph.invalidate()
            for other in range(self.slots):
                if other != slot and self.conditions[other].keys is not None:
                    self._copy(other)
        self._copy(slot)

    def _copy(self, slot: int) -> None:
        condition, rows = self.conditions[slot], slice(2 * slot, 2 * slot + 2)
        length = condition.keys.shape[3]
        self.cross_keys[:, rows].zero_()
        self.cross_values[:, rows].zero_()
        self.cross_keys[:, rows, :, :length] = condition.keys
        self.cross_values[:, rows, :, :length] = condition.values
        self.cross_mask[rows] = False
        self.cross_mask[rows, ..., :length] = True

    # -- the transformer ----------------------------------------------------------------------
    def prefill(self, slot: int, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [2, K, T] from position 0 into slot `slot` → logits [2, K, card] of the last."""
        return self.fast.prefill(tokens, cache=self._slot_caches[slot], cross=self.conditions[slot])

    def step(self, tokens: tp.Mapping[int, torch.Tensor], positions: tp.Mapping[int, int]) -> torch.Tensor:
        """One decode step of every slot: `tokens[slot]` [K] at `positions[slot]` for the busy
        slots (the others idle) → logits [n, 2, K, card] of the first n slots (a buffer the next
        step overwrites); masked: n the smallest power of two above every busy slot, else all."""
        S, K = self.slots, self.fast.num_codebooks
        stacked = torch.stack([tokens.get(slot, self._idle_tokens) for slot in range(S)])  # [S, K]
        self._tokens.copy_(stacked.repeat_interleave(2, dim=0).unsqueeze(-1))
        where = torch.tensor([positions.get(slot, 0) for slot in range(S)], dtype=torch.long)
        self._positions.copy_(where.repeat_interleave(2).to(self._positions.device))
        self._ends = [int(p) + 1 for p in where]
        self._busy = [slot in tokens for slot in range(S)]
        # (unmasked, on CPU: all slots, whose GEMMs' rows are not bitwise alike at every count;
        # the native step computes the busy rows only anyway)
        n = min(S, padded_slots(1 + max(tokens, default=0))) if self.masked else S
        if n not in self._graphs:
            self._graphs[n] = StepGraph(functools.partial(self._forward_step, n), self.fast.device)
        return self._graphs[n]().view(n, 2, K, self.fast.card)

    def _forward_step(self, n: int) -> torch.Tensor:
        """The batched decode step of the first n slots: `_tokens` [B, K, 1] at `_positions` [B]
        (device tensors: no shape or host value depends on them), B = 2n → logits [B, K, card]."""
        fast, B = self.fast, 2 * n
        tokens, positions = self._tokens[:B], self._positions[:B]
        if fast.native_step is not None and not self.masked:
            return self._forward_native(n)
        K = tokens.shape[1]
        x = fast._embed(tokens, fast.pos_emb.index_select(0, positions).unsqueeze(1))  # [B, 1, D]
        cache, rows = self.cache, self._rows[:B]
        masked = self.masked
        mask = None  # [B, 1, 1, P]: the masked SDPA's (the split kernel and the per-slot ones need none)
        if masked and self._split is None:
            keep = self._grid.view(1, -1) <= positions.view(-1, 1)  # [B, P]
            mask = additive_mask(keep, fast.compute_dtype).view(B, 1, 1, -1)

        def self_attention(i: int, qkv: torch.Tensor) -> torch.Tensor:
            cache.write_rows(i, rows, positions, qkv[1:])
            q = qkv[0]
            if not masked:  # each slot over its own positions, with the cache's own kernels
                return torch.cat([self._slot_caches[s].attend(i, q[2 * s:2 * s + 2], self._ends[s])
                                  for s in range(n)])
            keys, values = cache.layer(i, q.dtype)
            if self._split is not None:
                return self._split(q, keys[:B], values[:B], positions)
            with row_invariant_attention(q.device):
                return F.scaled_dot_product_attention(q, keys[:B], values[:B], attn_mask=mask)

        cross = (self.cross_keys[:, :B], self.cross_values[:, :B], self.cross_mask[:B])
        # int8 (CPU): each slot's activations on their own; idle slots' linears skipped (not in a graph)
        with activations_per_group(self._linears, rows=2, active=None if masked else self._busy[:n]), \
                gemm_rows_at_most(self._linears if masked else (), INVARIANT_GEMM_ROWS):
            x = fast._layers(x, self_attention, cross)
            return fast._logits(x[:, -1]).view(B, K, fast.card)

    def _forward_native(self, n: int) -> torch.Tensor:
        """The CPU step of the busy slots' rows among the first n on the native fused step
        (native_step.py: each row computed on its own, so a slot's numbers are the same in any
        batch) → logits [2n, K, card], zeros for the idle slots' rows."""
        fast = self.fast
        K = self._tokens.shape[1]
        logits = torch.zeros(2 * n, K, fast.card)
        rows = [row for slot in range(n) if self._busy[slot] for row in (2 * slot, 2 * slot + 1)]
        if not rows:
            return logits
        where = self._positions[rows]
        x = fast.native_step.embed(self._tokens[rows].view(len(rows), -1), where)
        lengths = [self.conditions[row // 2].keys.shape[3] for row in rows]
        x = fast.native_step(x, self.cache, rows, where.tolist(), self.cross_keys, self.cross_values, lengths)
        if fast.native_step.logits:  # (the heads in the native call: each row quantised on its own)
            logits[rows] = x.view(len(rows), K, fast.card)
            return logits
        with activations_per_group([fast.head], rows=2):
            logits[rows] = fast._logits(x).view(len(rows), K, fast.card)
        return logits


def padded_slots(count: int) -> int:
    """The smallest power of two ≥ count: the slot counts a batched step is computed for."""
    return next_power_of_two(count)
