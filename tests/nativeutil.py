"""The mark for tests of the native AVX-512 CPU kernels (CI's CPU has what they need), and where
a tensor's memory lies."""
import pytest

from engine.lm.hardware import cpu_flags
from engine.lm.kernels import REQUIRED_CPU_FLAGS

#: The native kernels can be built and run on this CPU.
HAS_NATIVE = REQUIRED_CPU_FLAGS <= cpu_flags()
needs_native = pytest.mark.skipif(not HAS_NATIVE, reason="the native kernels need AVX-512 VNNI/F16C "
                                                         "(CI's CPU has them)")


def mapping_flags(address: int) -> set:
    """The VmFlags of this process's mapping that holds `address` (/proc/self/smaps)."""
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                start, end = (int(part, 16) for part in head.split("-"))
                inside = start <= address < end
            elif inside and head == "VmFlags:":
                return set(line.split()[1:])
    raise AssertionError(f"no mapping holds {address:#x}")
