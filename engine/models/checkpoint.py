"""A MusicGen checkpoint in audiocraft's format and its text encoder, read with clear errors.

A checkpoint is two files, `state_dict.bin` (the LM) and `compression_state_dict.bin` (the
codec), each a torch-saved {"xp.cfg": the training config (YAML text or a dict), "best_state":
the weights}, as the hub ships them. The LM's conditioner names its text encoder (`t5-base`); it
is found, in this order, at `--text-encoder DIR`, inside the checkpoint folder (`DIR/t5-base/`),
or in the Hugging Face cache, so that an offline machine needs one folder.
"""
from __future__ import annotations

import contextlib
import logging
import os
import pickle
import typing as tp
import zipfile

import torch

log = logging.getLogger(__name__)

LM_FILE = "state_dict.bin"
CODEC_FILE = "compression_state_dict.bin"
#: Other audiocraft model families: what they make, for the refusal.
OTHER_FAMILIES = {"audiogen": "AudioGen (sound effects)", "magnet": "MAGNeT (non-autoregressive music)",
                  "jasco": "JASCO (chords and drums to music)", "compression": "a codec alone"}


class ModelLoadError(RuntimeError):
    """The model cannot be loaded; the message says why and what to do instead."""


def read_package(path: str, what: str) -> dict:
    """One checkpoint file → its dict. A damaged file (a truncated download, a bad pickle) is a
    ModelLoadError saying so."""
    try:
        try:  # memory-mapped: the weights are read when copied into the model, not twice
            package = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            package = torch.load(path, map_location="cpu", weights_only=False)  # an old, non-zip file
    except FileNotFoundError:
        raise
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise ModelLoadError(f"{path} ({what}) is damaged or incomplete - a truncated download? ({first}); "
                             f"download it again") from err
    if not isinstance(package, dict) or "best_state" not in package and "pretrained" not in package:
        raise ModelLoadError(f"{path} ({what}) is not an audiocraft checkpoint (no 'xp.cfg' and "
                             f"'best_state'); MusicGen checkpoints come as {LM_FILE} and {CODEC_FILE}")
    return package


def checkpoint_config(package: dict):
    """The package's training config as an OmegaConf DictConfig."""
    from omegaconf import OmegaConf
    return OmegaConf.create(package["xp.cfg"])


def check_family(cfg, where: str) -> None:
    """Refuse checkpoints of other audiocraft model families, saying which it is."""
    solver = str(cfg.get("solver", "musicgen") or "musicgen").split("/")[0]
    lm_model = cfg.get("lm_model", "transformer_lm")
    if lm_model == "transformer_lm_magnet":
        solver = "magnet"
    if solver != "musicgen" or lm_model != "transformer_lm":
        family = OTHER_FAMILIES.get(solver, f"a {solver!r} model")
        raise ModelLoadError(f"{where} is a checkpoint of {family}, not MusicGen; this radio plays MusicGen "
                             f"checkpoints (facebook/musicgen-*)")


def text_encoder_names(cfg) -> tp.List[str]:
    """The T5 models the LM's conditioners name (e.g. ["t5-base"])."""
    conditioners = cfg.get("conditioners") or {}
    return sorted({str(c["t5"]["name"]) for c in conditioners.values() if hasattr(c, "get") and c.get("model") == "t5"})


def find_text_encoder(name: str, folder: tp.Optional[str], text_encoder: tp.Optional[str]) -> str:
    """Where the text encoder `name` comes from: `--text-encoder DIR`, `FOLDER/NAME`, or the
    hub name itself (the Hugging Face cache, or the hub when online). ModelLoadError when it is
    nowhere to be found offline."""
    for candidate, how in ((text_encoder, "--text-encoder"), (folder and os.path.join(folder, name), "the model folder")):
        if not candidate:
            continue
        if os.path.isfile(os.path.join(candidate, "config.json")):
            return candidate
        if how == "--text-encoder":
            raise ModelLoadError(f"--text-encoder {candidate!r} holds no text encoder (no config.json); give the "
                                 f"folder a Hugging Face {name} was saved to")
    if _in_hf_cache(name) or not hub_offline():
        return name
    hint = (f"put it in {os.path.join(folder, name)} (python -m engine.fetch_model on a connected machine "
            f"fills a model folder with it) or" if folder else "")
    raise ModelLoadError(f"the text encoder {name} is not on this machine and the Hugging Face hub cannot be "
                         f"reached: {hint} give --text-encoder DIR (hf download {name} --local-dir DIR)")


def hub_offline() -> bool:
    from huggingface_hub import constants
    return bool(constants.HF_HUB_OFFLINE)


def _in_hf_cache(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache
    try:
        found = try_to_load_from_cache(name, "config.json")
    except Exception:  # noqa: BLE001 - a malformed cache counts as missing
        return False
    return isinstance(found, str)


@contextlib.contextmanager
def text_encoders_at(locations: tp.Mapping[str, str]):
    """Let audiocraft's T5 conditioner load `name` from `locations[name]` (a folder) while the
    LM is built (its list of known names is extended for that time only)."""
    from audiocraft.modules.conditioners import T5Conditioner
    added = [(name, path) for name, path in locations.items() if path != name and path not in T5Conditioner.MODELS]
    for name, path in added:
        T5Conditioner.MODELS.append(path)
        T5Conditioner.MODELS_DIMS[path] = T5Conditioner.MODELS_DIMS[name]
    try:
        yield
    finally:
        for name, path in added:
            T5Conditioner.MODELS.remove(path)
            T5Conditioner.MODELS_DIMS.pop(path, None)


def set_text_encoders(cfg, locations: tp.Mapping[str, str]) -> None:
    """Point the config's T5 conditioners at their found locations."""
    from omegaconf import OmegaConf
    OmegaConf.set_struct(cfg, False)
    for conditioner in (cfg.get("conditioners") or {}).values():
        if hasattr(conditioner, "get") and conditioner.get("model") == "t5":
            conditioner["t5"]["name"] = locations.get(str(conditioner["t5"]["name"]), conditioner["t5"]["name"])
