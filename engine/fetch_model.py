"""Fill a self-contained model folder on a connected machine, for one that is offline:

    python -m engine.fetch_model facebook/musicgen-small DIR

DIR gets the checkpoint (`state_dict.bin`, `compression_state_dict.bin`), in `DIR/t5-base/` the
text encoder it names (config, tokenizer, weights) and, for a melody model, in `DIR/htdemucs/`
the Demucs stem splitter its chroma conditioner runs (models/stems.py). The files come through
the Hugging Face cache (a second fetch, or one with `HF_HUB_OFFLINE=1` and a filled cache,
copies from there).
The folder is then loaded as `server.py --model DIR` will load it, with the hub switched off, to
check that it is complete. Exit code 0 when it is, 2 with one line saying what failed.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys

from .models.checkpoint import CODEC_FILE, LM_FILE, ModelLoadError, checkpoint_config, read_package, text_encoder_names
from .models.stems import STEM_SPLITTER, hub_repo, needs_stem_splitter

log = logging.getLogger("fetch_model")

#: What a text encoder needs, of the files its hub repository holds (not the TF / Flax weights).
TEXT_ENCODER_FILES = ["config.json", "spiece.model", "tokenizer.json", "tokenizer_config.json",
                      "special_tokens_map.json", "model.safetensors"]


def fetch(model: str, folder: str) -> None:
    """Copy `model`'s checkpoint and its text encoder(s) into `folder`. Raises ModelLoadError."""
    from huggingface_hub import hf_hub_download, snapshot_download
    os.makedirs(folder, exist_ok=True)
    for name in (LM_FILE, CODEC_FILE):
        log.info("fetch: %s %s ...", model, name)
        try:
            cached = hf_hub_download(repo_id=model, filename=name)
        except Exception as err:  # noqa: BLE001 - the hub's own hierarchy (offline, 404, auth)
            raise ModelLoadError(f"cannot fetch {name} of {model} ({type(err).__name__}): check the name and "
                                 f"the network (or the Hugging Face cache when offline)") from err
        shutil.copyfile(cached, os.path.join(folder, name))
    cfg = checkpoint_config(read_package(os.path.join(folder, LM_FILE), "the language model"))
    for encoder in text_encoder_names(cfg):
        log.info("fetch: text encoder %s ...", encoder)
        try:
            snapshot = snapshot_download(repo_id=encoder, allow_patterns=TEXT_ENCODER_FILES)
        except Exception as err:  # noqa: BLE001
            raise ModelLoadError(f"cannot fetch the text encoder {encoder} ({type(err).__name__})") from err
        target = os.path.join(folder, encoder)
        os.makedirs(target, exist_ok=True)
        for name in os.listdir(snapshot):
            if name in TEXT_ENCODER_FILES:
                shutil.copyfile(os.path.join(snapshot, name), os.path.join(target, name))
    if needs_stem_splitter(cfg):
        _fetch_stem_splitter(os.path.join(folder, STEM_SPLITTER))


def _fetch_stem_splitter(target: str) -> None:
    """Demucs' bag file and the weights of each model in it, into `target`."""
    import yaml
    from huggingface_hub import hf_hub_download
    log.info("fetch: melody stem splitter %s (%s) ...", STEM_SPLITTER, hub_repo())
    os.makedirs(target, exist_ok=True)
    try:
        bag_path = hf_hub_download(repo_id=hub_repo(), filename=f"{STEM_SPLITTER}.yaml")
        with open(bag_path) as f:
            names = [f"{STEM_SPLITTER}.yaml"] + [f"{sig}.safetensors" for sig in yaml.safe_load(f)["models"]]
        for name in names:
            shutil.copyfile(hf_hub_download(repo_id=hub_repo(), filename=name), os.path.join(target, name))
    except Exception as err:  # noqa: BLE001 - the hub's own hierarchy
        raise ModelLoadError(f"cannot fetch Demucs' {STEM_SPLITTER} from {hub_repo()} ({type(err).__name__})") from err


def check(folder: str) -> None:
    """Load `folder` as the server will, with the hub off: ModelLoadError when incomplete."""
    from huggingface_hub import constants

    from .models.load import load_model
    offline = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        load_model(folder, device="cpu")
    finally:
        constants.HF_HUB_OFFLINE = offline


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.fetch_model",
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="hub name, e.g. facebook/musicgen-small")
    parser.add_argument("folder", help="the folder to fill (created if missing)")
    parser.add_argument("--no-check", action="store_true", help="do not load the folder afterwards")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    try:
        fetch(args.model, args.folder)
        if not args.no_check:
            check(args.folder)
    except ModelLoadError as err:
        log.error("%s", err)
        return 2
    log.info("fetch: %s is complete; copy it to the offline machine and run: server.py --model %s",
             args.folder, args.folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
