import torch


def unbind(x, dim):
    return torch.unbind(x, dim)


class LowerTriangularMask:
    """Marker type: audiocraft's torch backend turns it into is_causal=True."""


def memory_efficient_attention(*args, **kwargs):
    raise RuntimeError("xFormers is not installed on the device harness")
