"""Native CPU kernels of the decoder (AVX-512: F16C for the fp16 attention, VNNI for the int8
linears) and of the codec (its ELU), compiled on first use with torch's extension builder and cached on disk
(~/.cache/torch_extensions); about half a minute the first time."""
from __future__ import annotations

import logging
import os
import shutil
import sys
import time
import typing as tp

from ..hardware import cpu_flags

log = logging.getLogger(__name__)
HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = ("bindings.cpp", "decode_attention.cpp", "kv8_attention.cpp", "kv4_attention.cpp", "int8_gemv.cpp",
           "int8_gemm.cpp", "int4_gemv.cpp", "activations.cpp", "decode_step.cpp", "prefill_attention.cpp", "sampling.cpp",
           "embedding.cpp")
REQUIRED_CPU_FLAGS = {"avx512f", "avx512bw", "avx512_vnni", "f16c", "fma"}
#: prefill_attention_q8 runs only where the CPU also has this (built everywhere, called where it runs).
BF16_CPU_FLAG = "avx512_bf16"


def _put_ninja_on_path() -> None:
    """torch's builder runs `ninja` from PATH; the pinned pip package puts it beside the venv's
    python, which is not on PATH unless the venv is activated."""
    if shutil.which("ninja") is not None:
        return
    try:
        import ninja
        bin_dir = ninja.BIN_DIR
    except (ImportError, AttributeError):
        bin_dir = os.path.dirname(sys.executable)
    os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")


def load_cpu_kernels() -> tp.Optional[tp.Any]:
    """The compiled module (scores, weighted, quantize_into, scores_q8, weighted_q8,
    scores_q4, weighted_q4, prepare,
    gemv, gemm, pack_vnni, pack4, gemv4, vnni_peak, elu, gelu, sample_top_k, embed, DecodeStep,
    prefill_attention_q8), or None where it cannot be built
    (no AVX-512 VNNI/F16C, no C++ compiler): callers then use torch's kernels."""
    if not REQUIRED_CPU_FLAGS <= cpu_flags():
        return None
    try:
        from torch.utils.cpp_extension import load
        _put_ninja_on_path()
        started = time.monotonic()
        module = load("musicgen_radio_cpu_kernels", [os.path.join(HERE, name) for name in SOURCES],
                      extra_cflags=["-O3", "-mavx512f", "-mavx512bw", "-mavx512vnni", "-mavx512bf16", "-mf16c",
                                    "-mfma", "-fopenmp"],
                      extra_ldflags=["-fopenmp"], verbose=False)
        elapsed = time.monotonic() - started
        if elapsed > 2:
            log.info("decoder: built the native CPU kernels in %.0f s (cached from now on)", elapsed)
        return module
    except Exception as err:  # noqa: BLE001 - any build failure means: use torch's kernels
        log.warning("native CPU kernels unavailable (%s); using torch's",
                    str(err).splitlines()[0][:200] if str(err) else type(err).__name__)
        return None
