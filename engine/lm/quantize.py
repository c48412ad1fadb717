"""The linear layers of the fast decoder in each precision: dense (fp32 / bf16 / fp16), int8 and
int4 (group-wise scales)."""
from __future__ import annotations

import contextlib
import typing as tp
import warnings

import torch
import torch.nn.functional as F

from .hugepages import onto_huge_pages


class Dense:
    """y = x W^T + b with W [out, in] stored in `dtype`. `max_rows` (set by `gemm_rows_at_most`):
    GEMMs of at most that many rows each, so that a row's result does not depend on how many
    rows share the call (cuBLAS keeps rows bitwise alike only up to some count: batch.py)."""

    max_rows = 0

    def __init__(self, weight: torch.Tensor, bias: tp.Optional[torch.Tensor], dtype: torch.dtype):
        self.shape = tuple(weight.shape)  # (out, in)
        self.weight = weight.detach().to(dtype).contiguous()
        self.bias = None if bias is None else bias.detach().to(dtype).contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self._rows(lambda rows: F.linear(rows, self.weight, self.bias), x.reshape(-1, self.shape[1]))
        return out.view(*x.shape[:-1], self.shape[0])

    def add_to(self, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """residual + x W^T (+ b): residual [..., out], x [..., in]; without a bias one GEMM
        that reads the residual as its C (one kernel, rounded once, instead of two)."""
        if self.bias is not None:
            return residual + self(x)
        residual2d, x2d = residual.reshape(-1, self.shape[0]), x.reshape(-1, self.shape[1])
        if not self.max_rows or x2d.shape[0] <= self.max_rows:
            out = torch.addmm(residual2d, x2d, self.weight.t())
        else:
            out = torch.cat([torch.addmm(r, part, self.weight.t())
                             for r, part in zip(residual2d.split(self.max_rows), x2d.split(self.max_rows))])
        return out.view(residual.shape)

    def gelu(self, x: torch.Tensor) -> torch.Tensor:
        """GELU(x W^T + b) as one GEMM with the activation in its epilogue (cuBLASLt): x [..., in]
        → [..., out]. On CUDA that GELU is the tanh approximation (within 5e-4 of the exact
        one: under bf16's rounding at every magnitude); on CPU, exact."""
        bias = self.bias if self.bias is not None else self.weight.new_zeros(self.shape[0])
        out = self._rows(lambda rows: torch._addmm_activation(bias, rows, self.weight.t(), use_gelu=True),
                         x.reshape(-1, self.shape[1]))
        return out.view(*x.shape[:-1], self.shape[0])

    def _rows(self, gemm: tp.Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
        """gemm(rows) [M, ...], in calls of at most `max_rows` rows."""
        if not self.max_rows or rows.shape[0] <= self.max_rows:
            return gemm(rows)
        return torch.cat([gemm(part) for part in rows.split(self.max_rows)])

    def weight_bytes(self) -> int:
        return self.weight.numel() * self.weight.element_size()


class Int8:
    """Per-output-channel symmetric int8 weights, activations quantised per call. Input and
    output are fp32. With the native kernels (`kernels`, input width a multiple of 64): decode
    rows (≤ 4) on the VNNI GEMV (kernels/int8_gemv.cpp: reads the weights at ~33 GB/s here where
    fbgemm reaches ~27), prefill rows on the VNNI GEMM over the weights packed once
    (kernels/int8_gemm.cpp, output width a multiple of 64: 1.2-1.3x fbgemm's speed, activations
    quantised per row where fbgemm's reduce-range path takes one 7-bit scale per call, 2.5x less
    error); both with int8 activations per row. Otherwise fbgemm's dynamic int8 GEMM.

    `native`: True when the decode rows run on the native kernel.
    `group_rows` (set by `activations_per_group`): quantise the activations of each group of
    that many rows on their own (fbgemm's scale is per call), so that the rows of one station in
    a batch never depend on another's; groups not in `active_groups` (idle slots) are not
    computed (zeros)."""

    group_rows = 0
    active_groups: tp.Optional[tp.Sequence[bool]] = None
    #: The tensors the native kernel reads for decode rows (with `kernels`).
    STEP_TENSORS: tp.Tuple[str, ...] = ("weight", "row_sums", "scales")

    def __init__(self, weight: torch.Tensor, bias: tp.Optional[torch.Tensor], kernels=None):
        self.shape = tuple(weight.shape)  # (out, in)
        w = weight.detach().float()
        scales = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
        self.bias = None if bias is None else bias.detach().float().contiguous()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            qweight = torch.quantize_per_channel(
                w, scales.double(), torch.zeros_like(scales, dtype=torch.long), 0, torch.qint8)
        self.kernels = kernels if w.shape[1] % 64 == 0 else None
        self.vnni: tp.Optional[torch.Tensor] = None  # the prefill GEMM's packed weights
        self._no_bias = torch.empty(0)
        if self.kernels is not None:
            self.weight = qweight.int_repr().contiguous()
            self.scales = scales.float().contiguous()
            self.row_sums = kernels.prepare(self.weight)
            if w.shape[0] % 64 == 0:
                self.vnni = kernels.pack_vnni(self.weight)
        self.packed = None if self.vnni is not None else torch.ops.quantized.linear_prepack(qweight, self.bias)

    @property
    def native(self) -> bool:
        return self.kernels is not None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1])
        if self.group_rows and rows.shape[0] > self.group_rows:
            groups = rows.split(self.group_rows)
            active = self.active_groups or [True] * len(groups)
            outputs = [self(group) if on else None for group, on in zip(groups, active)]
            done = next((out for out in outputs if out is not None), None)
            if done is None:
                done = self(groups[0])
            y = torch.cat([out if out is not None else done.new_zeros(done.shape) for out in outputs])
        elif self.kernels is not None and rows.shape[0] <= 4:
            y = self._decode_rows(rows)
        elif self.vnni is not None:
            y = self.kernels.gemm(rows, self.vnni, self.row_sums, self.scales,
                                  self._no_bias if self.bias is None else self.bias)
        else:
            y = torch.ops.quantized.linear_dynamic(rows, self.packed, True)
        return y.view(*shape[:-1], y.shape[-1])

    def add_to(self, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """residual + x W^T (+ b) (Dense.add_to's interface)."""
        return residual + self(x)

    def _decode_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """1 to 4 rows [M, in] fp32 on the native kernel → [M, out] fp32."""
        return self.kernels.gemv(rows, self.weight, self.row_sums, self.scales,
                                 self._no_bias if self.bias is None else self.bias)

    def weight_bytes(self) -> int:
        """Bytes of the weights a decode step reads."""
        return self.packed.unpack()[0].numel() if self.kernels is None else self.weight.numel()


#: Inputs per int4 scale (the native kernel's kGroup).
INT4_GROUP = 256
#: The native int4 kernel's outputs per block (kChannels): int4 layers have a multiple of it.
INT4_CHANNELS = 16
#: Scales tried per group (fractions of max|w| / 7); the one with the least squared error wins.
INT4_SCALE_GRID = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)
#: Rows quantised at a time (their working tensors stay in the CPU's caches).
QUANTIZE_ROWS = 64


def quantize_int4(weight: torch.Tensor) -> tp.Tuple[torch.Tensor, torch.Tensor]:
    """W [out, in] → (q [out, in] int8 in -8..7, scales [out, in / INT4_GROUP] fp32): symmetric
    per group of INT4_GROUP inputs, each group's scale picked from INT4_SCALE_GRID for the least
    squared error (clipping the largest weights a little often loses less than coarser steps)."""
    w = weight.detach().float()
    out_features, in_features = w.shape
    q_all = torch.empty(out_features, in_features, dtype=torch.int8)
    scales_all = torch.empty(out_features, in_features // INT4_GROUP)
    for start in range(0, out_features, QUANTIZE_ROWS):  # a cache-sized block of rows at a time
        groups = w[start:start + QUANTIZE_ROWS].reshape(-1, in_features // INT4_GROUP, INT4_GROUP)
        peak = groups.abs().amax(dim=-1, keepdim=True).clamp_(min=1e-12).div_(7.0)
        best_q = best_scale = best_error = None
        for fraction in INT4_SCALE_GRID:
            scale = peak * fraction
            q = torch.div(groups, scale).round_().clamp_(-8, 7)
            error = (q * scale).sub_(groups).square_().sum(dim=-1, keepdim=True)
            if best_error is None:
                best_q, best_scale, best_error = q, scale, error
                continue
            better = error < best_error
            best_q = torch.where(better, q, best_q)
            best_scale = torch.where(better, scale, best_scale)
            best_error = torch.minimum(error, best_error)
        rows = groups.shape[0]
        q_all[start:start + rows] = best_q.view(rows, in_features).to(torch.int8)
        scales_all[start:start + rows] = best_scale.view(rows, -1)
    return q_all, scales_all


class Int4(Int8):
    """Group-wise symmetric 4-bit weights (`quantize_int4`): half the bytes of int8 per decode
    step. Decode rows (≤ 4): the native kernel (kernels/int4_gemv.cpp) reads the packed nibbles
    and the group scales. Prefill (many rows): Int8's GEMM (native, else fbgemm's) of the same
    4-bit weights, dequantised and held as int8 (so prefill and steps use one model)."""

    def __init__(self, weight: torch.Tensor, bias: tp.Optional[torch.Tensor], kernels=None):
        out_features, in_features = weight.shape
        if in_features % INT4_GROUP or out_features % INT4_CHANNELS:
            raise ValueError(f"int4 needs layer inputs in multiples of {INT4_GROUP} and outputs in multiples "
                             f"of {INT4_CHANNELS} (got {out_features} x {in_features})")
        q, scales = quantize_int4(weight)
        dequantised = (q.float().view(out_features, -1, INT4_GROUP) * scales.unsqueeze(-1)).view_as(q)
        super().__init__(dequantised, bias, kernels=kernels)
        self.group_scales = scales  # [out, in / INT4_GROUP]
        if self.kernels is not None:
            del self.weight  # (the int8 copy: the steps read the nibbles, the prefill `vnni`)
            self.packed4, self.scales4 = kernels.pack4(q.contiguous(), scales)  # (kernels/int4_gemv.cpp's order)

    STEP_TENSORS = ("packed4", "scales4")

    def _decode_rows(self, rows: torch.Tensor) -> torch.Tensor:
        return self.kernels.gemv4(rows, self.packed4, self.scales4, self._no_bias if self.bias is None else self.bias)

    def weight_bytes(self) -> int:
        if self.kernels is None:
            return super().weight_bytes()
        return self.packed4.numel() + 4 * self.scales4.numel()


Linear = tp.Union[Dense, Int8, Int4]


def step_weights_onto_huge_pages(linears: tp.Sequence[Linear]) -> None:
    """Move what the native kernels read of these linears at each decode step into one mapping
    on huge pages, in their order (hugepages.py): whole int4 steps took 0.94-0.98x the time
    (int8: 0.94-0.98x), alternated in one process on 2 cores. Other linears stay as they are."""
    fields = [(lin, name) for lin in linears if isinstance(lin, Int8) and lin.native for name in lin.STEP_TENSORS]
    for (lin, name), moved in zip(fields, onto_huge_pages([getattr(lin, name) for lin, name in fields])):
        setattr(lin, name, moved)


@contextlib.contextmanager
def activations_per_group(linears: tp.Iterable, rows: int, active: tp.Optional[tp.Sequence[bool]] = None):
    """While in it, the int8 layers among `linears` quantise each `rows` rows on their own, and
    compute only the groups `active` says (None: all)."""
    int8 = [lin for lin in linears if isinstance(lin, Int8)]
    for lin in int8:
        lin.group_rows, lin.active_groups = rows, active
    try:
        yield
    finally:
        for lin in int8:
            lin.group_rows, lin.active_groups = 0, None


@contextlib.contextmanager
def gemm_rows_at_most(linears: tp.Iterable, rows: int):
    """While in it, the dense layers among `linears` run GEMMs of at most `rows` rows each."""
    dense = [lin for lin in linears if isinstance(lin, Dense)]
    for lin in dense:
        lin.max_rows = rows
    try:
        yield
    finally:
        for lin in dense:
            lin.max_rows = 0


def linear(weight: torch.Tensor, bias: tp.Optional[torch.Tensor], mode: str,
           compute_dtype: torch.dtype, kernels=None) -> Linear:
    """W [out, in], b [out] → an Int8 layer for mode "int8", an Int4 one for "int4", else a
    Dense one in `compute_dtype`."""
    if mode == "int8":
        return Int8(weight, bias, kernels)
    if mode == "int4":  # (a layer whose inputs do not fill whole groups, or outputs 16-channel blocks, stays int8)
        whole = weight.shape[1] % INT4_GROUP == 0 and weight.shape[0] % INT4_CHANNELS == 0
        return Int4(weight, bias, kernels) if whole else Int8(weight, bias, kernels)
    return Dense(weight, bias, compute_dtype)
