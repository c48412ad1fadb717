"""The codec decoder's last upsampling stage over short time tiles, and the receptive-field probe
it (and the stitcher) sizes context with.

After the LSTM, EnCodec's stack multiplies the frame rate by 640 while it narrows the channels.
Its last stage (from the last ×4 transposed convolution: 64 channels, a residual block, ELU, the
final convolution) works at 32 kHz: 18 MB per tensor for one of the stitcher's 100-frame chunks,
past the cores' 2 MB L2 and most of the shared L3, and each one freshly allocated. Run over tiles
of `TILE_OUTPUT_SAMPLES` with their receptive field's context, its tensors stay near 4 MB and the
samples are the same. Measured on musicgen's codec (random weights, 2 cores, strides alternated
8-12 times in one process): a 10 s stride's whole decode, LSTM included, in 0.81-0.87x the time
of the plain stack in three runs, 0.97x in a fourth (0.75-1.17 s before). Tiles of 4096 to 32768
samples measured within a few % of each other; tiling the stage before as well, inside or alone,
gained nothing (1.0-1.1x on the stack alone).

Shapes: B batch, C channels, T samples at a stage's rate; `scale` = output samples per input one.
"""
from __future__ import annotations

import math
import typing as tp

import torch
from torch import nn

#: Output samples per tile of the last upsampling stage (0.5 s at 32 kHz).
TILE_OUTPUT_SAMPLES = 16384


def receptive_offsets(module: nn.Module, channels: int, frames: int, device) -> tp.Tuple[int, int]:
    """Perturb one input frame of `module` and return (first, last) affected output positions,
    relative to the perturbed position scaled to output resolution."""
    torch.manual_seed(1234)
    x = torch.randn(1, channels, frames, device=device)
    y0 = module(x)
    probe = frames // 2
    x2 = x.clone()
    x2[..., probe] += 3.0 * torch.randn(channels, device=device)
    y1 = module(x2)
    scale = y0.shape[-1] // frames
    changed = ((y1 - y0).abs().amax(dim=(0, 1)) > 0).nonzero().flatten()
    return int(changed.min()) - probe * scale, int(changed.max()) - probe * scale


def context_frames(offsets: tp.Tuple[int, int], scale: int) -> tp.Tuple[int, int]:
    """(left, right): input frames of context on each side that make every output sample of a
    window final, for a module whose `receptive_offsets` are `offsets` and that outputs `scale`
    samples per input frame (one frame of margin each side)."""
    lo, hi = offsets
    return math.ceil(max(hi, 0) / scale) + 1, math.ceil((scale - 1 - min(lo, 0)) / scale) + 1


class TimeTiledStack(nn.Module):
    """`layers` as one stack, x [B, C, T] → [B, C', T · scale], with the layers from the last
    one that raises the rate onwards (the tail) run over tiles of `tile_output_samples`, each
    with its measured receptive field's context: the output equals the plain stack's (the stack's
    own ends padded as the plain stack pads them). `channels`: C, for the probes."""

    def __init__(self, layers: tp.Sequence[nn.Module], channels: int, device,
                 tile_output_samples: int = TILE_OUTPUT_SAMPLES):
        super().__init__()
        layers = list(layers)
        probe_frames = 64
        split, tail_channels = None, channels  # the last layer that raises the rate, and its input width
        with torch.inference_mode():
            x = torch.zeros(1, channels, probe_frames, device=device)
            for i, layer in enumerate(layers):
                y = layer(x)
                if y.shape[-1] > x.shape[-1]:
                    split, tail_channels = i, x.shape[1]
                x = y
        self.head = nn.Sequential(*layers[:split] if split is not None else layers)
        self.tail = nn.Sequential(*layers[split:]) if split is not None else None
        self.scale, self.tile_frames, self.left_frames, self.right_frames = 1, 0, 0, 0
        if self.tail is None:
            return
        with torch.inference_mode():
            out = self.tail(torch.zeros(1, tail_channels, probe_frames, device=device))
            self.scale = out.shape[-1] // probe_frames
            if out.shape[-1] != self.scale * probe_frames:  # not a whole rate multiple: run it plainly
                self.head, self.tail = nn.Sequential(*layers), None
                return
            self.out_channels = out.shape[1]
            offsets = receptive_offsets(self.tail, tail_channels, probe_frames, device)
        self.left_frames, self.right_frames = context_frames(offsets, self.scale)
        self.tile_frames = max(1, tile_output_samples // self.scale)

    @property
    def tiled(self) -> bool:
        """Whether a tail runs over tiles (a stack that never raises the rate runs plainly)."""
        return self.tail is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x)
        if self.tail is None:
            return x
        B, _, T = x.shape
        if T <= self.tile_frames:
            return self.tail(x)
        s = self.scale
        out = x.new_empty(B, self.out_channels, T * s)
        for first in range(0, T, self.tile_frames):
            last = min(T, first + self.tile_frames)
            start, end = max(0, first - self.left_frames), min(T, last + self.right_frames)
            out[..., first * s:last * s] = self.tail(x[..., start:end])[..., (first - start) * s:(last - start) * s]
        return out
