"""How much memory a MusicGen needs on a device in a precision, checked before anything loads,
so that a model too large for the machine is one line that says what fits, not a crash minutes
into loading.

The estimate follows what loading does: audiocraft builds the LM in fp32 on CPU (fp16 on CUDA),
the fast decoder then makes its own copy in the chosen precision (the audiocraft copy is freed
afterwards, but both are alive at the peak), plus the T5 text encoder, the codec and the KV
cache with working room.
"""
from __future__ import annotations

import typing as tp

GB = 1e9
#: Bytes per LM parameter in the fast decoder's copy, per --dtype.
#: int8 keeps two int8 copies: fbgemm's packed one for the prefill's GEMMs and the native
#: decode kernel's; int4 keeps fbgemm's and the packed nibbles.
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 2, "int4": 1.5}
#: T5-base encoder (fp32), the EnCodec codec, the KV cache and working room, in bytes.
OVERHEAD_BYTES = {"cpu": 1.2 * GB, "cuda": 1.5 * GB}
#: The published checkpoints' LM shapes (dim, layers), smallest first: what to suggest instead.
PUBLISHED_SHAPES = (("facebook/musicgen-small", 1024, 24), ("facebook/musicgen-medium", 1536, 48),
                    ("facebook/musicgen-large", 2048, 48))


def lm_parameters(dim: int, layers: int, n_q: int = 4, card: int = 2048, hidden_scale: int = 4,
                  cross_attention: bool = True, text_dim: int = 768) -> int:
    """Parameters of a MusicGen LM: per layer self-attention (4 d²), cross-attention (4 d²) and
    the feed-forward (2 · hidden_scale · d²); the code embeddings and output heads; the text
    projection."""
    per_layer = (4 + (4 if cross_attention else 0) + 2 * hidden_scale) * dim * dim
    return layers * per_layer + n_q * (card + 1) * dim + n_q * dim * card + text_dim * dim


def needed_bytes(parameters: int, device: str, dtype: str) -> float:
    """Peak bytes to load and run an LM of `parameters` on `device` with the fast decoder's `dtype`."""
    built = 4 if device == "cpu" else 2
    return parameters * (built + DTYPE_BYTES.get(dtype, 4)) + OVERHEAD_BYTES.get(device, OVERHEAD_BYTES["cpu"])


def available_bytes(device: str) -> float:
    """Memory free for the model now: RAM available, or the GPU's free memory."""
    if device == "cuda":
        import torch
        return float(torch.cuda.mem_get_info()[0])
    import psutil
    return float(psutil.virtual_memory().available)


def shortage(cfg, name: str, device: str, dtype: str,
             available: tp.Optional[float] = None) -> tp.Optional[str]:
    """None when the checkpoint of config `cfg` fits; else one line: what it needs, what is
    free, and which published model (or precision) fits."""
    lm = cfg.get("transformer_lm") or {}
    if not lm.get("dim"):
        return None
    parameters = lm_parameters(int(lm["dim"]), int(lm["num_layers"]), int(lm.get("n_q", 4)), int(lm.get("card", 2048)),
                               int(lm.get("hidden_scale", 4)))
    need = needed_bytes(parameters, device, dtype)
    free = available_bytes(device) if available is None else available
    if need <= free:
        return None
    fits = [model for model, dim, layers in PUBLISHED_SHAPES
            if needed_bytes(lm_parameters(dim, layers), device, dtype) <= free]
    cheaper = [d for d in ("int8", "int4") if device == "cpu"
               and DTYPE_BYTES[d] < DTYPE_BYTES.get(dtype, 4) and needed_bytes(parameters, device, d) <= free]
    advice = (f"--dtype {cheaper[0]} fits" if cheaper else
              f"{fits[-1]} fits" if fits else "no MusicGen fits; free memory or use --model tiny")
    return (f"{name} needs about {need / GB:.1f} GB on {device} with --dtype {dtype} "
            f"({parameters / 1e6:.0f} M parameters); {free / GB:.1f} GB are free: {advice}")
