"""Model loading: a local audiocraft checkpoint folder, errors, and the seeded random models."""
import pytest
import torch

from engine.models.load import ModelLoadError, check_model_name, load_model
from published import codec_config


def write_audiocraft_checkpoint(folder):
    """A small checkpoint in audiocraft's own format (xp.cfg + best_state), as the hub ships it,
    with a LUT text conditioner so that no T5 download is needed."""
    from omegaconf import OmegaConf
    from audiocraft.models import builders
    compression_cfg = codec_config()
    lm_cfg = dict(
        lm_model="transformer_lm", device="cpu", dtype="float32", dataset={"segment_duration": 30},
        transformer_lm=dict(n_q=4, card=2048, dim=64, num_heads=4, num_layers=2, hidden_scale=4,
                            norm="layer_norm", norm_first=True, bias_ff=False, bias_attn=False,
                            bias_proj=False, causal=True, cross_attention=False, positional_embedding="sin",
                            activation="gelu", dropout=0.0, memory_efficient=True),
        codebooks_pattern={"modeling": "delay", "delay": {"delays": [0, 1, 2, 3]}},
        attribute_dropout={}, classifier_free_guidance={"training_dropout": 0.1, "inference_coef": 3.0},
        fuser={"cross_attention_pos_emb": False, "cross_attention_pos_emb_scale": 1, "sum": [],
               "prepend": [], "cross": ["description"], "input_interpolate": []},
        conditioners={"description": {"model": "lut", "lut": {"n_bins": 512, "dim": 32, "tokenizer": "noop"}}})
    torch.manual_seed(11)
    compression = builders.get_compression_model(OmegaConf.create(compression_cfg))
    lm = builders.get_lm_model(OmegaConf.create(lm_cfg))
    torch.save({"xp.cfg": compression_cfg, "best_state": compression.state_dict()},
               folder / "compression_state_dict.bin")
    torch.save({"xp.cfg": lm_cfg, "best_state": lm.state_dict()}, folder / "state_dict.bin")
    return lm.state_dict()


def test_a_local_checkpoint_folder_loads_through_audiocraft(tmp_path):
    saved = write_audiocraft_checkpoint(tmp_path)
    model = load_model(str(tmp_path), device="cpu")
    loaded = model.lm.state_dict()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert model.sample_rate == 32000 and model.frame_rate == 50 and model.lm.num_codebooks == 4
    attributes, _ = model._prepare_tokens_and_attributes(["ambient"], None)
    with torch.inference_mode():
        codes = model.lm.generate(None, attributes, max_gen_len=20, top_k=250)
        audio = model.compression_model.decode(codes)
    assert codes.shape == (1, 4, 20) and audio.shape == (1, 1, 20 * 640)


def test_a_folder_without_checkpoint_files_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="state_dict.bin and compression_state_dict.bin"):
        load_model(str(tmp_path), device="cpu")


def test_unknown_names_are_refused_before_loading():
    with pytest.raises(ModelLoadError, match="unknown model"):
        check_model_name("musicgen-huge")
    check_model_name("facebook/musicgen-stereo-small")
    check_model_name("tiny")


def test_tiny_model_is_the_same_every_run(tiny_model):
    again = load_model("tiny", device="cpu", seed=0)
    a, b = tiny_model.lm.state_dict(), again.lm.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c, d = tiny_model.compression_model.state_dict(), again.compression_model.state_dict()
    assert all(torch.equal(c[k], d[k]) for k in c)
