"""Model loading: real MusicGen checkpoints (hub name or local folder) and random models of real shape.

Every loader returns an audiocraft `MusicGen`, so the rest of the engine sees one interface:
`.lm` (the token LM), `.compression_model` (the EnCodec codec), `.sample_rate`, `.frame_rate`,
`.audio_channels`, `.max_duration`.
"""
from __future__ import annotations

import logging
import os
import re
import socket
import time
import urllib.parse
import typing as tp
import warnings

import torch
from torch import nn

log = logging.getLogger(__name__)

#: Names of the published audiocraft MusicGen checkpoints on the Hugging Face hub.
KNOWN_HUB_MODELS = tuple(
    f"facebook/musicgen-{size}" for size in (
        "small", "medium", "large", "melody", "melody-large",
        "stereo-small", "stereo-medium", "stereo-large", "stereo-melody", "stereo-melody-large"))
#: Random models built in-process (no download): `tiny` for demos and tests; `random-small`,
#: `random-medium` and `random-large` with the LM shapes of musicgen-small/-medium/-large, for
#: benchmarks.
RANDOM_MODELS = ("tiny", "random-small", "random-medium", "random-large")


class ModelLoadError(RuntimeError):
    """The model cannot be loaded; the message says why and what to do instead."""


def _quiet_audiocraft_import():
    """Import audiocraft without its noisy xFormers notice (we use torch attention, not xFormers)."""
    os.environ.setdefault("XFORMERS_MORE_DETAILS", "0")
    logging.getLogger("xformers").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import audiocraft.models  # noqa: F401
    from audiocraft.modules import transformer
    transformer.set_efficient_attention_backend("torch")


def resolve_device(device: str) -> str:
    """Map `auto` to `cuda` when a GPU is present, else `cpu`; refuse `cuda` without one."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return device


def check_model_name(name: str) -> None:
    """Fail fast (before any loading) on a name that is none of: random model, hub id, local folder."""
    if name in RANDOM_MODELS or os.path.isdir(name) or name in KNOWN_HUB_MODELS:
        return
    if re.fullmatch(r"[\w.-]+/[\w.-]+", name) and not os.path.exists(name):
        return  # another hub id (a fine-tune): the hub decides
    raise ModelLoadError(
        f"unknown model {name!r}: use --model tiny (offline demo), one of "
        f"{', '.join(KNOWN_HUB_MODELS[:4])}, ... or a local folder holding "
        f"state_dict.bin and compression_state_dict.bin")


def load_model(name: str, device: str = "cpu", seed: int = 0):
    """Load `name` onto `device`: `tiny`, `random-small`, a hub id or a local checkpoint folder."""
    check_model_name(name)
    _quiet_audiocraft_import()
    started = time.monotonic()
    if name == "tiny":
        log.info("model: building the tiny random MusicGen (seed %d) - it makes noise, not music; "
                 "it is for the offline demo and the tests", seed)
        model = build_random_musicgen(TINY_SHAPE, device=device, seed=seed)
    elif name in RANDOM_SHAPES:
        size = name.split("-")[1]
        log.info("model: building a random MusicGen with musicgen-%s's shape (seed %d) - noise, "
                 "for benchmarks", size, seed)
        model = build_random_musicgen(RANDOM_SHAPES[name], device=device, seed=seed)
    else:
        model = _load_pretrained(name, device)
    n_params = sum(p.numel() for p in model.lm.parameters())
    log.info("model: %s ready on %s in %.1f s (LM %.1f M parameters, %d Hz, %d channel(s), "
             "%d codebooks at %.0f frames/s)", name, device, time.monotonic() - started, n_params / 1e6,
             model.sample_rate, model.audio_channels, model.lm.num_codebooks, model.frame_rate)
    return model


def _load_pretrained(name: str, device: str):
    from audiocraft.models import MusicGen
    from audiocraft.models.loaders import load_compression_model, load_lm_model

    where = "local folder" if os.path.isdir(name) else "Hugging Face hub (or its cache)"
    log.info("model: loading %s from the %s", name, where)
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    if not os.path.isdir(name) and not _hub_reachable():
        # Offline: use the local cache only, so a missing checkpoint fails now, not after retries.
        from huggingface_hub import constants
        constants.HF_HUB_OFFLINE = True
        log.info("model: huggingface.co is unreachable; looking in the local cache only")
    try:
        log.info("model: [1/2] language model weights ...")
        lm = load_lm_model(name, device=device)
        log.info("model: [2/2] compression model weights ...")
        compression_model = load_compression_model(name, device=device)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ModelLoadError(_explain_load_failure(name, err)) from err
    except Exception as err:  # huggingface_hub raises its own hierarchy (offline, 404, auth)
        raise ModelLoadError(_explain_load_failure(name, err)) from err
    if "self_wav" in lm.condition_provider.conditioners:
        lm.condition_provider.conditioners["self_wav"].match_len_on_eval = True
        lm.condition_provider.conditioners["self_wav"]._use_masking = False
    return MusicGen(name, compression_model, lm)


def _hub_reachable(timeout_seconds: float = 3.0) -> bool:
    from huggingface_hub import constants
    if constants.HF_HUB_OFFLINE:
        return False
    host = urllib.parse.urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout_seconds).close()
        return True
    except OSError:
        return False


def _explain_load_failure(name: str, err: BaseException) -> str:
    if os.path.isdir(name):
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        return (f"cannot load the checkpoint folder {name!r} ({type(err).__name__}: {first_line}); it "
                f"must hold audiocraft's state_dict.bin and compression_state_dict.bin")
    return (f"cannot load {name!r}: not reachable on the Hugging Face hub and not in its local cache "
            f"({type(err).__name__}). Download it on a connected machine (huggingface-cli download {name} "
            f"--local-dir DIR; the text encoder t5-base too) and pass --model DIR, or use --model tiny")


# --------------------------------------------------------------------------------------------
# Random models of real architecture


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
