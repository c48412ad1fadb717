"""What the hardware can run: CPU flags, the precision `auto` means, the decode-step kernels."""
from __future__ import annotations

import typing as tp

import torch

#: Precisions of the language model (`resolve_dtype` says what auto picks).
DTYPE_CHOICES = ("auto", "fp32", "bf16", "fp16", "int8", "int4")
#: The precisions with quantised weights (CPU paths: fp32 activations; the KV cache fp16, or
#: 8-bit with the native kernels: resolve_kv_cache).
QUANTISED = ("int8", "int4")
#: How the decode step runs (`resolve_kernels` says what auto picks; FastLM says what each is).
KERNEL_CHOICES = ("auto", "graph", "native", "compiled", "eager")
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_flags() -> tp.Set[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none)."""
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
        if name in QUANTISED:
            raise ValueError(f"--dtype {name} is a CPU path; use bf16 or fp16 on CUDA")
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


def compute_dtypes(mode: str) -> tp.Tuple[torch.dtype, torch.dtype]:
    """(activations, KV cache) for a resolved precision. int8 and int4: fp32 activations (the
    quantised kernels take fp32) and an fp16 KV cache (resolve_kv_cache may make it 8-bit);
    otherwise both in the precision itself."""
    if mode in QUANTISED:
        return torch.float32, torch.float16
    return TORCH_DTYPES[mode], TORCH_DTYPES[mode]


def resolve_kernels(name: str, device: torch.device, mode: str, dim: int, kv_cache: str = "auto") -> str:
    """`auto` → graph on CUDA; on CPU native for reduced precision and models of width ≥ 512
    (below that the step is too small for the kernels to pay), or whatever the width where an
    8- or 4-bit KV cache is asked for (only they read one), else eager."""
    if name not in KERNEL_CHOICES:
        raise ValueError(f"kernels must be one of {', '.join(KERNEL_CHOICES)} (got {name!r})")
    if name != "auto":
        return name
    if device.type == "cuda":
        return "graph"
    return "native" if mode != "fp32" and dim >= 512 or kv_cache in ("int8", "int4") else "eager"


#: KV cache precisions (`resolve_kv_cache` says what auto picks).
KV_CACHE_CHOICES = ("auto", "fp16", "int8", "int4")
#: The dtype that stands for the 4-bit cache (two codes to a byte; torch has no int4 tensors).
INT4_CACHE = torch.uint8


class KVCacheUnavailable(ValueError):
    """A KV cache precision asked for by name cannot run with this model, precision or kernels."""


def check_kv_cache(name: str, mode: str, device: torch.device) -> None:
    """Refuse (ValueError), before a model loads, a KV cache precision that cannot run with the
    resolved precision `mode` on `device`."""
    if name not in KV_CACHE_CHOICES:
        raise ValueError(f"--kv-cache must be one of {', '.join(KV_CACHE_CHOICES)} (got {name!r})")
    if name in ("int8", "int4") and (device.type != "cpu" or mode not in QUANTISED):
        raise ValueError(f"--kv-cache {name} runs on the native CPU kernels only: with --dtype int8 or int4 on a CPU "
                         f"(here --dtype resolves to {mode} on {device.type})")


def resolve_kv_cache(name: str, mode: str, default: torch.dtype, native, kernels: str) -> torch.dtype:
    """The KV cache's dtype: `default` (compute_dtypes') unless "int8", an 8-bit cache, or
    "int4", a 4-bit one (INT4_CACHE stands for it), which need a quantised
    precision on the native CPU kernels (cache.py); "auto" picks the 8-bit one there (half the
    cache's bytes per step; its logits stay within 1.5 % of the fp16 cache's, measured on
    musicgen-small's shape). The 4-bit one is only ever asked for: its error is measured on
    random weights alone (bench/bench_quality.py)."""
    if name not in KV_CACHE_CHOICES:
        raise ValueError(f"kv cache must be one of {', '.join(KV_CACHE_CHOICES)} (got {name!r})")
    possible = mode in QUANTISED and native is not None and kernels == "native"
    if name in ("int8", "int4") and not possible:
        raise KVCacheUnavailable(f"an {name[3:]}-bit KV cache (--kv-cache {name}) needs --dtype int8 or int4 on a "
                                 f"CPU with the native kernels (AVX-512 VNNI and a C++ compiler); use --kv-cache auto")
    if name == "fp16":
        return torch.float16 if mode in QUANTISED else default
    if name == "int4":
        return INT4_CACHE
    return torch.int8 if name == "int8" or possible else default
