"""Checkpoint folders written with the configs of the published MusicGen models, and a random T5
with t5-base's width, for the conformance tests (no download: everything but the trained numbers).

The `xp.cfg` fields follow audiocraft's configs (config/model/lm/musicgen_lm.yaml and
model_scale/*.yaml, config/conditioner/text2music.yaml, the 32 kHz solver; stereo checkpoints
interleave two codebook streams), shrunk only where size forces it: 2 layers and 8 dimensions per
head (the head count kept), a narrower codec and a 2-layer T5. Codebooks, delay patterns,
conditioners, fusers and CFG settings are the published ones. Files are written as the hub ships
them: the config as YAML text, with `version` and `exported`.
"""
from __future__ import annotations

import copy
import os
import typing as tp
import warnings
from fractions import Fraction

import torch

#: model → (dim, heads, layers) as published, and its variant.
PUBLISHED = {
    "musicgen-small": dict(scale=(1024, 16, 24)),
    "musicgen-medium": dict(scale=(1536, 24, 48)),
    "musicgen-large": dict(scale=(2048, 32, 48)),
    "musicgen-stereo-small": dict(scale=(1024, 16, 24), stereo=True),
    "musicgen-melody": dict(scale=(1536, 24, 48), melody=True),
}
SHRUNK_LAYERS, SHRUNK_HEAD_DIM = 2, 8
T5_NAME = "t5-base"


def lm_config(model: str) -> dict:
    """The LM's xp.cfg of a published model, shrunk (see the module docstring)."""
    spec = PUBLISHED[model]
    _, heads, _ = spec["scale"]
    stereo = spec.get("stereo", False)
    n_q = 8 if stereo else 4
    cfg = {
        "solver": "musicgen", "sample_rate": 32000, "channels": 2 if stereo else 1, "device": "cpu",
        "dtype": "float32", "dataset": {"segment_duration": 30, "batch_size": 192},
        "lm_model": "transformer_lm",
        "codebooks_pattern": {"modeling": "delay",
                              "delay": {"delays": [0, 0, 1, 1, 2, 2, 3, 3] if stereo else [0, 1, 2, 3],
                                        "flatten_first": 0, "empty_initial": 0},
                              "unroll": {"flattening": [0, 1, 2, 3], "delays": [0, 0, 0, 0]},
                              "music_lm": {"group_by": 2}, "coarse_first": {"delays": [0, 0, 0]}},
        "transformer_lm": {
            "dim": heads * SHRUNK_HEAD_DIM, "num_heads": heads, "num_layers": SHRUNK_LAYERS, "hidden_scale": 4,
            "n_q": n_q, "card": 2048, "dropout": 0.0, "emb_lr": None, "activation": "gelu", "norm_first": True,
            "bias_ff": False, "bias_attn": False, "bias_proj": False, "past_context": None, "causal": True,
            "custom": False, "memory_efficient": True, "attention_as_float32": False, "layer_scale": None,
            "positional_embedding": "sin", "xpos": False, "checkpointing": "none", "weight_init": "gaussian",
            "depthwise_init": "current", "zero_bias_init": True, "norm": "layer_norm", "cross_attention": False,
            "qk_layer_norm": False, "qk_layer_norm_cross": False, "attention_dropout": None, "kv_repeat": 1,
            "two_step_cfg": False},
        "classifier_free_guidance": {"training_dropout": 0.3, "inference_coef": 3.0},
        "attribute_dropout": {},
        "fuser": {"cross_attention_pos_emb": False, "cross_attention_pos_emb_scale": 1, "sum": [], "prepend": [],
                  "cross": ["description"], "input_interpolate": []},
        "conditioners": {"description": {"model": "t5", "t5": {
            "name": T5_NAME, "finetune": False, "word_dropout": 0.3, "normalize_text": False}}},
    }
    if stereo:
        cfg["interleave_stereo_codebooks"] = {"use": True, "per_timestep": False}
    if spec.get("melody"):  # config/conditioner/chroma2music.yaml: text and chroma prepended
        cfg["classifier_free_guidance"]["training_dropout"] = 0.2
        cfg["attribute_dropout"] = {"args": {"active_on_eval": False}, "text": {}, "wav": {"self_wav": 0.5}}
        cfg["fuser"].update(prepend=["self_wav", "description"], cross=[])
        cfg["conditioners"]["description"]["t5"]["word_dropout"] = 0.2
        cfg["conditioners"]["self_wav"] = {"model": "chroma_stem", "chroma_stem": {
            "sample_rate": 32000, "n_chroma": 12, "radix2_exp": 14, "argmax": True, "match_len_on_eval": False,
            "eval_wavs": None, "n_eval_wavs": 100, "cache_path": None}}
        cfg["conditioners"]["args"] = {"merge_text_conditions_p": 0.25, "drop_desc_p": 0.5}
    return cfg


def codec_config() -> dict:
    """EnCodec 32 kHz as MusicGen uses it (4 codebooks of 2048, 50 Hz), narrower (8 filters)."""
    seanet = dict(dimension=128, channels=1, n_filters=8, n_residual_layers=1, ratios=[8, 5, 4, 4],
                  activation="ELU", activation_params={"alpha": 1.0}, norm="weight_norm", norm_params={},
                  kernel_size=7, last_kernel_size=7, residual_kernel_size=3, dilation_base=2, causal=False,
                  pad_mode="constant", true_skip=True, compress=2, lstm=2, disable_norm_outer_blocks=0,
                  encoder={}, decoder={"trim_right_ratio": 1.0, "final_activation": None,
                                       "final_activation_params": None})
    return dict(compression_model="encodec", device="cpu", dtype="float32", sample_rate=32000, channels=1,
                encodec=dict(autoencoder="seanet", quantizer="rvq", sample_rate=32000, channels=1, causal=False,
                             renormalize=False),
                seanet=seanet, rvq=dict(n_q=4, bins=2048, q_dropout=False, decay=0.99, kmeans_init=False,
                                        kmeans_iters=10, threshold_ema_dead_code=2))


def write_t5(folder: str) -> str:
    """A random T5 encoder with t5-base's width (d_model 768, 12 heads, d_ff 3072, its 32128
    vocabulary), 2 layers, and a sentencepiece tokenizer trained here; saved as
    `save_pretrained` does. Returns `folder`."""
    import sentencepiece
    from transformers import T5Config, T5EncoderModel, T5Tokenizer
    os.makedirs(folder, exist_ok=True)
    corpus = os.path.join(folder, "corpus.txt")
    words = ("warm lofi hip hop with vinyl crackle dark ambient rain fast drums bass slow piano jazz trio epic "
             "orchestral soundtrack choir synthwave arpeggios acoustic guitar folk techno house beat").split()
    with open(corpus, "w") as f:
        for i in range(400):
            f.write(" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(6)) + "\n")
    prefix = os.path.join(folder, "spiece")
    sentencepiece.SentencePieceTrainer.train(
        input=corpus, model_prefix=prefix, vocab_size=150, model_type="unigram", pad_id=0, eos_id=1, unk_id=2,
        bos_id=-1, character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
    torch.manual_seed(5)
    config = T5Config(d_model=768, d_kv=64, d_ff=3072, num_layers=2, num_heads=12, vocab_size=32128)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        T5EncoderModel(config).save_pretrained(folder)
        T5Tokenizer(vocab_file=prefix + ".model", extra_ids=100).save_pretrained(folder)
    for leftover in ("corpus.txt", "spiece.vocab"):
        os.remove(os.path.join(folder, leftover))
    return folder


def write_htdemucs(folder: str, signature: str = "955717e8") -> str:
    """A random Demucs `htdemucs` (HTDemucs with its sources, rate and segment, 8 channels and one
    transformer layer instead of 48 and 5) laid out as its hub repository is: `htdemucs.yaml`
    and `SIG.safetensors` with the class and arguments in the metadata. Returns `folder`."""
    import json

    import yaml
    from demucs.htdemucs import HTDemucs
    from safetensors.torch import save_file
    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(3)
    kwargs = dict(sources=["drums", "bass", "other", "vocals"], audio_channels=2, samplerate=44100,
                  channels=8, t_layers=1, t_heads=2)
    model = HTDemucs(segment=Fraction(39, 5), **kwargs)
    kwargs["segment"] = {"_type": "fraction", "numerator": 39, "denominator": 5}
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(folder, f"{signature}.safetensors"), metadata={
        "klass": "demucs.htdemucs.HTDemucs", "args": "[]", "kwargs": json.dumps(kwargs)})
    with open(os.path.join(folder, "htdemucs.yaml"), "w") as f:
        yaml.safe_dump({"models": [signature]}, f)
    return folder


def put_in_hf_cache(t5_folder: str, hf_home: str, name: str = T5_NAME) -> None:
    """Lay `t5_folder` out as the Hugging Face cache holds a downloaded `name`."""
    import shutil
    revision = "0" * 40
    repo = os.path.join(hf_home, "hub", f"models--{name.replace('/', '--')}")
    snapshot = os.path.join(repo, "snapshots", revision)
    shutil.copytree(t5_folder, snapshot)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(revision)


def write_checkpoint(folder: str, model: str, t5_folder: str, seed: int = 0,
                     demucs_folder: tp.Optional[str] = None) -> dict:
    """`folder`/state_dict.bin and compression_state_dict.bin of `model`'s config with random
    weights (the T5 read from `t5_folder` while building; a melody model's Demucs from
    `demucs_folder`). Returns the LM config."""
    from audiocraft.models import builders
    from omegaconf import OmegaConf

    from engine.models.checkpoint import set_text_encoders, text_encoders_at
    from engine.models.stems import stem_splitter_at
    os.makedirs(folder, exist_ok=True)
    cfg, codec_cfg = lm_config(model), codec_config()
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compression = builders.get_compression_model(OmegaConf.create(codec_cfg))
        build_cfg = OmegaConf.create(copy.deepcopy(cfg))
        set_text_encoders(build_cfg, {T5_NAME: t5_folder})
        with text_encoders_at({T5_NAME: t5_folder}), stem_splitter_at(demucs_folder):
            lm = builders.get_lm_model(build_cfg)
    for name, cfg_dict, state in ((os.path.join(folder, "compression_state_dict.bin"), codec_cfg, compression.state_dict()),
                                  (os.path.join(folder, "state_dict.bin"), cfg, lm.state_dict())):
        torch.save({"xp.cfg": OmegaConf.to_yaml(OmegaConf.create(cfg_dict)), "best_state": state,
                    "version": "1.0", "exported": True}, name)
    return cfg


def write_melody_clip(path, seconds: float = 30.0, rate: int = 44100) -> str:
    """A stereo melody at 44.1 kHz (the model resamples it): a note every half second."""
    import numpy as np
    import soundfile
    t = np.arange(int(seconds * rate)) / rate
    notes = 220.0 * 2 ** (np.array([0, 3, 5, 7, 10, 12, 7, 3]) / 12)
    tone = 0.3 * np.sin(2 * np.pi * notes[(t * 2).astype(int) % len(notes)] * t)
    soundfile.write(str(path), np.stack([tone, 0.8 * tone], axis=1).astype(np.float32), rate)
    return str(path)
