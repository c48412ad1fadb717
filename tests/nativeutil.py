"""The mark for tests of the native AVX-512 CPU kernels (CI's CPU has what they need)."""
import pytest

from engine.lm.hardware import cpu_flags
from engine.lm.kernels import REQUIRED_CPU_FLAGS

#: The native kernels can be built and run on this CPU.
HAS_NATIVE = REQUIRED_CPU_FLAGS <= cpu_flags()
needs_native = pytest.mark.skipif(not HAS_NATIVE, reason="the native kernels need AVX-512 VNNI/F16C "
                                                         "(CI's CPU has them)")
