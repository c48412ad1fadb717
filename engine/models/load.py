"""Model loading: real MusicGen checkpoints (hub name or local folder) and random models of real
shape (random_musicgen.py).

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
import typing as tp
import urllib.parse
import warnings

import torch

from ..codec.activations import use_native_elu
from ..codec.upsampling import speed_up_upsampling
from .checkpoint import (CODEC_FILE, LM_FILE, ModelLoadError, check_family, checkpoint_config, find_text_encoder,
                         hub_offline, read_package, set_text_encoders, text_encoder_names, text_encoders_at)
from .memory import shortage
from .stems import STEM_SPLITTER, find_stem_splitter, needs_stem_splitter, stem_splitter_at
from .random_musicgen import RANDOM_SHAPES, TINY_SHAPE, build_random_musicgen

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


def has_melody_conditioning(model) -> bool:
    """Whether the model's LM is conditioned on a melody clip (its chroma: musicgen-melody)."""
    return "self_wav" in model.lm.condition_provider.conditioners


def load_model(name: str, device: str = "cpu", seed: int = 0, text_encoder: tp.Optional[str] = None,
               dtype: str = "fp32"):
    """Load `name` onto `device`: `tiny`, `random-small`, a hub id or a local checkpoint folder
    (`text_encoder`: a folder holding the T5 the checkpoint names, else found as
    checkpoint.find_text_encoder says; `dtype`: the fast decoder's precision, for the memory check)."""
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
        model = _load_pretrained(name, device, text_encoder, dtype)
    if device == "cpu":
        use_native_elu(model.compression_model)
        speed_up_upsampling(model.compression_model)
    n_params = sum(p.numel() for p in model.lm.parameters())
    log.info("model: %s ready on %s in %.1f s (LM %.1f M parameters, %d Hz, %d channel(s), "
             "%d codebooks at %.0f frames/s)", name, device, time.monotonic() - started, n_params / 1e6,
             model.sample_rate, model.audio_channels, model.lm.num_codebooks, model.frame_rate)
    return model


def _load_pretrained(name: str, device: str, text_encoder: tp.Optional[str] = None, dtype: str = "fp32"):
    """A hub checkpoint (or its cache) or a local folder, with its text encoder found as
    checkpoint.find_text_encoder says."""
    from audiocraft.models import MusicGen

    folder = name if os.path.isdir(name) else None
    log.info("model: loading %s from the %s", name, "local folder" if folder else "Hugging Face hub (or its cache)")
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    if folder is None and not _hub_reachable():
        # Offline: use the local cache only, so a missing checkpoint fails now, not after retries.
        from huggingface_hub import constants
        constants.HF_HUB_OFFLINE = True
        log.info("model: huggingface.co is unreachable; looking in the local cache only")
    lm_path, codec_path = _checkpoint_files(name, folder)
    log.info("model: [1/3] language model weights ...")
    lm_package = read_package(lm_path, "the language model")
    cfg = checkpoint_config(lm_package)
    check_family(cfg, name)
    too_large = shortage(cfg, name, device, dtype)
    if too_large:
        raise ModelLoadError(too_large)
    locations = {encoder: find_text_encoder(encoder, folder, text_encoder) for encoder in text_encoder_names(cfg)}
    for encoder, where in locations.items():
        log.info("model: [2/3] text encoder %s from %s", encoder, "the Hugging Face cache" if where == encoder else where)
    splitter = None
    if needs_stem_splitter(cfg):
        splitter = find_stem_splitter(folder, offline=hub_offline())
        log.info("model: [2/3] melody stem splitter %s from %s", STEM_SPLITTER, splitter or "the Hugging Face hub")
    log.info("model: [3/3] compression model weights ...")
    codec_package = read_package(codec_path, "the codec")
    try:
        lm = _build_lm(lm_package, cfg, device, locations, splitter)
        compression_model = _build_codec(codec_package, device)
    except ModelLoadError:
        raise
    except Exception as err:  # noqa: BLE001 - audiocraft, transformers and the hub raise their own kinds
        raise ModelLoadError(_explain_load_failure(name, err)) from err
    if "self_wav" in lm.condition_provider.conditioners:
        lm.condition_provider.conditioners["self_wav"].match_len_on_eval = True
        lm.condition_provider.conditioners["self_wav"]._use_masking = False
    return MusicGen(name, compression_model, lm)


def _checkpoint_files(name: str, folder: tp.Optional[str]) -> tp.Tuple[str, str]:
    """The paths of the LM and codec files: in the folder, or from the hub (its cache)."""
    if folder is not None:
        present = [f for f in (LM_FILE, CODEC_FILE) if os.path.isfile(os.path.join(folder, f))]
        if len(present) == 1:
            missing = CODEC_FILE if present == [LM_FILE] else LM_FILE
            raise ModelLoadError(f"the folder {folder!r} holds {present[0]} but not {missing}: a MusicGen "
                                 f"checkpoint is both files; download the missing one into the folder")
        if not present:
            raise ModelLoadError(f"the folder {folder!r} holds no checkpoint: it needs audiocraft's {LM_FILE} "
                                 f"and {CODEC_FILE} (python -m engine.fetch_model MODEL DIR fills one)")
        return os.path.join(folder, LM_FILE), os.path.join(folder, CODEC_FILE)
    from huggingface_hub import hf_hub_download
    try:
        return tuple(hf_hub_download(repo_id=name, filename=f) for f in (LM_FILE, CODEC_FILE))  # type: ignore
    except Exception as err:  # noqa: BLE001 - huggingface_hub raises its own hierarchy (offline, 404, auth)
        raise ModelLoadError(_explain_load_failure(name, err)) from err


def _build_lm(package: dict, cfg, device: str, locations: tp.Mapping[str, str], splitter: tp.Optional[str] = None):
    """audiocraft's LM from its package (as audiocraft's loader does), its T5 from `locations`,
    a melody model's Demucs from the folder `splitter` (models/stems.py)."""
    from audiocraft.models import builders
    from audiocraft.models.loaders import _delete_param
    cfg.device = str(device)
    cfg.dtype = "float32" if device == "cpu" else "float16"
    for path in ("conditioners.self_wav.chroma_stem.cache_path", "conditioners.args.merge_text_conditions_p",
                 "conditioners.args.drop_desc_p"):
        _delete_param(cfg, path)
    set_text_encoders(cfg, locations)
    with text_encoders_at(locations), stem_splitter_at(splitter), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = builders.get_lm_model(cfg)
    lm.load_state_dict(package["best_state"])
    lm.eval()
    lm.cfg = cfg  # stereo checkpoints say here how their codec interleaves (audiocraft's MusicGen reads it)
    return lm


def _build_codec(package: dict, device: str):
    from audiocraft.models import builders
    from audiocraft.models.encodec import CompressionModel
    if "pretrained" in package:
        return CompressionModel.get_pretrained(package["pretrained"], device=device)
    cfg = checkpoint_config(package)
    cfg.device = str(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = builders.get_compression_model(cfg)
    model.load_state_dict(package["best_state"])
    return model.eval()


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
            f"({type(err).__name__}). Download it on a connected machine (hf download {name} "
            f"--local-dir DIR; the text encoder t5-base too) and pass --model DIR, or use --model tiny")
