"""The CUDA decode steps' self-attention (batched, and the fused single-station step's), split the
same way at every batch size.

One query per row attends over its cached positions 0..positions[b]. The cache is cut into
spans of SPAN_POSITIONS (a fixed size, whatever the batch): each program gives one (row, head,
span) its softmax partials (max, sum, weighted values), and the last of a row-head's spans to
finish (an atomic counter) combines its spans in order, so the whole attention is one kernel
(flash-decoding's split, without its second launch). A row's result is therefore the same bits
whoever else is in the batch, which cuDNN's attention does not give (it splits the cache by how
many rows there are: bench/gpu/probe_rows.py); and spans past a row's position are skipped, so a
step costs what its rows have cached.

Shapes: B rows, H heads, P cached positions, Dh head dim, S = ceil(P / SPAN_POSITIONS) spans.
Needs Triton (on CUDA; `TRITON_INTERPRET=1` runs it on CPU for tests).
"""
from __future__ import annotations

import functools

import torch

#: Cached positions per span: a fixed cut, so that no row's sums depend on the batch.
SPAN_POSITIONS = 128
#: Positions each program reads at a time within its span.
BLOCK_POSITIONS = 64


def available() -> bool:
    """Triton can be imported (it ships with torch's CUDA wheels)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=None)
def _kernel():
    """The Triton kernel, defined on first use (Triton is imported only where it runs)."""
    import triton
    import triton.language as tl

    @triton.jit
    def attend(q, keys, values, positions, partial_max, partial_sum, partial_out, arrived, out,
               H: tl.constexpr, P: tl.constexpr, S: tl.constexpr, DH: tl.constexpr,
               SPAN: tl.constexpr, BLOCK: tl.constexpr, scale):
        row_head = tl.program_id(0)  # b * H + h
        span = tl.program_id(1)
        last = tl.load(positions + row_head // H)  # the row attends to positions 0..last
        start = span * SPAN
        if start <= last:  # (spans past the row's position do nothing)
            dims = tl.arange(0, DH)
            query = tl.load(q + row_head * DH + dims).to(tl.float32) * scale
            best = tl.full([1], float("-inf"), tl.float32)
            total = tl.zeros([1], tl.float32)
            acc = tl.zeros([DH], tl.float32)
            for offset in range(0, SPAN, BLOCK):
                where = start + offset + tl.arange(0, BLOCK)
                base = row_head * P * DH + where[:, None] * DH + dims[None, :]
                inside = where[:, None] < P
                k = tl.load(keys + base, mask=inside, other=0.0).to(tl.float32)
                scores = tl.sum(k * query[None, :], axis=1)
                scores = tl.where(where <= last, scores, float("-inf"))
                new_best = tl.maximum(best, tl.max(scores, axis=0))
                rescale = tl.exp(best - new_best)
                weights = tl.exp(scores - new_best)
                v = tl.load(values + base, mask=inside, other=0.0).to(tl.float32)
                acc = acc * rescale + tl.sum(weights[:, None] * v, axis=0)
                total = total * rescale + tl.sum(weights, axis=0)
                best = new_best
            slot = row_head * S + span
            tl.store(partial_max + slot + tl.arange(0, 1), best)
            tl.store(partial_sum + slot + tl.arange(0, 1), total)
            tl.store(partial_out + slot * DH + dims, acc)
            # The row-head's last span to arrive (acquire-release: it sees every span's partials)
            # combines them, in span order whoever arrived last, and re-arms the counter.
            spans = last // SPAN + 1
            if tl.atomic_add(arrived + row_head, 1) == spans - 1:
                first = row_head * S
                best = tl.load(partial_max + first + tl.arange(0, 1), cache_modifier=".cg")
                for other in range(1, spans):
                    best = tl.maximum(best, tl.load(partial_max + first + other + tl.arange(0, 1),
                                                    cache_modifier=".cg"))
                total = tl.zeros([1], tl.float32)
                acc = tl.zeros([DH], tl.float32)
                for other in range(0, spans):
                    factor = tl.exp(tl.load(partial_max + first + other + tl.arange(0, 1), cache_modifier=".cg")
                                    - best)
                    total += tl.load(partial_sum + first + other + tl.arange(0, 1), cache_modifier=".cg") * factor
                    acc += tl.load(partial_out + (first + other) * DH + dims, cache_modifier=".cg") * factor
                tl.store(out + row_head * DH + dims, (acc / total).to(out.dtype.element_ty))
                tl.store(arrived + row_head, 0)

    return attend


class SplitAttention:
    """Decode attention over a cache of `positions` P with a fixed span cut (module docstring).
    Scratch for up to `rows` rows is allocated once (a CUDA graph replays the same buffers).
    `span_positions`, `block_positions`: the cut and the positions read at a time (the bench's
    sweep; a batched decoder's rows stay alike only under one cut)."""

    def __init__(self, rows: int, heads: int, positions: int, head_dim: int, device: torch.device,
                 span_positions: int = SPAN_POSITIONS, block_positions: int = BLOCK_POSITIONS):
        self.span_positions, self.block_positions = span_positions, min(block_positions, span_positions)
        self.spans = -(-positions // span_positions)
        shape = (rows * heads, self.spans)
        self.partial_max = torch.empty(shape, dtype=torch.float32, device=device)
        self.partial_sum = torch.empty(shape, dtype=torch.float32, device=device)
        self.partial_out = torch.empty((*shape, head_dim), dtype=torch.float32, device=device)
        self.arrived = torch.zeros(rows * heads, dtype=torch.int32, device=device)  # spans done per row-head
        self._kernel = _kernel()

    def __call__(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                 positions: torch.Tensor) -> torch.Tensor:
        """q [B, H, 1, Dh], keys/values [B, H, P, Dh] (contiguous), positions [B] (each row
        attends to 0..positions[b]) → [B, H, 1, Dh] in q's dtype."""
        B, H, _, Dh = q.shape
        P = keys.shape[2]
        if not (keys.is_contiguous() and values.is_contiguous() and positions.is_contiguous()):
            raise ValueError("split attention reads contiguous keys, values and positions")
        q = q.contiguous()
        out = torch.empty_like(q)
        self._kernel[(B * H, self.spans)](q, keys, values, positions, self.partial_max, self.partial_sum,
                                          self.partial_out, self.arrived, out, H, P, self.spans, Dh,
                                          self.span_positions, self.block_positions, Dh ** -0.5)
        return out
