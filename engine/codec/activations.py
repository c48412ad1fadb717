"""The codec decoder's ELU on CPU: torch's computes expm1 one element at a time (a quarter of a
10 s decode of musicgen's EnCodec on 2 cores); the native kernel (lm/kernels/activations.cpp) does 16 at
a time and agrees with it to a float ulp (tested)."""
from __future__ import annotations

import logging
import typing as tp

import torch
import torch.nn.functional as F
from torch import nn

from ..lm.kernels import load_cpu_kernels

log = logging.getLogger(__name__)

#: Codecs with fewer decoder parameters than this keep torch's ELU: their activations are too
#: small for the kernel to matter (the tiny test model), and building the kernels would only
#: delay its start.
MIN_DECODER_PARAMETERS = 1_000_000


class NativeELU(nn.Module):
    """nn.ELU(alpha=1) computed by the native kernel for fp32 CPU tensors (torch's elsewhere)."""

    def __init__(self, kernels):
        super().__init__()
        self.kernels = kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or x.device.type != "cpu" or (x.requires_grad and torch.is_grad_enabled()):
            return F.elu(x)
        return self.kernels.elu(x)


def decoder_of(compression_model: nn.Module) -> tp.Optional[nn.Module]:
    """The decoder network of an audiocraft compression model (a stereo model's is its wrapped
    mono model's, as stitcher.py decodes it), or None."""
    if hasattr(compression_model, "get_left_right_codes"):
        compression_model = compression_model.model
    return getattr(compression_model, "decoder", None)


def use_native_elu(codec: nn.Module, kernels: tp.Any = None, min_parameters: int = MIN_DECODER_PARAMETERS) -> int:
    """Swap every ELU(alpha=1) of `codec`'s decoder (on CPU) for NativeELU, where the native
    kernels can be built (`kernels`: already loaded ones) and the decoder has at least
    `min_parameters`; returns how many were swapped."""
    decoder = decoder_of(codec)
    if decoder is None or next(decoder.parameters()).device.type != "cpu":
        return 0
    if sum(p.numel() for p in decoder.parameters()) < min_parameters:
        return 0
    kernels = kernels or load_cpu_kernels()
    if kernels is None:
        return 0
    swapped = 0
    for module in list(decoder.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.ELU) and child.alpha == 1.0:
                setattr(module, name, NativeELU(kernels))
                swapped += 1
    if swapped:
        log.info("codec: %d ELU activations of the decoder run on the native CPU kernel", swapped)
    return swapped
