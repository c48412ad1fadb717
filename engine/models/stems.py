"""The stem splitter a melody checkpoint needs: Demucs' `htdemucs`, found offline.

musicgen-melody's chroma conditioner (audiocraft's ChromaStemConditioner) separates the melody
clip with Demucs and keeps the stems that carry the melody before taking its chromagram. Demucs
fetches `htdemucs` from the Hugging Face hub (`adefossez/HTDemucs`: `htdemucs.yaml`, the bag,
and one `SIG.safetensors` per model in it). It is found, in this order, inside the model folder
(`DIR/htdemucs/`), then in the Hugging Face cache; offline and in neither, the load stops with
what to do, before anything tries the network.
"""
from __future__ import annotations

import contextlib
import os
import typing as tp

from .checkpoint import ModelLoadError

#: The Demucs model audiocraft's chroma conditioner asks for.
STEM_SPLITTER = "htdemucs"


def hub_repo() -> str:
    """Where Demucs keeps `htdemucs` on the Hugging Face hub ("adefossez/HTDemucs")."""
    from demucs.hf import DEFAULT_NAMESPACE, hf_repo_name
    return f"{DEFAULT_NAMESPACE}/{hf_repo_name(STEM_SPLITTER)}"


def needs_stem_splitter(cfg) -> bool:
    """Whether the LM config has a chroma (melody) conditioner."""
    conditioners = cfg.get("conditioners") or {}
    return any(hasattr(c, "get") and c.get("model") == "chroma_stem" for c in conditioners.values())


def find_stem_splitter(folder: tp.Optional[str], offline: bool) -> tp.Optional[str]:
    """The folder holding `htdemucs.yaml` and its weights: `FOLDER/htdemucs/`, else the Hugging
    Face cache's snapshot; None when online and in neither (Demucs downloads it). ModelLoadError
    when offline and nowhere."""
    if folder and os.path.isfile(os.path.join(folder, STEM_SPLITTER, f"{STEM_SPLITTER}.yaml")):
        return os.path.join(folder, STEM_SPLITTER)
    from huggingface_hub import try_to_load_from_cache
    try:
        found = try_to_load_from_cache(hub_repo(), f"{STEM_SPLITTER}.yaml")
    except Exception:  # noqa: BLE001 - a malformed cache counts as missing
        found = None
    if isinstance(found, str):
        return os.path.dirname(found)
    if not offline:
        return None
    where = (f"put it in {os.path.join(folder, STEM_SPLITTER)} (python -m engine.fetch_model on a connected "
             f"machine fills a model folder with it) or" if folder else "")
    raise ModelLoadError(f"a melody model separates its melody clip with Demucs' {STEM_SPLITTER}, which is not on "
                         f"this machine and the Hugging Face hub cannot be reached: {where} fill the Hugging Face "
                         f"cache (hf download {hub_repo()})")


def load_stem_splitter(folder: str):
    """The Demucs bag of models in `folder` (`htdemucs.yaml` and its `SIG.safetensors` files),
    in eval mode. ModelLoadError for a missing or damaged file."""
    import yaml
    from demucs.apply import BagOfModels
    from demucs.hf import load_safetensors_model
    bag_path = os.path.join(folder, f"{STEM_SPLITTER}.yaml")
    try:
        with open(bag_path) as f:
            bag = yaml.safe_load(f)
        models = [load_safetensors_model(os.path.join(folder, f"{sig}.safetensors")) for sig in bag["models"]]
    except FileNotFoundError as err:
        raise ModelLoadError(f"{folder} lacks {os.path.basename(err.filename or '?')} of Demucs' {STEM_SPLITTER}; "
                             f"download it again (hf download {hub_repo()})") from err
    except Exception as err:  # noqa: BLE001 - yaml, safetensors and torch raise their own kinds
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise ModelLoadError(f"Demucs' {STEM_SPLITTER} in {folder} is damaged or incomplete ({first}); "
                             f"download it again (hf download {hub_repo()})") from err
    splitter = BagOfModels(models, bag.get("weights"), bag.get("segment"))
    splitter.eval()
    return splitter


@contextlib.contextmanager
def stem_splitter_at(folder: tp.Optional[str]):
    """While the LM is built, audiocraft's chroma conditioner gets Demucs' `htdemucs` from
    `folder` (None: as Demucs itself fetches it)."""
    if folder is None:
        yield
        return
    from demucs import pretrained
    fetch = pretrained.get_model

    def get_model(name, repo=None):
        return load_stem_splitter(folder) if name == STEM_SPLITTER and repo is None else fetch(name, repo)
    pretrained.get_model = get_model
    try:
        yield
    finally:
        pretrained.get_model = fetch
