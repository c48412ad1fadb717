"""The 4-bit KV cache (`--kv-cache int4`; engine/lm/cache.py, kernels/kv4_attention.cpp): each
key and value row of 64 numbers as 4-bit codes two to a byte with one scale per head and
position, written by the prefill and the decode step, read by the decode step's VNNI scores, its
weighted values and the prefill's BF16 attention; and the flag that asks for it."""
import pytest
import torch
import torch.nn.functional as F

from engine.lm.cache import CHUNK_HEAD_DIM, KVCache
from engine.lm.hardware import INT4_CACHE
from engine.lm.model import FastLM
from engine.models.random_musicgen import TINY_SHAPE, build_random_lm
from nativeutil import needs_native

#: 2 layers of width 256, 4 heads of 64 (the 4-bit cache's head dim, every MusicGen's).
SHAPE = TINY_SHAPE._replace(lm_dim=256, lm_heads=4)


@pytest.fixture(scope="module")
def native():
    from engine.lm.kernels import load_cpu_kernels
    return load_cpu_kernels()


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(3)
    return build_random_lm(SHAPE)


def _dequantised(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """[..., 32] uint8 codes (byte j: number j low, j + 32 high, each + 8), [...] scales → [..., 64]."""
    numbers = torch.cat([codes & 15, codes >> 4], dim=-1).float() - 8
    return numbers * scales[..., None]


def _random_cache(heads: int, positions: int):
    codes = torch.randint(0, 256, (heads, positions, CHUNK_HEAD_DIM // 2), dtype=torch.uint8)
    return codes, torch.rand(heads, positions) * 0.05 + 0.001


@needs_native
def test_rows_are_written_as_4_bit_codes_and_read_back_within_half_a_step(native):
    torch.manual_seed(5)
    cache = KVCache(layers=2, heads=3, positions=48, head_dim=CHUNK_HEAD_DIM, dtype=INT4_CACHE,
                    device=torch.device("cpu"), kernels="native", native=native)
    assert cache.quantized and cache.bits == 4 and cache.precision == "int4" and cache.kernel == "native"
    assert cache.k.shape == (2, 2, 3, 48, CHUNK_HEAD_DIM // 2) and cache.k.dtype == torch.uint8
    # keys and values of 2 layers, 2 rows, 3 heads: each 32 bytes and a scale
    assert cache.position_bytes() == 2 * 2 * 2 * 3 * (32 + 4)
    k, v = torch.randn(2, 3, 40, 64), torch.randn(2, 3, 40, 64) * 3
    cache.write(1, 0, k[:, :, :30], v[:, :, :30])  # a prefill chunk
    for t in range(30, 40):  # decode steps
        cache.write(1, t, k[:, :, t:t + 1], v[:, :, t:t + 1])
    for x, codes, scales in ((k, cache.k[1, :, :, :40], cache.k_scale[1, :, :, :40]),
                             (v, cache.v[1, :, :, :40], cache.v_scale[1, :, :, :40])):
        peak = x.abs().amax(-1)
        assert torch.allclose(scales, peak / 7)
        # the layout, against codes made here: round(x / s) + 8 (a tie may round either way)
        expected = (x / (peak / 7)[..., None]).round().clamp(-7, 7) + 8
        got = torch.cat([codes & 15, codes >> 4], dim=-1).float()
        assert (got - expected).abs().max() <= 1 and (got != expected).float().mean() < 1e-3
        assert (_dequantised(codes, scales) - x).abs().max() <= (peak / 7).max() * 0.51
    keys, values = cache.read(1, 40, torch.float32)
    assert torch.equal(keys, _dequantised(cache.k[1, :, :, :40], cache.k_scale[1, :, :, :40]))
    assert torch.equal(values, _dequantised(cache.v[1, :, :, :40], cache.v_scale[1, :, :, :40]))
    assert not cache.k[0].any() and (cache.k_scale[0] == 1).all()  # the other layer untouched
    q = torch.randn(2, 3, 1, 64)
    expected = F.scaled_dot_product_attention(q, keys, values)
    got = cache.attend(1, q, 40)  # scores_q4 / weighted_q4: q quantised to int8 per head
    assert (got - expected).norm() / expected.norm() < 5e-3
    exact = F.scaled_dot_product_attention(q, k, v)
    assert (got - exact).norm() / exact.norm() < 0.15  # 4 bits: the cache's own rounding
    slot = cache.with_rows(4).slot(1)
    assert slot.k.shape == (2, 2, 3, 48, 32) and slot.bits == 4


def test_a_4_bit_cache_needs_the_native_kernels_and_heads_of_64(native):
    with pytest.raises(ValueError, match="4-bit KV cache needs the native CPU kernels"):
        KVCache(1, 1, 16, 64, INT4_CACHE, torch.device("cpu"), kernels="eager")
    if native is not None:
        with pytest.raises(ValueError, match="heads of 64"):
            KVCache(1, 1, 16, 32, INT4_CACHE, torch.device("cpu"), kernels="native", native=native)


@needs_native
def test_vnni_scores_over_the_4_bit_cache_are_the_dequantised_scores(native):
    """scores_q4 reads two positions per load (16 at a time, the rest one by one) and sums
    q8 · code by VNNI, less 8 Σ q8: within q's rounding of the exact scores."""
    torch.manual_seed(2)
    heads, capacity = 6, 80
    keys, key_scales = _random_cache(heads, capacity)
    q = torch.randn(heads, 64)
    for positions in (1, 15, 16, 17, 33, 80):
        got = native.scores_q4(q, keys, key_scales, positions)
        dequantised = _dequantised(keys[:, :positions], key_scales[:, :positions])
        exact = (dequantised @ q.unsqueeze(-1)).squeeze(-1) / 8
        bound = (q.abs().amax(-1, keepdim=True) / 254) * dequantised.abs().sum(-1) / 8
        assert got.shape == (heads, positions)
        assert ((got - exact).abs() <= bound * 1.001 + 1e-6).all(), positions


@needs_native
def test_weighted_values_over_the_4_bit_cache_are_the_dequantised_sum(native):
    """weighted_q4 sums by VNNI, 4 positions per product, the weights (times the value scales)
    held as two uint8 digits per block of 64 positions: each within half a step of 1 / 255² of
    its block's largest. A softmax's tiny weights beside a large one are kept, not rounded away."""
    torch.manual_seed(6)
    heads, capacity = 5, 300
    values, value_scales = _random_cache(heads, capacity)
    for positions in (1, 3, 16, 37, 64, 65, 129, 300):
        for spread in (1.0, 12.0):  # flat, and peaked: most weights below 1 / 255 of the largest
            weights = torch.softmax(torch.randn(heads, positions) * spread, dim=-1)
            got = native.weighted_q4(weights, values, value_scales)
            scaled = weights * value_scales[:, :positions]
            expected = (scaled.unsqueeze(1) @ _dequantised(values[:, :positions], torch.ones(heads, positions))).squeeze(1)
            blocks = F.pad(scaled, (0, -positions % 64)).view(heads, -1, 64).amax(-1)  # [heads, blocks]
            step = blocks.repeat_interleave(64, dim=1)[:, :positions] / 255 ** 2
            bound = 8 * 0.5 * step.sum(-1, keepdim=True) + 1e-6 * expected.abs().amax(-1, keepdim=True)
            assert ((got - expected).abs() <= bound).all(), (positions, spread)
    # Peaked weights over values all 7 (code 15): the sum is 7 Σ w. Most weights lie under 1 / 510
    # of their block's largest, where one uint8 digit rounds them to 0: more than the bound.
    weights = torch.softmax(torch.randn(heads, 320) * 4, dim=-1)
    sevens, ones = torch.full((heads, 320, 32), 0xFF, dtype=torch.uint8), torch.ones(heads, 320)
    got = native.weighted_q4(weights, sevens, ones)
    blocks = weights.view(heads, 5, 64)
    largest = blocks.amax(-1, keepdim=True)
    bound = 7 * 0.5 * 64 * largest.sum((-1, -2)) / 255 ** 2 + 1e-6
    assert ((got - 7 * weights.sum(-1, keepdim=True)).abs() <= bound[:, None]).all()
    dropped = 7 * blocks.masked_fill(blocks >= largest / 510, 0).sum((-1, -2))
    assert (dropped > bound).all()


@needs_native
def test_the_prefill_attention_reads_the_4_bit_cache(native):
    from engine.lm.cache import BF16_CPU_FLAG
    from engine.lm.hardware import cpu_flags
    if BF16_CPU_FLAG not in cpu_flags():
        pytest.skip("the prefill's native attention runs on AVX-512 BF16 only")
    torch.manual_seed(4)
    B, H, P = 2, 3, 300
    (keys, key_scales), (values, value_scales) = (_random_cache(B * H, P) for _ in range(2))
    keys, values = keys.view(B, H, P, 32), values.view(B, H, P, 32)
    key_scales, value_scales = key_scales.view(B, H, P), value_scales.view(B, H, P)
    for start, length in ((0, 1), (0, 70), (100, 37), (250, 50)):
        q = torch.randn(B, H, length, 64)
        got = native.prefill_attention_q8(q, keys, values, key_scales, value_scales, start)
        end = start + length
        k = _dequantised(keys[:, :, :end], key_scales[:, :, :end])
        v = _dequantised(values[:, :, :end], value_scales[:, :, :end])
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(length, end, dtype=torch.bool)
                                                  .tril(diagonal=start))
        assert (got - expected).norm() / expected.norm() < 5e-3, (start, length)


@needs_native
@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_the_4_bit_cache_keeps_the_decoders_predictions(lm, dtype):
    """Weights in `dtype` over the 4-bit cache against the same weights over the 8-bit one:
    the step reads fewer bytes, and the guided logits along a generated sequence stay close."""
    from audiocraft.modules.conditioners import ConditioningAttributes
    from engine.lm.generate import generate
    from engine.lm.quality import guided_logits, logit_agreement
    attributes = ConditioningAttributes(text={"description": "warm lofi hip hop"})
    four = FastLM(lm, max_frames=80, dtype=dtype, kernels="native", kv_cache="int4")
    eight = FastLM(lm, max_frames=80, dtype=dtype, kernels="native", kv_cache="int8")
    assert four.cache.bits == 4 and four.cache_dtype == INT4_CACHE and four.native_step is not None
    assert four.step_bytes(60) < eight.step_bytes(60)
    codes = generate(eight, None, attributes, 60, generator=torch.Generator().manual_seed(4))[0]
    reference, targets = guided_logits(eight, codes, attributes)
    figures = logit_agreement(reference, guided_logits(four, codes, attributes)[0], targets, four.special_token)
    assert figures["logit_relative_error"] < 0.12, figures
    assert figures["top10_overlap"] > 0.8, figures
    with pytest.raises(ValueError, match=r"4-bit KV cache \(--kv-cache int4\) needs"):
        FastLM(lm, max_frames=80, dtype="fp32", kv_cache="int4")


def test_kv_cache_flag_becomes_the_model_config_and_is_checked_before_loading():
    import server
    from engine.radio import check
    from engine.station.config import ConfigError, ModelConfig, StationConfig
    from engine.net.config import NetworkConfig
    from engine.outputs.config import OutputConfig
    models, engine, outputs, network = server.configs_from_args(server.build_parser().parse_args(
        ["--model", "tiny", "--dtype", "int4", "--kv-cache", "int4", "--device", "cpu", "--no-play"]))
    assert (models.dtype, models.kv_cache) == ("int4", "int4")
    assert check(models, engine, outputs, network) == "cpu"
    with pytest.raises(SystemExit):  # argparse: not a choice
        server.build_parser().parse_args(["--kv-cache", "int2"])
    with pytest.raises(ConfigError, match="--kv-cache must be one of"):
        ModelConfig(kv_cache="int2").validate()
    for dtype in ("fp32", "bf16"):
        with pytest.raises(ConfigError, match="--kv-cache int4 runs on the native CPU kernels only"):
            check(ModelConfig(name="tiny", device="cpu", dtype=dtype, kv_cache="int4"), StationConfig(),
                  OutputConfig(play=False), NetworkConfig())


def test_a_model_the_4_bit_cache_cannot_hold_ends_the_server_with_one_clear_line():
    """The tiny model's heads are 16 wide: `--kv-cache int4` stops the server before it plays,
    with exit code 2 and what to do, not a traceback; `--kv-cache int8` runs it on the native
    kernels whatever its width."""
    import subprocess
    import sys
    from engine.lm.hardware import KVCacheUnavailable
    from engine.models.load import load_model
    done = subprocess.run([sys.executable, "server.py", "--model", "tiny", "--dtype", "int4", "--kv-cache", "int4",
                           "--device", "cpu", "--no-play", "--port", "0"], capture_output=True, text=True, timeout=300,
                          cwd=__file__.rsplit("/tests/", 1)[0])
    from nativeutil import HAS_NATIVE
    why = ("a 4-bit KV cache needs heads of 64 (this model's: 16); use --kv-cache int8 or auto" if HAS_NATIVE
           else "on a CPU with the native kernels (AVX-512 VNNI and a C++ compiler); use --kv-cache auto")
    assert done.returncode == 2 and why in done.stderr
    assert "Traceback" not in done.stderr
    tiny = load_model("tiny", device="cpu", seed=0).lm
    with pytest.raises(KVCacheUnavailable, match="heads of 64" if HAS_NATIVE else "native kernels"):
        FastLM(tiny, max_frames=40, dtype="int4", kv_cache="int4")
    if HAS_NATIVE:
        eight = FastLM(tiny, max_frames=40, dtype="int4", kv_cache="int8")
        assert eight.kernels == "native" and eight.cache.precision == "int8"


def test_several_stations_refuse_a_cache_their_model_cannot_hold_as_a_config_error():
    from engine.models.load import load_model
    from engine.station.config import ConfigError, ModelConfig
    from engine.stations import batcher_for
    model = load_model("tiny", device="cpu", seed=0)
    with pytest.raises(ConfigError, match="4-bit KV cache"):
        batcher_for(model, ModelConfig(name="tiny", device="cpu", dtype="int4", kv_cache="int4"), slots=2)


@needs_native
def test_batched_stations_give_their_alone_tokens_over_the_4_bit_cache():
    """The batched CPU decoder (several stations' rows in one fused step) over the 4-bit cache:
    each station's tokens are the same alone as in the batch, joining together or late."""
    from engine.lm.batch import BatchedDecoder
    from engine.lm.batcher import StrideBatcher
    from engine.models.random_musicgen import build_random_musicgen
    from test_batcher import STATIONS, request, run
    model = build_random_musicgen(SHAPE, seed=3)
    fast = FastLM(model.lm, max_frames=80, dtype="int4", kv_cache="int4")
    assert fast.cache.bits == 4 and fast.native_step is not None
    batcher = StrideBatcher(BatchedDecoder(fast, slots=4))
    assert batcher.decoder.cache.bits == 4 and batcher.decoder.cache.k.shape[1] == 8  # 4 slots of 2 rows
    for name in STATIONS:
        batcher.join(name)
    together, errors = run(batcher, [request(model, name) for name in STATIONS])
    assert not errors and batcher.busy_slot_steps > batcher.steps
    for name in STATIONS:
        alone, _ = run(batcher, [request(model, name)])
        assert torch.equal(alone[name], together[name]), name
    staggered, _ = run(batcher, [request(model, name) for name in STATIONS], start_when={"jazz": 5, "rain": 11})
    for name in STATIONS:
        assert torch.equal(staggered[name], together[name]), name
