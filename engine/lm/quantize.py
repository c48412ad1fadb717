"""The linear layers of the fast decoder in each precision: dense (fp32 / bf16 / fp16) and int8."""
from __future__ import annotations

import contextlib
import typing as tp
import warnings

import torch
import torch.nn.functional as F


class Dense:
    """y = x W^T + b with W [out, in] stored in `dtype`."""

    def __init__(self, weight: torch.Tensor, bias: tp.Optional[torch.Tensor], dtype: torch.dtype):
        self.weight = weight.detach().to(dtype).contiguous()
        self.bias = None if bias is None else bias.detach().to(dtype).contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def weight_bytes(self) -> int:
        return self.weight.numel() * self.weight.element_size()


class Int8:
    """Per-output-channel symmetric int8 weights, activations quantised per call. Input and
    output are fp32. Prefill (many rows): fbgemm's dynamic int8 GEMM. Decode (≤ 4 rows): the
    native VNNI kernel when `kernels` is given (kernels/int8_gemv.cpp: per-row int8 activations,
    reads the weights at ~33 GB/s here where fbgemm reaches ~27), else fbgemm.

    `native`: True when the decode rows run on the native kernel (input width a multiple of 64).
    `group_rows` (set by `activations_per_group`): quantise the activations of each group of
    that many rows on their own (fbgemm's scale is per call), so that the rows of one station in
    a batch never depend on another's; groups not in `active_groups` (idle slots) are not
    computed (zeros)."""

    group_rows = 0
    active_groups: tp.Optional[tp.Sequence[bool]] = None

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
            y = self.kernels.gemv(rows, self.weight, self.row_sums, self.scales,
                                  self._no_bias if self.bias is None else self.bias)
        else:
            y = torch.ops.quantized.linear_dynamic(rows, self.packed, True)
        return y.view(*shape[:-1], y.shape[-1])

    def weight_bytes(self) -> int:
        return self.packed.unpack()[0].numel() if self.kernels is None else self.weight.numel()


Linear = tp.Union[Dense, Int8]


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


def linear(weight: torch.Tensor, bias: tp.Optional[torch.Tensor], mode: str,
           compute_dtype: torch.dtype, kernels=None) -> Linear:
    """W [out, in], b [out] → an Int8 layer for mode "int8", else a Dense one in `compute_dtype`."""
    return Int8(weight, bias, kernels) if mode == "int8" else Dense(weight, bias, compute_dtype)
