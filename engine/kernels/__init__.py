"""Native CPU kernels, compiled on first use with torch's extension builder (cached on disk)."""
from __future__ import annotations

import logging
import os
import time
import typing as tp

log = logging.getLogger(__name__)
HERE = os.path.dirname(os.path.abspath(__file__))


def load_decode_attention() -> tp.Optional[tp.Any]:
    """The fp16-cache decode attention (decode_attention.cpp), or None where it cannot be built
    (no AVX-512/F16C, no C++ compiler): callers then use torch.compile or eager kernels."""
    from ..fastlm import cpu_flags
    if not {"avx512f", "f16c", "fma"} <= cpu_flags():
        return None
    try:
        from torch.utils.cpp_extension import load
        started = time.monotonic()
        module = load("musicgen_radio_decode_attention", [os.path.join(HERE, "decode_attention.cpp")],
                      extra_cflags=["-O3", "-mavx512f", "-mf16c", "-mfma", "-fopenmp"],
                      extra_ldflags=["-fopenmp"], verbose=False)
        elapsed = time.monotonic() - started
        if elapsed > 2:
            log.info("decoder: built the native attention kernel in %.0f s (cached from now on)", elapsed)
        return module
    except Exception as err:  # noqa: BLE001 - any build failure means: use the other kernels
        log.warning("native attention kernel unavailable (%s); using torch.compile",
                    str(err).splitlines()[0][:200] if str(err) else type(err).__name__)
        return None
