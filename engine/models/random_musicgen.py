"""Random MusicGens of real architecture, built in-process (no download): `tiny` for the offline
demo and the tests, and random weights of musicgen-small/-medium/-large's shapes for benchmarks."""
from __future__ import annotations

import re
import typing as tp
import warnings

import torch
from torch import nn
class HashWordTokenizer:
    """Words → LUT indices by hashing: needs no spaCy model or download.

    Returns tokens [B, T] (long) and mask [B, T] (1 for words, 0 for padding)."""

    def __init__(self, n_bins: int, pad_idx: int = 0):
        self.n_bins = n_bins
        self.pad_idx = pad_idx

    def __call__(self, texts: tp.List[tp.Optional[str]]) -> tp.Tuple[torch.Tensor, torch.Tensor]:
        from audiocraft.utils.utils import hash_trick
        words = [re.findall(r"\w+", text.lower()) if text else [] for text in texts]
        length = max(1, max(len(w) for w in words))
        tokens = torch.full((len(texts), length), self.pad_idx, dtype=torch.long)
        mask = torch.zeros((len(texts), length), dtype=torch.long)
        for row, row_words in enumerate(words):
            for col, word in enumerate(row_words):
                tokens[row, col] = hash_trick(word, self.n_bins)
                mask[row, col] = 1
        return tokens, mask


def _hash_text_conditioner(n_bins: int, dim: int, output_dim: int):
    """A LUT text conditioner (audiocraft's `LUTConditioner`) with the hashing tokenizer."""
    from audiocraft.modules.conditioners import LUTConditioner

    class HashTextConditioner(LUTConditioner):
        def __init__(self):
            nn.Module.__init__(self)
            self.dim = dim
            self.output_dim = output_dim
            self.output_proj = nn.Linear(dim, output_dim)
            self.embed = nn.Embedding(n_bins, dim)
            self.tokenizer = HashWordTokenizer(n_bins)

    return HashTextConditioner()


class RandomShape(tp.NamedTuple):
    """The sizes of a random MusicGen. The codec always has MusicGen's 32 kHz EnCodec architecture:
    SEANet, ratios 8·5·4·4 (50 Hz frames), 2 LSTM layers, non-causal convolutions, RVQ of
    `n_q` codebooks of `card` entries; only `codec_filters` / `codec_dim` narrow it."""
    lm_dim: int
    lm_layers: int
    lm_heads: int
    text_dim: int
    codec_filters: int
    codec_dim: int
    n_q: int = 4
    card: int = 2048


TINY_SHAPE = RandomShape(lm_dim=64, lm_layers=2, lm_heads=4, text_dim=32, codec_filters=4, codec_dim=32)
#: musicgen-small: 24 layers, dim 1024, 16 heads, 4 codebooks of 2048, T5-base text (768), real codec.
SMALL_SHAPE = RandomShape(lm_dim=1024, lm_layers=24, lm_heads=16, text_dim=768, codec_filters=64,
                          codec_dim=128)
#: musicgen-medium: 48 layers, dim 1536, 24 heads; musicgen-large: 48 layers, dim 2048, 32 heads.
MEDIUM_SHAPE = SMALL_SHAPE._replace(lm_dim=1536, lm_layers=48, lm_heads=24)
LARGE_SHAPE = SMALL_SHAPE._replace(lm_dim=2048, lm_layers=48, lm_heads=32)
RANDOM_SHAPES = {"random-small": SMALL_SHAPE, "random-medium": MEDIUM_SHAPE, "random-large": LARGE_SHAPE}
SAMPLE_RATE = 32000


def build_random_compression_model(shape: RandomShape, target_rms: float = 0.1):
    """EnCodec 32 kHz architecture with random weights, output scaled to about `target_rms`."""
    from audiocraft import quantization as qt
    from audiocraft.models.encodec import EncodecModel
    from audiocraft.modules.seanet import SEANetDecoder, SEANetEncoder

    seanet = dict(channels=1, dimension=shape.codec_dim, n_filters=shape.codec_filters,
                  n_residual_layers=1, ratios=[8, 5, 4, 4], activation="ELU", norm="weight_norm",
                  causal=False, pad_mode="constant", true_skip=True, compress=2, lstm=2,
                  kernel_size=7, last_kernel_size=7, residual_kernel_size=3, dilation_base=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's notice on weight_norm's new API
        encoder = SEANetEncoder(**seanet)
        decoder = SEANetDecoder(**seanet, trim_right_ratio=1.0)
    quantizer = qt.ResidualVectorQuantizer(dimension=shape.codec_dim, n_q=shape.n_q, bins=shape.card,
                                           kmeans_init=False)
    model = EncodecModel(encoder, decoder, quantizer, frame_rate=SAMPLE_RATE // 640,
                         sample_rate=SAMPLE_RATE, channels=1).eval()
    with torch.no_grad():
        # Random conv biases would make the output a code-independent offset; a trained codec's
        # output is driven by its codes, so start from zero biases (the LSTM keeps its own).
        for param_name, param in decoder.named_parameters():
            if param_name.endswith("bias") and ".lstm." not in param_name:
                param.zero_()
        probe = torch.randint(0, shape.card, (1, shape.n_q, 50))
        rms = model.decode(probe).pow(2).mean().sqrt().item()
        last_conv = decoder.model[-1].conv.conv
        gain = target_rms / max(rms, 1e-9)
        if hasattr(last_conv, "weight_g"):
            last_conv.weight_g.mul_(gain)
        else:
            last_conv.weight.mul_(gain)
        if last_conv.bias is not None:
            last_conv.bias.mul_(gain)
    return model


def build_random_lm(shape: RandomShape):
    """audiocraft's LMModel with MusicGen's settings (delay pattern, cross-attention to text)."""
    from audiocraft.models.lm import LMModel
    from audiocraft.modules.codebooks_patterns import DelayedPatternProvider
    from audiocraft.modules.conditioners import ConditionFuser, ConditioningProvider

    provider = ConditioningProvider({"description": _hash_text_conditioner(
        n_bins=4096, dim=shape.text_dim, output_dim=shape.lm_dim)})
    fuser = ConditionFuser({"cross": ["description"], "prepend": [], "sum": [], "input_interpolate": []})
    lm = LMModel(DelayedPatternProvider(n_q=shape.n_q), provider, fuser, n_q=shape.n_q, card=shape.card,
                 dim=shape.lm_dim, num_heads=shape.lm_heads, num_layers=shape.lm_layers, hidden_scale=4,
                 norm="layer_norm", norm_first=True, bias_ff=False, bias_attn=False, bias_proj=False,
                 causal=True, cross_attention=True, positional_embedding="sin", activation="gelu",
                 cfg_coef=3.0, memory_efficient=True, dropout=0.0)
    return lm.eval()


def build_random_musicgen(shape: RandomShape, device: str = "cpu", seed: int = 0):
    """A MusicGen of `shape` with random weights, initialised on `device` (musicgen-large's
    3.3 G parameters take seconds on a GPU); the same `seed` on the same kind of device gives the
    same weights."""
    from audiocraft.models import MusicGen

    target = torch.device(device)
    rng_devices = [target.index or 0] if target.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices), target:
        torch.manual_seed(seed)
        compression_model = build_random_compression_model(shape)
        lm = build_random_lm(shape)
    return MusicGen("random", compression_model.to(device), lm.to(device), max_duration=30.0)
