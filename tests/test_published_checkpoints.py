"""Conformance with the published MusicGen checkpoints, as far as offline allows: folders written
with their exact configs (tests/published.py), a random T5 with t5-base's width and a random
htdemucs load with the network unreachable (no hub access is even attempted), give audiocraft's
own greedy tokens (through the fast decoder; melody through audiocraft's loop, with and without a
clip), and play through server.py (stereo in two channels everywhere, the page included); a model
folder carries its text encoder and Demucs; what users actually get wrong fails in one clear line."""
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from engine.lm.generate import generate
from engine.lm.model import FastLM
from engine.models.load import ModelLoadError, load_model
from engine.models.stems import STEM_SPLITTER, hub_repo
from netutil import ROOT
from published import PUBLISHED, T5_NAME, put_in_hf_cache, write_checkpoint, write_htdemucs, write_melody_clip, write_t5

PROMPTS = ("warm lofi hip hop with vinyl crackle", "rain")  # different token counts


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    root = tmp_path_factory.mktemp("published")
    t5 = write_t5(str(root / "t5"))
    hf_home = str(root / "hf")
    put_in_hf_cache(t5, hf_home)
    demucs = write_htdemucs(str(root / STEM_SPLITTER))
    put_in_hf_cache(demucs, hf_home, hub_repo())
    folders = {model: str(root / model) for model in PUBLISHED}
    for seed, (model, folder) in enumerate(folders.items()):
        write_checkpoint(folder, model, t5, seed=seed, demucs_folder=demucs)
    return {"t5": t5, "hf_home": hf_home, "folders": folders, "root": root, "demucs": demucs}


@pytest.fixture()
def offline(monkeypatch, fixtures):
    """No network: HF_HUB_OFFLINE, and any connection beyond loopback fails and is recorded."""
    from huggingface_hub import constants
    attempts = []
    real_connect = socket.socket.connect

    def connect(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if host not in ("127.0.0.1", "::1", "localhost") and not str(host).startswith("/"):
            attempts.append(address)
            raise OSError("network unreachable (test)")
        return real_connect(sock, address)
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", fixtures["hf_home"])
    monkeypatch.setattr(constants, "HF_HUB_CACHE", os.path.join(fixtures["hf_home"], "hub"))
    return attempts


@pytest.mark.parametrize("model", [m for m in PUBLISHED if not PUBLISHED[m].get("melody")])
def test_a_published_config_loads_offline_and_gives_audiocrafts_greedy_tokens(fixtures, offline, model):
    loaded = load_model(fixtures["folders"][model], device="cpu")
    spec = PUBLISHED[model]
    stereo = spec.get("stereo", False)
    assert loaded.audio_channels == (2 if stereo else 1) and loaded.sample_rate == 32000
    assert loaded.lm.num_codebooks == (8 if stereo else 4) and loaded.frame_rate == 50
    assert loaded.lm.condition_provider.conditioners["description"].output_proj.in_features == 768  # t5-base's width
    fast = FastLM(loaded.lm, max_frames=80, dtype="fp32")
    for prompt in PROMPTS:
        attributes, _ = loaded._prepare_tokens_and_attributes([prompt], None)
        with torch.inference_mode():
            expected = loaded.lm.generate(None, attributes, max_gen_len=30, use_sampling=False, cfg_coef=3.0)
        got = generate(fast, None, attributes[0], 30, temperature=0, cfg_coef=3.0)
        assert torch.equal(got, expected), (model, prompt)
    with torch.inference_mode():
        audio = loaded.compression_model.decode(expected)
    assert audio.shape == (1, 2 if stereo else 1, 30 * 640)
    assert offline == []  # no hub access was attempted


def run_server(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, os.path.join(ROOT, "server.py"), *args], cwd=ROOT, capture_output=True,
                          timeout=timeout, env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})))


@pytest.mark.parametrize("model", [m for m in PUBLISHED if not PUBLISHED[m].get("melody")])
def test_a_published_config_plays_through_the_server_offline(fixtures, model, network_cut):
    result = run_server("--model", fixtures["folders"][model], "--no-play", "--no-network", "--stdout",
                        "--duration", "1", "--stride", "1", "--context", "1", "--seed", "3",
                        env=dict(network_cut, HF_HOME=fixtures["hf_home"]))
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    channels = 2 if PUBLISHED[model].get("stereo") else 1
    assert len(result.stdout) == 32000 * 2 * channels  # 1 s of s16le at 32 kHz
    assert f"text encoder {T5_NAME} from the Hugging Face cache" in result.stderr.decode()


def test_a_model_folder_carries_its_text_encoder(fixtures, offline, tmp_path):
    folder = tmp_path / "musicgen-small"
    shutil.copytree(fixtures["folders"]["musicgen-small"], folder)
    shutil.copytree(fixtures["t5"], folder / T5_NAME)
    empty_home = tmp_path / "empty-hf"
    from huggingface_hub import constants
    os.environ["HF_HOME"] = str(empty_home)
    constants.HF_HUB_CACHE = str(empty_home / "hub")
    loaded = load_model(str(folder), device="cpu")
    assert loaded.lm.condition_provider.conditioners["description"].name == str(folder / T5_NAME)
    elsewhere = tmp_path / "encoders" / "my-t5"
    shutil.copytree(fixtures["t5"], elsewhere)
    shutil.rmtree(folder / T5_NAME)
    loaded = load_model(str(folder), device="cpu", text_encoder=str(elsewhere))
    assert loaded.lm.condition_provider.conditioners["description"].name == str(elsewhere)
    with pytest.raises(ModelLoadError, match=r"the text encoder t5-base is not on this machine .* "
                                             r"engine.fetch_model .* --text-encoder DIR"):
        load_model(str(folder), device="cpu")
    with pytest.raises(ModelLoadError, match="holds no text encoder"):
        load_model(str(folder), device="cpu", text_encoder=str(tmp_path))
    assert offline == []


def test_what_users_get_wrong_fails_in_one_clear_line(fixtures, tmp_path):
    from omegaconf import OmegaConf
    source = fixtures["folders"]["musicgen-small"]
    cases = {}
    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(os.path.join(source, "state_dict.bin"), half)
    cases["half"] = (half, "holds state_dict.bin but not compression_state_dict.bin")
    truncated = tmp_path / "truncated"
    shutil.copytree(source, truncated)
    data = (truncated / "state_dict.bin").read_bytes()
    (truncated / "state_dict.bin").write_bytes(data[: len(data) // 3])
    cases["truncated"] = (truncated, "state_dict.bin (the language model) is damaged or incomplete - a truncated download")
    for family, cfg_change, message in (("audiogen", {"solver": "audiogen", "sample_rate": 16000}, "AudioGen (sound effects)"),
                                        ("magnet", {"solver": "magnet", "lm_model": "transformer_lm_magnet"}, "MAGNeT")):
        folder = tmp_path / family
        shutil.copytree(source, folder)
        package = torch.load(folder / "state_dict.bin", weights_only=False)
        package["xp.cfg"] = OmegaConf.to_yaml(OmegaConf.merge(OmegaConf.create(package["xp.cfg"]), cfg_change))
        torch.save(package, folder / "state_dict.bin")
        cases[family] = (folder, f"is a checkpoint of {message}")
    no_t5 = tmp_path / "no-t5-home"
    cases["t5 missing"] = (source, "the text encoder t5-base is not on this machine")
    for name, (folder, message) in cases.items():
        env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(no_t5) if name == "t5 missing" else fixtures["hf_home"]}
        result = run_server("--model", str(folder), "--no-play", "--no-network", "--duration", "1", env=env, timeout=120)
        err = result.stderr.decode()
        assert result.returncode == 2 and message in err, (name, err[-2000:])
        assert "Traceback" not in err and "pre-fill" not in err, name  # before any audio machinery


def test_fetch_model_fills_a_self_contained_folder_that_plays_offline(fixtures, tmp_path, network_cut):
    """`python -m engine.fetch_model` (here from a filled cache, offline: the same code path as a
    download), then server.py on that folder alone with an empty Hugging Face cache."""
    hf_home = tmp_path / "hf"
    put_in_hf_cache(fixtures["folders"]["musicgen-small"], str(hf_home), "facebook/musicgen-small")
    put_in_hf_cache(fixtures["t5"], str(hf_home))
    folder = tmp_path / "musicgen-small"
    fetched = subprocess.run([sys.executable, "-m", "engine.fetch_model", "facebook/musicgen-small", str(folder)],
                             cwd=ROOT, capture_output=True, timeout=300,
                             env=dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(hf_home)))
    assert fetched.returncode == 0, fetched.stderr.decode()[-3000:]
    assert sorted(os.listdir(folder)) == ["compression_state_dict.bin", "state_dict.bin", T5_NAME]
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= set(os.listdir(folder / T5_NAME))
    assert "is complete; copy it to the offline machine" in fetched.stderr.decode()
    result = run_server("--model", str(folder), "--no-play", "--no-network", "--stdout", "--duration", "1",
                        "--stride", "1", "--context", "1", env=dict(network_cut, HF_HOME=str(tmp_path / "empty")))
    assert result.returncode == 0 and len(result.stdout) == 32000 * 2, result.stderr.decode()[-3000:]
    assert f"text encoder {T5_NAME} from {folder / T5_NAME}" in result.stderr.decode()
    missing = subprocess.run([sys.executable, "-m", "engine.fetch_model", "facebook/musicgen-nope", str(tmp_path / "x")],
                             cwd=ROOT, capture_output=True, timeout=120,
                             env=dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(hf_home)))
    assert missing.returncode == 2 and "cannot fetch state_dict.bin of facebook/musicgen-nope" in missing.stderr.decode()


def test_a_model_too_large_for_the_machine_is_refused_with_what_fits():
    from omegaconf import OmegaConf

    from engine.models.memory import GB, lm_parameters, shortage
    assert 415e6 < lm_parameters(1024, 24) < 425e6  # musicgen-small's LM (its safetensors: 2.36 GB with T5 and codec)
    large = OmegaConf.create({"transformer_lm": {"dim": 2048, "num_layers": 48, "n_q": 4, "card": 2048}})
    message = shortage(large, "facebook/musicgen-large", "cpu", "fp32", available=8 * GB)
    assert message.startswith("facebook/musicgen-large needs about 27.") and "8.0 GB are free" in message
    assert message.endswith("facebook/musicgen-small fits")
    assert shortage(large, "facebook/musicgen-large", "cpu", "fp32", available=22 * GB).endswith("--dtype int8 fits")
    assert shortage(large, "facebook/musicgen-large", "cpu", "int8", available=22 * GB) is None
    assert shortage(large, "facebook/musicgen-large", "cpu", "int8", available=20 * GB).endswith("--dtype int4 fits")
    assert "no MusicGen fits" in shortage(large, "big", "cuda", "bf16", available=1 * GB)


def test_a_stereo_checkpoint_streams_two_channels_everywhere(fixtures):
    """musicgen-stereo-small's config through the network side: the WebSocket hello, PCM frames
    and the Ogg/Opus stream carry two channels, the same audio as the played program, and the
    page in Chromium plays two different channels from both codecs."""
    import asyncio

    import av

    from netutil import RunningServer, receive
    from pageutil import ARTIFACTS, CHROMIUM, play_in_chromium
    server = RunningServer("--model", fixtures["folders"]["musicgen-stereo-small"], "--stride", "1", "--context", "1",
                           env=dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=fixtures["hf_home"]))
    try:
        hello, packets, _, _ = asyncio.run(receive(server.ws_url + "?codec=pcm", 1.0))
        assert hello["channels"] == 2 and packets
        first, payload = packets[0][1], b"".join(p[2] for p in packets)
        assert len(payload) % 4 == 0  # interleaved s16 pairs
        server.wait_for_program(4 * first + len(payload))
        assert bytes(server.program[4 * first:4 * first + len(payload)]) == payload  # stdout: 2 channels too
        container = av.open(server.url + "/stream.opus", timeout=10)
        frame = next(container.decode(container.streams.audio[0]))
        assert frame.layout.nb_channels == 2 and container.streams.audio[0].codec_context.channels == 2
        container.close()
        opus_hello, _, _, _ = asyncio.run(receive(server.ws_url + "?codec=opus", 0.3))
        assert opus_hello["channels"] == 2 and opus_hello["opus_head"]
        assert os.path.exists(CHROMIUM), "chromium is not installed (.ci/run installs it)"
        os.makedirs(ARTIFACTS, exist_ok=True)
        for codec in ("pcm", "opus"):
            page = asyncio.run(play_in_chromium(f"{server.url}/?codec={codec}",
                                                os.path.join(ARTIFACTS, f"page-stereo-{codec}.png")))
            stats = page["stats"]
            assert not page["errors"] and stats["codec"] == codec, page
            assert stats["channels"] == 2 and "stereo" in page["figures"]["codec"]
            assert stats["apart"] > 0.5 * stats["audible"] > 24000, stats  # left and right differ
    finally:
        server.stop()


def test_the_melody_config_loads_offline_and_its_fallback_loop_gives_audiocrafts_tokens(fixtures, offline, tmp_path):
    """musicgen-melody (text and chroma prepended: the fast decoder leaves it to audiocraft's
    loop) with its Demucs from the Hugging Face cache: the station's generator gives what
    MusicGen's own generate / generate_with_chroma give, greedy, without and with a melody clip."""
    import numpy as np

    from engine.codec.clip import read_clip
    from engine.lm.window import SamplingParams, WindowGenerator
    from engine.models.load import has_melody_conditioning
    loaded = load_model(fixtures["folders"]["musicgen-melody"], device="cpu")
    assert has_melody_conditioning(loaded) and loaded.lm.fuser.fuse2cond["prepend"] == ["self_wav", "description"]
    assert loaded.lm.condition_provider.conditioners["self_wav"].demucs.sources == ["drums", "bass", "other", "vocals"]
    loaded.set_generation_params(duration=30 / 50, use_sampling=False, cfg_coef=3.0)
    generator = WindowGenerator(loaded, context_frames=10, sampling=SamplingParams(temperature=0.0), seed=0)
    assert generator.fast is None  # audiocraft's generate loop
    got = generator.next_stride(PROMPTS[0], 30)
    with torch.inference_mode():
        expected = loaded.generate([PROMPTS[0]], return_tokens=True)[1]
    assert torch.equal(got, expected)
    clip = write_melody_clip(tmp_path / "melody.wav")
    melody = torch.from_numpy(np.ascontiguousarray(read_clip(clip, 32000, 1, flag="--melody").T))  # [1, 30 s]
    generator = WindowGenerator(loaded, context_frames=10, sampling=SamplingParams(temperature=0.0), seed=0)
    generator.set_melody(melody)
    with_melody = generator.next_stride(PROMPTS[0], 30)
    import random

    import soundfile
    wav, rate = soundfile.read(clip, dtype="float32", always_2d=True)
    random.seed(0)  # as the generator seeds stride 0: Demucs shifts its input at random
    with torch.inference_mode():
        expected = loaded.generate_with_chroma([PROMPTS[0]], torch.from_numpy(wav.T)[None], rate, return_tokens=True)[1]
    assert torch.equal(with_melody, expected)
    again = WindowGenerator(loaded, context_frames=10, sampling=SamplingParams(temperature=0.0), seed=0)
    again.set_melody(melody)
    random.seed(12345)  # whatever ran before: a stride is reproducible from its seed
    assert torch.equal(again.next_stride(PROMPTS[0], 30), with_melody)
    provider = loaded.lm.condition_provider  # the melody is what the LM reads first (prepended chroma)
    with torch.inference_mode():
        chroma = [provider(provider.tokenize(g._conditions(PROMPTS[0])))["self_wav"][0]
                  for g in (generator, WindowGenerator(loaded, 10, SamplingParams(), seed=0))]
    assert chroma[0].shape == chroma[1].shape and not torch.equal(chroma[0], chroma[1])
    # Later windows hear the looped melody from their own start (as audiocraft does beyond 30 s).
    assert torch.equal(generator._melody_under(50), torch.roll(melody, -50 * 640, dims=-1))
    assert offline == []


def test_melody_plays_through_the_server_offline_with_and_without_a_clip(fixtures, tmp_path, network_cut):
    """From the Hugging Face cache without a clip; then `fetch_model` fills a folder (Demucs in
    DIR/htdemucs) that plays alone, with an empty cache, following a melody clip."""
    args = ("--no-play", "--no-network", "--stdout", "--duration", "1", "--stride", "1", "--context", "1")
    result = run_server("--model", fixtures["folders"]["musicgen-melody"], *args,
                        env=dict(network_cut, HF_HOME=fixtures["hf_home"]))
    err = result.stderr.decode()
    assert result.returncode == 0 and len(result.stdout) == 32000 * 2, err[-3000:]
    assert "audiocraft's generate loop" in err and "melody stem splitter htdemucs from" in err
    hf_home = tmp_path / "hf"
    put_in_hf_cache(fixtures["folders"]["musicgen-melody"], str(hf_home), "facebook/musicgen-melody")
    put_in_hf_cache(fixtures["t5"], str(hf_home))
    put_in_hf_cache(fixtures["demucs"], str(hf_home), hub_repo())
    folder = tmp_path / "musicgen-melody"
    fetched = subprocess.run([sys.executable, "-m", "engine.fetch_model", "facebook/musicgen-melody", str(folder)],
                             cwd=ROOT, capture_output=True, timeout=300,
                             env=dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(hf_home)))
    assert fetched.returncode == 0, fetched.stderr.decode()[-3000:]
    assert sorted(os.listdir(folder / STEM_SPLITTER)) == ["955717e8.safetensors", "htdemucs.yaml"]
    clip = write_melody_clip(tmp_path / "melody.wav", seconds=8.0)
    result = run_server("--model", str(folder), *args, "--melody", clip,
                        env=dict(network_cut, HF_HOME=str(tmp_path / "empty")))
    err = result.stderr.decode()
    assert result.returncode == 0 and len(result.stdout) == 32000 * 2, err[-3000:]
    assert f"melody stem splitter htdemucs from {folder / STEM_SPLITTER}" in err
    assert "melody: " + clip + ", 8.0 s, looped" in err


def test_melody_mistakes_fail_in_one_clear_line(fixtures, tmp_path):
    not_audio = tmp_path / "notes.txt"
    not_audio.write_text("do re mi")
    clip = write_melody_clip(tmp_path / "melody.wav", seconds=2.0)
    melody = fixtures["folders"]["musicgen-melody"]
    cases = {
        "no demucs offline": (("--model", melody), str(tmp_path / "empty"),
                              "separates its melody clip with Demucs' htdemucs, which is not on this machine"),
        "not a melody model": (("--model", fixtures["folders"]["musicgen-small"], "--melody", clip),
                               fixtures["hf_home"], "--melody needs a melody model"),
        "not audio": (("--model", melody, "--melody", str(not_audio)), fixtures["hf_home"],
                      f"--melody {not_audio}: cannot read it as audio"),
    }
    t5_only = tmp_path / "empty"
    put_in_hf_cache(fixtures["t5"], str(t5_only))
    for name, (args, hf_home, message) in cases.items():
        result = run_server(*args, "--no-play", "--no-network", "--duration", "1",
                            env={"HF_HUB_OFFLINE": "1", "HF_HOME": hf_home}, timeout=120)
        err = result.stderr.decode()
        assert result.returncode == 2 and message in err, (name, err[-2000:])
        assert "Traceback" not in err and "pre-fill" not in err, name
