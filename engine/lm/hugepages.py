"""CPU tensors on transparent huge pages, for the KV cache and the weights that every decode step reads.

A decode step reads each row's keys and values for every layer and head: at 25 s of context,
2 × 24 × 16 runs of 80 KB per layer pass, 130 MB in all, scattered over 4 KiB pages. On 2 AMD EPYC
cores the step over an int8 cache at 1250 positions took 0.947x the time (median of 9 alternated
rounds, 0.93-1.01) with the cache on 2 MiB pages; whole int4 strides (bench_engine, 4 rounds
alternated with the code before): steps 0.94-0.99x, strides 0.93-1.03x (medians 0.97, 0.95).
The weights, read as long runs, gained nothing (0.995x) while each linear of the step was its
own parallel region; since the step is one region (kernels/decode_step.cpp), whole steps with
the weights on huge pages take 0.94-0.98x the time (quantize.step_weights_onto_huge_pages).
Linux maps huge pages only where asked (THP "madvise", this machine's mode), so these tensors
live in an anonymous mapping advised MADV_HUGEPAGE and 2 MiB aligned, its pages faulted in at
once (15-170 ms for musicgen-small's 150 MB cache, where the first steps would otherwise stall
on them); where the platform has no such advice they are plain tensors.
"""
from __future__ import annotations

import mmap
import typing as tp

import torch

HUGE_PAGE_BYTES = 2 * 1024 * 1024


def zeros_on_huge_pages(shape: tp.Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """torch.zeros(shape, dtype) on `device`; on CPU in a mapping advised MADV_HUGEPAGE (the
    mapping lives as long as the tensor or any view of it)."""
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    numel = torch.Size(shape).numel()
    if device.type != "cpu" or advice is None or numel == 0:
        return torch.zeros(shape, dtype=dtype, device=device)
    nbytes = numel * torch.empty(0, dtype=dtype).element_size()
    mapping = mmap.mmap(-1, nbytes + HUGE_PAGE_BYTES, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    mapping.madvise(advice)
    raw = torch.frombuffer(mapping, dtype=torch.uint8)  # (holds the mapping; zeros until written)
    start = -raw.data_ptr() % HUGE_PAGE_BYTES
    return raw[start:start + nbytes].view(dtype).view(shape).zero_()  # (faulted in now)


def onto_huge_pages(tensors: tp.Sequence[torch.Tensor]) -> tp.List[torch.Tensor]:
    """Copies of CPU `tensors` side by side in one mapping on huge pages (each 64-byte aligned),
    in their order; others (CUDA, or where the platform has no such advice) are returned as
    they are."""
    if not tensors or any(t.device.type != "cpu" for t in tensors) or getattr(mmap, "MADV_HUGEPAGE", None) is None:
        return list(tensors)
    offsets, total = [], 0
    for t in tensors:
        offsets.append(total)
        total += -(-t.numel() * t.element_size() // 64) * 64
    arena = zeros_on_huge_pages((total,), torch.uint8, torch.device("cpu"))
    copies = []
    for t, offset in zip(tensors, offsets):
        view = arena[offset:offset + t.numel() * t.element_size()].view(t.dtype).view(t.shape)
        copies.append(view.copy_(t))
    return copies
