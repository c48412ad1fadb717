"""The fast decoder computes what audiocraft's LMModel.generate computes."""
import math
import os

import pytest
import torch
import torch.nn.functional as F

from engine.lm.generate import generate, pattern_sequence
from engine.lm.hardware import resolve_dtype
from engine.lm.model import FastLM
from engine.lm.quality import cross_entropy
from engine.lm.sampling import sample
from engine.lm.weights import UnsupportedModel
from engine.lm.window import SamplingParams, WindowGenerator
from engine.models.random_musicgen import TINY_SHAPE, build_random_lm
from nativeutil import HAS_NATIVE, mapping_flags, needs_native


def _attributes(model, text="lofi hip hop"):
    attributes, _ = model._prepare_tokens_and_attributes([text], None)
    return attributes


@pytest.mark.parametrize("prompt_frames", [0, 1, 37, 300])  # 300: a chunked prefill
@pytest.mark.parametrize("cfg_coef", [3.0, 1.0])
@pytest.mark.parametrize("kernels", ["auto", "graph"])  # graph: the static step CUDA graphs replay
def test_greedy_fp32_gives_audiocrafts_tokens(tiny_model, prompt_frames, cfg_coef, kernels):
    lm = tiny_model.lm
    torch.manual_seed(prompt_frames)
    prompt = torch.randint(0, lm.card, (1, lm.num_codebooks, prompt_frames)) if prompt_frames else None
    attributes = _attributes(tiny_model)
    with torch.inference_mode():
        expected = lm.generate(prompt, attributes, max_gen_len=prompt_frames + 45,
                               use_sampling=False, cfg_coef=cfg_coef)
    fast = FastLM(lm, max_frames=400, dtype="fp32", kernels=kernels)
    got = generate(fast, prompt, attributes[0], 45, temperature=0, cfg_coef=cfg_coef)
    assert got.shape == expected.shape == (1, lm.num_codebooks, prompt_frames + 45)
    assert torch.equal(got, expected)
    # A second call reuses the cache and the cached text condition, and gives the same again.
    assert torch.equal(generate(fast, prompt, attributes[0], 45, temperature=0, cfg_coef=cfg_coef), expected)


def test_text_condition_changes_the_tokens(tiny_model):
    fast = FastLM(tiny_model.lm, max_frames=60, dtype="fp32")
    a = generate(fast, None, _attributes(tiny_model, "jazz")[0], 30, temperature=0)
    b = generate(fast, None, _attributes(tiny_model, "heavy metal")[0], 30, temperature=0)
    assert not torch.equal(a, b)


def test_static_step_follows_prompt_changes(tiny_model):
    """The static step (kernels="graph") reads the text condition from fixed tensors: a new
    prompt of the same token count is copied into them, one of another count replaces them."""
    eager = FastLM(tiny_model.lm, max_frames=60, dtype="fp32", kernels="eager")
    static = FastLM(tiny_model.lm, max_frames=60, dtype="fp32", kernels="graph")
    assert static.kernels == "graph"
    for text in ("jazz", "rock", "slow ambient drone with rain"):  # 1, 1 and 5 words
        attributes = _attributes(tiny_model, text)[0]
        expected = generate(eager, None, attributes, 30, temperature=0)
        assert torch.equal(generate(static, None, attributes, 30, temperature=0), expected), text


@pytest.mark.parametrize("native", [False, pytest.param(True, marks=needs_native)])
def test_sampler_draws_from_audiocrafts_top_k_distribution(native):
    """torch's ops and the native sampler (kernels/sampling.cpp: one call per step, one uniform
    per codebook) draw from the same distribution, never outside the top k."""
    from engine.lm.kernels import load_cpu_kernels
    kernels = load_cpu_kernels() if native else None
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 32) * 2  # cond, uncond
    cfg, temperature, k = 3.0, 0.8, 5
    guided = logits[1] + (logits[0] - logits[1]) * cfg
    probs = torch.softmax(guided / temperature, dim=-1)
    top = probs.topk(k, dim=-1)
    expected = torch.zeros_like(probs).scatter(-1, top.indices, top.values)
    expected /= expected.sum(dim=-1, keepdim=True)
    generator = torch.Generator().manual_seed(1)
    draws = 20000
    counts = torch.zeros_like(probs)
    for _ in range(draws):
        tokens = sample(logits, cfg, temperature, k, 0.0, generator, kernels)
        counts[torch.arange(4), tokens] += 1
    frequencies = counts / draws
    assert (frequencies[expected == 0] == 0).all(), "a token outside the top k was drawn"
    assert (frequencies - expected).abs().max() < 0.02


def test_sampler_top_p_keeps_the_nucleus_only():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2, 1).view(2, 1, 4)
    generator = torch.Generator().manual_seed(3)
    seen = {int(sample(logits, 1.0, 1.0, 0, 0.7, generator)) for _ in range(500)}
    assert seen == {0, 1}  # 0.5 + 0.3 ≥ 0.7: the rest is cut


@needs_native
def test_native_sampler_is_reproducible_and_its_top_1_is_the_argmax():
    from engine.lm.kernels import load_cpu_kernels
    kernels = load_cpu_kernels()
    logits = torch.randn(2, 4, 2048)
    logits[:, 2, 7] = logits[:, 2, 9] = 50.0  # a tie at the top: the lower index, as argmax
    greedy = sample(logits, 3.0, 0.0, 250, 0.0, None)
    assert greedy[2] == 7
    assert torch.equal(sample(logits, 3.0, 1.0, 1, 0.0, None, kernels), greedy)
    runs = [sample(logits, 3.0, 1.0, 250, 0.0, torch.Generator().manual_seed(5), kernels) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])


@needs_native
def test_native_sampler_draws_the_top_k_inverse_cdf_token():
    """kernels/sampling.cpp draws what the float64 reference (samplingref.py) draws, ties and -0
    beside +0 included."""
    from engine.lm.kernels import load_cpu_kernels
    from samplingref import sampling_cases, top_k_inverse_cdf
    kernels = load_cpu_kernels()
    same = total = 0
    for logits, k, temperature, uniforms in sampling_cases(repeat=5, many_ties=True):
        got = kernels.sample_top_k(logits, 3.0, temperature, k, uniforms)
        assert got.dtype == torch.long and got[0].item() == 1, got
        same += int((got == top_k_inverse_cdf(logits, 3.0, temperature, k, uniforms)).sum())
        total += 4
    assert same == total, (same, total)


def test_top_k_1_sampling_is_greedy(tiny_model):
    fast = FastLM(tiny_model.lm, max_frames=60, dtype="fp32")
    attributes = _attributes(tiny_model)[0]
    greedy = generate(fast, None, attributes, 30, temperature=0)
    sampled = generate(fast, None, attributes, 30, temperature=1.0, top_k=1,
                            generator=torch.Generator().manual_seed(9))
    assert torch.equal(greedy, sampled)


@pytest.mark.parametrize("dtype, kernels", [
    ("bf16", "eager"), ("int8", "eager"), ("int4", "eager"),
    pytest.param("int8", "native", marks=needs_native), pytest.param("int4", "native", marks=needs_native)])
def test_reduced_precision_keeps_the_models_predictions(tiny_model, dtype, kernels):
    lm = tiny_model.lm
    attributes = _attributes(tiny_model)[0]
    reference = FastLM(lm, max_frames=80, dtype="fp32")
    codes = generate(reference, None, attributes, 60, generator=torch.Generator().manual_seed(4))
    reduced = FastLM(lm, max_frames=80, dtype=dtype, kernels=kernels)
    assert reduced.mode == dtype
    if kernels == "native":  # the native path itself ran, not the compiled fallback
        assert reduced.kernels == "native" and reduced.cache.kernel == "native"
        assert reduced.native_linears
    ce_fp32 = cross_entropy(reference, codes[0], attributes)
    ce_reduced = cross_entropy(reduced, codes[0], attributes)
    assert math.isfinite(ce_reduced)
    assert abs(ce_reduced - ce_fp32) / ce_fp32 < 0.02, (ce_fp32, ce_reduced)
    sampled = generate(reduced, None, attributes, 40, generator=torch.Generator().manual_seed(4))
    assert sampled.shape == (1, lm.num_codebooks, 40)
    assert ((sampled >= 0) & (sampled < lm.card)).all()
    if dtype == "int8":
        assert reduced.parameter_bytes() * 3.5 < reference.parameter_bytes()


def test_dtype_choices():
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) in ("int8", "fp32")
    for name in ("fp32", "bf16", "int8", "int4"):
        assert resolve_dtype(name, cpu) == name
    for name in ("int8", "int4"):
        with pytest.raises(ValueError, match=f"{name} is a CPU path"):
            resolve_dtype(name, torch.device("cuda"))
    with pytest.raises(ValueError, match="must be one of"):
        resolve_dtype("fp8", cpu)


def test_unsupported_model_falls_back_to_audiocrafts_loop(tiny_model, monkeypatch):
    monkeypatch.setattr(tiny_model.lm, "two_step_cfg", True)
    with pytest.raises(UnsupportedModel):
        FastLM(tiny_model.lm, max_frames=10)
    gen = WindowGenerator(tiny_model, 10, SamplingParams(), seed=0, dtype="int8")
    assert gen.fast is None and gen.dtype == "fp32"
    monkeypatch.setattr(tiny_model.lm, "two_step_cfg", False)
    assert gen.next_stride("x", 12).shape == (1, tiny_model.lm.num_codebooks, 12)


def test_teacher_forced_logits_match_the_decode_steps(tiny_model):
    """The all-positions forward (used for the quality figure) agrees with step-by-step decoding."""
    fast = FastLM(tiny_model.lm, max_frames=400, dtype="fp32")
    attributes = _attributes(tiny_model)[0]
    codes = generate(fast, None, attributes, 300, generator=torch.Generator().manual_seed(2))[0]
    sequence = pattern_sequence(fast, codes).unsqueeze(0).expand(2, -1, -1)
    with torch.inference_mode():
        everything = torch.cat([fast.forward(sequence[..., a:a + 256], a, last_only=False)
                                for a in (0, 256)], dim=2)
        for position in (0, 17, 255, 256, 290):
            step = fast.forward(sequence[..., position:position + 1], position)
            assert torch.allclose(everything[:, :, position], step, atol=1e-4)


@pytest.mark.parametrize("dtype", ["fp32", pytest.param("int8", marks=needs_native)])
def test_prefill_runs_the_last_layer_at_the_last_position_only(tiny_model, dtype):
    """A prefill that returns the last position's logits runs the last layer's linears after its
    keys and values at that position alone, and still fills the cache at every position: the
    same logits and cache as the all-positions prefill."""
    fast = FastLM(tiny_model.lm, max_frames=400, dtype=dtype, kernels="native" if dtype == "int8" else "auto")
    fast.set_conditions(_attributes(tiny_model)[0])
    torch.manual_seed(3)
    tokens = torch.randint(0, fast.card, (1, fast.num_codebooks, 300)).expand(2, -1, -1)
    ff1 = fast.layers[-1].ff1
    linear_class = type(ff1)
    rows_seen = []

    class Counting(linear_class):  # the last layer's first feed-forward linear, counting its rows
        def __call__(self, x):
            rows_seen.append(x.reshape(-1, x.shape[-1]).shape[0])
            return linear_class.__call__(self, x)

    with torch.inference_mode():
        everything = fast.prefill(tokens, last_only=False)[:, :, -1]
        cache_all = [t.clone() for t in (fast.cache.k, fast.cache.v)]
        fast.cache.k.zero_()
        fast.cache.v.zero_()
        ff1.__class__ = Counting
        try:
            last = fast.prefill(tokens)
        finally:
            ff1.__class__ = linear_class
    assert rows_seen == [2, 2]  # one per chunk of 256 (and the 44 after): the last position of each, both rows
    assert torch.allclose(last, everything, atol=1e-3, rtol=1e-3)
    for got, expected in zip((fast.cache.k, fast.cache.v), cache_all):
        assert torch.equal(got[..., :300, :], expected[..., :300, :])


@pytest.mark.parametrize("dtype", ["fp32", pytest.param("int8", marks=needs_native)])
@pytest.mark.parametrize("text", ["lofi hip hop", ""])
def test_prefill_leaves_out_the_cross_attention_of_silent_rows(tiny_model, dtype, text):
    """CFG's unconditional row has an all-zero text condition, so its cross-attention adds
    nothing: a prefill runs that block for the conditional row alone (both rows for an empty
    prompt, whose condition is zero too), with the logits and cache of a prefill that runs it."""
    fast = FastLM(tiny_model.lm, max_frames=400, dtype=dtype, kernels="native" if dtype == "int8" else "auto")
    fast.set_conditions(_attributes(tiny_model, text)[0])
    silent = (0, 1) if text == "" else (1,)
    assert fast.cross.silent_rows == silent
    assert not fast.cross.keys[:, list(silent)].any() and fast.cross.keys[:, 0].any() == (text != "")
    torch.manual_seed(4)
    tokens = torch.randint(0, fast.card, (1, fast.num_codebooks, 300)).expand(2, -1, -1)
    q_cross = fast.layers[0].q_cross
    linear_class = type(q_cross)
    rows_seen = []

    class Counting(linear_class):  # the first layer's query projection of the cross-attention
        def __call__(self, x):
            rows_seen.append(x.shape[0])
            return linear_class.__call__(self, x)

    with torch.inference_mode():
        fast.cross.silent_rows = ()
        expected = fast.prefill(tokens, last_only=False)
        cache = [t.clone() for t in (fast.cache.k, fast.cache.v)]
        fast.cross.silent_rows = silent
        q_cross.__class__ = Counting
        try:
            got = fast.prefill(tokens, last_only=False)
        finally:
            q_cross.__class__ = linear_class
    assert rows_seen == ([] if text == "" else [1, 1])  # per chunk (256, then 44 positions): the conditional row
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    for now, before in zip((fast.cache.k, fast.cache.v), cache):
        torch.testing.assert_close(now[..., :300, :].float(), before[..., :300, :].float(), atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="reads Linux's /proc/self/smaps")
@pytest.mark.parametrize("dtype, kv_cache", [("fp32", "auto"), pytest.param("int8", "int8", marks=needs_native),
                                             pytest.param("int8", "int4", marks=needs_native)])
def test_the_cpu_kv_cache_is_advised_onto_huge_pages(tiny_model, dtype, kv_cache):
    """engine/lm/hugepages.py: the cache every step reads, keys, values and their scales, lies in
    mappings advised MADV_HUGEPAGE (VmFlags `hg`), starting on a 2 MiB boundary, zeroed (scales 1)."""
    from engine.lm.hugepages import HUGE_PAGE_BYTES
    lm = tiny_model.lm if kv_cache != "int4" else build_random_lm(TINY_SHAPE._replace(lm_dim=128, lm_heads=2))
    fast = FastLM(lm, max_frames=100, dtype=dtype, kernels="native" if dtype == "int8" else "auto", kv_cache=kv_cache)
    cache = fast.cache
    tensors = [cache.kv] + ([cache.k_scale, cache.v_scale] if cache.quantized else [])
    for tensor in tensors:
        assert "hg" in mapping_flags(tensor.data_ptr())
        assert tensor.data_ptr() % HUGE_PAGE_BYTES == 0
    assert not cache.kv.any()
    assert cache.quantized == (dtype == "int8") and (not cache.quantized or bool((cache.k_scale == 1).all()))
    assert cache.precision == {"auto": "fp32"}.get(kv_cache, kv_cache)
    assert "hg" not in mapping_flags(torch.zeros(1 << 20).data_ptr())  # (a plain tensor is not)


def test_decode_attention_kernels_compute_the_same():
    """The native AVX-512 attention and the torch.compile'd one (used on CPU for real models)
    give the eager result over an fp16 cache."""
    from engine.lm.cache import KVCache
    from engine.lm.kernels import load_cpu_kernels
    native = load_cpu_kernels()
    assert (native is not None) == HAS_NATIVE
    torch.manual_seed(0)
    keys, values = torch.randn(2, 2, 4, 50, 32), torch.randn(2, 2, 4, 50, 32)
    q = torch.randn(2, 4, 1, 32)
    results = {}
    for kernels in ("eager", "compiled", "native"):
        cache = KVCache(2, 4, 50, 32, torch.float16, torch.device("cpu"), kernels, native)
        cache.write(0, 0, keys[0], values[0])
        cache.write(1, 0, keys[1], values[1])
        results[cache.kernel] = torch.stack([cache.attend(layer, q, 37) for layer in (0, 1)])
    assert set(results) == ({"eager", "compiled", "native"} if HAS_NATIVE else {"eager", "compiled"})
    exact = torch.stack([F.scaled_dot_product_attention(q, keys[i, :, :, :37].half().float(),
                                                        values[i, :, :, :37].half().float())
                         for i in (0, 1)])
    for kernel, result in results.items():
        assert torch.allclose(result.float(), exact, atol=1e-5), kernel


@needs_native
def test_native_int8_linear_is_close_to_fp32():
    from engine.lm.kernels import load_cpu_kernels
    from engine.lm.quantize import Int8
    torch.manual_seed(1)
    weight, bias = torch.randn(96, 256) * 0.05, torch.randn(96)
    linear = Int8(weight, bias, load_cpu_kernels())
    assert linear.kernels is not None
    for rows in (1, 2, 4, 7):  # ≤ 4: native; more: fbgemm
        x = torch.randn(rows, 256)
        exact = x @ weight.T + bias
        error = (linear(x) - exact).norm() / exact.norm()
        assert error < 0.02, (rows, error)


def test_native_int8_gemm_computes_its_int8_weights_for_prefill_rows():
    """Prefill rows (> 4) on the VNNI GEMM (kernels/int8_gemm.cpp, outputs in multiples of 64):
    exactly what the int8 weights and per-row int8 activations say, whatever the row count (tile
    tails included), closer to fp32 than fbgemm's per-call 7-bit activations."""
    from engine.lm.kernels import load_cpu_kernels
    from engine.lm.quantize import Int8
    torch.manual_seed(4)
    weight, bias = torch.randn(192, 320) * 0.05, torch.randn(192)
    linear = Int8(weight, bias, load_cpu_kernels())
    assert linear.vnni is not None and linear.packed is None
    fbgemm = Int8(weight, bias)  # no native kernels
    for rows in (5, 6, 7, 13, 100):
        x = torch.randn(rows, 320) * torch.linspace(0.1, 3, rows).unsqueeze(1)
        scale = x.abs().amax(dim=1, keepdim=True) / 127
        expected = (torch.round(x / scale) @ linear.weight.float().T) * scale * linear.scales + bias
        got = linear(x)
        assert (got - expected).abs().max() < 1e-4 * expected.abs().max(), rows
        exact = x @ weight.T + bias
        error = (got - exact).norm() / exact.norm()
        assert error < 0.6 * (fbgemm(x) - exact).norm() / exact.norm(), rows


def test_native_int4_linear_computes_its_4_bit_weights():
    """The int4 kernel computes exactly what its packed weights say (int8-quantised rows times
    the dequantised 4-bit weights), the prefill path (fbgemm, > 4 rows) uses the same weights,
    and it reads about half the bytes of int8."""
    from engine.lm.kernels import load_cpu_kernels
    from engine.lm.quantize import INT4_GROUP, Int4, Int8, quantize_int4
    torch.manual_seed(2)
    weight, bias = torch.randn(160, 768) * 0.05, torch.randn(160)
    kernels = load_cpu_kernels()
    linear = Int4(weight, bias, kernels)
    assert linear.kernels is not None
    q, scales = quantize_int4(weight)  # what the layer packed
    assert torch.equal(scales, linear.group_scales)
    dequantised = (q.float().view(160, -1, INT4_GROUP) * scales.unsqueeze(-1)).view(160, 768)
    for rows in (1, 2, 3, 4, 7):
        x = torch.randn(rows, 768)
        scale = x.abs().amax(dim=1, keepdim=True) / 127
        expected = (torch.round(x / scale) @ dequantised.T) * scale + bias
        got = linear(x)
        if rows <= 4:  # the native kernel: exact up to float rounding
            assert (got - expected).abs().max() < 1e-4 * expected.abs().max(), rows
        same_weights = x @ dequantised.T + bias
        assert (got - same_weights).norm() / same_weights.norm() < 0.02, rows
        exact = x @ weight.T + bias
        assert (got - exact).norm() / exact.norm() < 0.15, rows  # 4-bit weights: ~10 % here
    assert linear.weight_bytes() < 0.56 * Int8(weight, bias, kernels).weight_bytes()


def test_8_bit_kv_cache_kernels_compute_the_dequantised_attention():
    """Rows are stored as int8 with one scale per head and position; the native attention over
    them equals attention over the dequantised cache, and reads back within int8 rounding."""
    from engine.lm.cache import KVCache
    from engine.lm.kernels import load_cpu_kernels
    native = load_cpu_kernels()
    torch.manual_seed(5)
    cache = KVCache(layers=2, heads=3, positions=48, head_dim=32, dtype=torch.int8, device=torch.device("cpu"),
                    kernels="native", native=native)
    assert cache.quantized and cache.kernel == "native"
    k, v = torch.randn(2, 3, 40, 32), torch.randn(2, 3, 40, 32) * 3
    cache.write(1, 0, k[:, :, :30], v[:, :, :30])  # a prefill chunk
    for t in range(30, 40):  # decode steps
        cache.write(1, t, k[:, :, t:t + 1], v[:, :, t:t + 1])
    keys, values = cache.read(1, 40, torch.float32)
    assert (keys - k).abs().max() <= k.abs().amax(-1, keepdim=True).max() / 127 * 0.51
    assert (values - v).abs().max() <= v.abs().amax(-1, keepdim=True).max() / 127 * 0.51
    q = torch.randn(2, 3, 1, 32)
    expected = F.scaled_dot_product_attention(q, keys, values)
    got = cache.attend(1, q, 40)
    assert (got - expected).abs().max() < 1e-4
    exact = F.scaled_dot_product_attention(q, k, v)
    assert (got - exact).norm() / exact.norm() < 0.02
    with pytest.raises(ValueError, match="native CPU kernels"):
        KVCache(1, 1, 16, 16, torch.int8, torch.device("cpu"), kernels="eager")


@needs_native
def test_8_bit_kv_cache_keeps_the_decoders_predictions(tiny_model):
    """int8 weights over an 8-bit cache (what auto picks with the native kernels) against the
    same weights over an fp16 cache: nearly the same logits along a generated sequence."""
    from engine.lm.quality import guided_logits, logit_agreement
    lm = tiny_model.lm
    attributes = _attributes(tiny_model)[0]
    eight = FastLM(lm, max_frames=80, dtype="int8", kernels="native")
    half = FastLM(lm, max_frames=80, dtype="int8", kernels="native", kv_cache="fp16")
    assert eight.cache.quantized and eight.cache_dtype == torch.int8 and half.cache_dtype == torch.float16
    assert eight.step_bytes(60) < half.step_bytes(60)
    codes = generate(eight, None, attributes, 60, generator=torch.Generator().manual_seed(4))[0]
    reference, targets = guided_logits(half, codes, attributes)
    figures = logit_agreement(reference, guided_logits(eight, codes, attributes)[0], targets, eight.special_token)
    assert figures["logit_relative_error"] < 0.03, figures
    assert figures["top10_overlap"] > 0.9, figures
    same = logit_agreement(reference, reference, targets, eight.special_token)
    assert same["logit_relative_error"] == 0 and same["top10_overlap"] == 1 and same["top250_overlap"] == 1
    with pytest.raises(ValueError, match=r"8-bit KV cache \(--kv-cache int8\) needs"):
        FastLM(lm, max_frames=80, dtype="fp32", kv_cache="int8")


def test_int4_scales_are_chosen_for_the_least_error():
    """Each group's scale comes from a small grid: never worse than scaling by max|w| alone,
    and better for weights with outliers (clipping one weight loses less than coarse steps)."""
    from engine.lm.quantize import INT4_GROUP, quantize_int4
    torch.manual_seed(3)
    weight = torch.randn(64, 4 * INT4_GROUP)
    weight[:, ::97] *= 6  # outliers
    q, scales = quantize_int4(weight)
    assert q.dtype == torch.int8 and q.min() >= -8 and q.max() <= 7
    assert scales.shape == (64, 4)
    groups = weight.view(64, 4, INT4_GROUP)
    plain_scales = groups.abs().amax(dim=-1, keepdim=True) / 7
    plain = torch.clamp(torch.round(groups / plain_scales), -8, 7) * plain_scales
    chosen = q.float().view(64, 4, INT4_GROUP) * scales.unsqueeze(-1)
    plain_error = ((plain - groups) ** 2).sum(-1)
    chosen_error = ((chosen - groups) ** 2).sum(-1)
    assert (chosen_error <= plain_error + 1e-6).all()
    assert chosen_error.sum() < 0.95 * plain_error.sum()


def test_released_source_weights_leave_the_decoder_working():
    """The server frees audiocraft's copy of the LM weights once the fast decoder has its own."""
    import warnings
    from engine.models.load import load_model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model("tiny", device="cpu", seed=0)  # its own: this one is changed
    attributes = _attributes(model)[0]
    before = generate(FastLM(model.lm, max_frames=60, dtype="fp32"), None, attributes, 30, temperature=0)
    gen = WindowGenerator(model, 20, SamplingParams(temperature=0), seed=0, dtype="fp32",
                          release_weights=True)
    assert all(p.numel() == 0 for p in model.lm.transformer.parameters())
    assert torch.equal(gen.next_stride("lofi hip hop", 30), before)


def test_too_long_a_request_is_refused(tiny_model):
    fast = FastLM(tiny_model.lm, max_frames=20, dtype="fp32")
    with pytest.raises(ValueError, match="exceed the cache"):
        generate(fast, None, _attributes(tiny_model)[0], 25)
