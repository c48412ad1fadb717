"""The CPU decode step in one native call (engine/lm/native_step.py, kernels/decode_step.cpp)
computes what the layers as torch ops around the same kernels compute, on a model whose shapes
take every native path: int4 groups of 256 inputs and heads of 64 (the 8-bit cache's VNNI
scores), like every MusicGen."""
import os
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from engine.lm.model import FastLM
from engine.models.random_musicgen import TINY_SHAPE, build_random_lm
from nativeutil import mapping_flags, needs_native

pytestmark = needs_native

#: 2 layers of width 256, 4 heads of 64, feed-forward 1024.
SHAPE = TINY_SHAPE._replace(lm_dim=256, lm_heads=4)


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(3)
    return build_random_lm(SHAPE)


def _steps(fast, lm, fused: bool, positions: int = 70, steps: int = 12) -> torch.Tensor:
    """Logits [steps, 2, K, card] of decode steps after a prefill, teacher-forced on fixed tokens."""
    if not fused:
        fast.native_step = None
    attributes, _ = lm_attributes(lm)
    fast.set_conditions(attributes[0])
    generator = torch.Generator().manual_seed(1)
    K = lm.num_codebooks
    with torch.inference_mode():
        fast.prefill(torch.randint(0, lm.card, (2, K, positions), generator=generator))
        return torch.stack([fast.step(torch.randint(0, lm.card, (K,), generator=generator), positions + i)
                            for i in range(steps)])


def lm_attributes(lm):
    from audiocraft.modules.conditioners import ConditioningAttributes
    return [ConditioningAttributes(text={"description": "warm lofi hip hop"})], None


@pytest.mark.parametrize("dtype, kv_cache", [("int8", "fp16"), ("int8", "int8"), ("int4", "int8"), ("int4", "fp16"),
                                             ("int4", "int4"), ("int8", "int4")])
def test_the_fused_step_computes_what_the_torch_ops_compute(lm, dtype, kv_cache):
    fused = FastLM(lm, max_frames=100, dtype=dtype, kernels="native", kv_cache=kv_cache)
    assert fused.native_step is not None and fused.native_linears
    assert fused.native_step.logits  # the output norm and heads inside the native call too
    ops = FastLM(lm, max_frames=100, dtype=dtype, kernels="native", kv_cache=kv_cache)
    got, expected = _steps(fused, lm, True), _steps(ops, lm, False)
    # The activations are quantised to int8 on the way into each linear: float rounding that
    # differs by 1e-7 moves a few of them by one step, so the paths agree to about 1e-4, not 1e-7.
    assert ((got - expected).norm() / expected.norm()) < 2e-3
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() > 0.95


def test_without_an_output_norm_the_heads_run_after_the_native_call(lm):
    """Where the heads cannot run in the native call (here: no output norm), it returns the
    layers' output and the heads run as before."""
    from engine.lm.kernels import load_cpu_kernels
    from engine.lm.native_step import NativeStep
    fused = FastLM(lm, max_frames=100, dtype="int4", kernels="native", kv_cache="int8")
    ops = FastLM(lm, max_frames=100, dtype="int4", kernels="native", kv_cache="int8")
    fused.out_norm = ops.out_norm = None
    fused.native_step = NativeStep(fused, load_cpu_kernels())
    assert not fused.native_step.logits
    got, expected = _steps(fused, lm, True), _steps(ops, lm, False)
    assert ((got - expected).norm() / expected.norm()) < 2e-3
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() > 0.95


def test_a_row_gives_the_same_numbers_alone_as_among_others(lm):
    """Rows are computed on their own: the fused step of rows (2, 3) equals theirs among 6."""
    fast = FastLM(lm, max_frames=100, dtype="int4", kernels="native")
    attributes, _ = lm_attributes(lm)
    fast.set_conditions(attributes[0])
    cache = fast.cache.with_rows(6)
    torch.manual_seed(0)
    for tensor in (cache.k, cache.v):
        tensor.random_(-100, 100)
    cache.k_scale.uniform_(0.001, 0.02)
    cache.v_scale.uniform_(0.001, 0.02)
    keys = fast.cross.keys.repeat(1, 3, 1, 1, 1)
    values = fast.cross.values.repeat(1, 3, 1, 1, 1)
    text = keys.shape[3]
    x = torch.randn(6, fast.dim)
    positions = [10, 10, 40, 40, 25, 25]
    saved = (cache.k.clone(), cache.v.clone(), cache.k_scale.clone(), cache.v_scale.clone())
    together = fast.native_step(x, cache, range(6), positions, keys, values, [text] * 6)
    cache.k.copy_(saved[0]), cache.v.copy_(saved[1]), cache.k_scale.copy_(saved[2]), cache.v_scale.copy_(saved[3])
    alone = fast.native_step(x[2:4], cache, [2, 3], positions[2:4], keys, values, [text] * 2)
    assert torch.equal(alone, together[2:4])
    shorter = fast.native_step(x[2:4], cache, [2, 3], positions[2:4], keys, values, [text - 1] * 2)
    assert not torch.equal(shorter, alone)  # the text length is honoured


def test_the_native_embedding_is_the_torch_ops_embedding(lm):
    """NativeStep.embed (the step's input rows in one native call) adds the codebooks' rows and
    the positional ones in _embed's order: the same numbers; a token past a table is refused."""
    fast = FastLM(lm, max_frames=100, dtype="int8", kernels="native")
    K = lm.num_codebooks
    tokens = torch.randint(0, lm.card + 1, (3, K), generator=torch.Generator().manual_seed(4))  # (card: the special token)
    positions = torch.tensor([0, 57, 99])
    got = fast.native_step.embed(tokens, positions)
    expected = fast._embed(tokens.unsqueeze(-1), fast.pos_emb.index_select(0, positions).unsqueeze(1)).squeeze(1)
    assert torch.equal(got, expected)
    with pytest.raises(RuntimeError, match="token out of range"):
        fast.native_step.embed(torch.full((1, K), lm.card + 1), positions[:1])
    with pytest.raises(RuntimeError, match="position out of range"):
        fast.native_step.embed(tokens[:1], torch.tensor([fast.pos_emb.shape[0]]))


def test_vnni_scores_over_the_8_bit_cache_are_the_dequantised_scores():
    """scores_q8 quantises q to int8 per head and sums by VNNI, 16 positions at a time (and the
    rest one by one): within q's rounding of the exact scores over the dequantised keys."""
    from engine.lm.kernels import load_cpu_kernels
    native = load_cpu_kernels()
    torch.manual_seed(2)
    heads, capacity, head_dim = 6, 80, 64
    keys = torch.randint(-127, 128, (heads, capacity, head_dim), dtype=torch.int8)
    key_scales = torch.rand(heads, capacity) * 0.05 + 0.001
    q = torch.randn(heads, head_dim)
    for positions in (1, 15, 16, 17, 33, 80):
        got = native.scores_q8(q, keys, key_scales, positions)
        dequantised = keys[:, :positions].float() * key_scales[:, :positions, None]
        exact = (dequantised @ q.unsqueeze(-1)).squeeze(-1) / head_dim ** 0.5
        # q's rounding: at most half a step (max|q| / 254) per element, times Σ|k|
        bound = (q.abs().amax(-1, keepdim=True) / 254) * dequantised.abs().sum(-1) / head_dim ** 0.5
        assert got.shape == (heads, positions)
        assert ((got - exact).abs() <= bound * 1.001 + 1e-6).all(), positions



def test_vnni_weighted_values_over_the_8_bit_cache_are_the_dequantised_sum():
    """weighted_q8 over heads of 64 (the decode step's loop with the softmax's exps inside it)
    holds the weights times the value scales as two uint8 digits per block of 64 positions and
    sums 4 positions per VNNI product, its rows interleaved by unpacks: within half a step of
    1 / 255² of each block's largest per weight, every number in its place. Other head widths
    take the float loop."""
    import torch.nn.functional as F
    from engine.lm.kernels import load_cpu_kernels
    native = load_cpu_kernels()
    torch.manual_seed(5)
    heads, capacity = 5, 300
    for head_dim in (64, 32):
        values = torch.randint(-127, 128, (heads, capacity, head_dim), dtype=torch.int8)
        value_scales = torch.rand(heads, capacity) * 0.05 + 0.001
        for positions in (1, 3, 16, 37, 64, 65, 129, 300):
            for spread in (1.0, 12.0):  # flat, and peaked: most weights below 1 / 255 of the largest
                weights = torch.softmax(torch.randn(heads, positions) * spread, dim=-1)
                got = native.weighted_q8(weights, values, value_scales)
                scaled = weights * value_scales[:, :positions]
                expected = (scaled.unsqueeze(1) @ values[:, :positions].float()).squeeze(1)
                blocks = F.pad(scaled, (0, -positions % 64)).view(heads, -1, 64).amax(-1)
                step = blocks.repeat_interleave(64, dim=1)[:, :positions] / 255 ** 2
                bound = 127 * 0.5 * step.sum(-1, keepdim=True) + 1e-6 * expected.abs().amax(-1, keepdim=True)
                assert got.shape == (heads, head_dim)
                assert ((got - expected).abs() <= bound).all(), (head_dim, positions, spread)


def test_the_prefill_attention_over_the_8_bit_cache_is_the_dequantised_attention():
    """prefill_attention_q8 (BF16 products): each query of a chunk attends causally to the
    cached positions up to its own, as torch's attention over the dequantised cache, within the
    bf16 rounding of the queries and the softmax weights."""
    from engine.lm.cache import CHUNK_HEAD_DIM
    from engine.lm.kernels import load_cpu_kernels
    native = load_cpu_kernels()
    torch.manual_seed(4)
    B, H, P = 2, 3, 300
    keys, values = (torch.randint(-127, 128, (B, H, P, CHUNK_HEAD_DIM), dtype=torch.int8) for _ in range(2))
    key_scales, value_scales = (torch.rand(B, H, P) * 0.02 + 0.001 for _ in range(2))
    for start, length in ((0, 1), (0, 7), (0, 70), (100, 37), (64, 200), (250, 50)):
        q = torch.randn(B, H, length, CHUNK_HEAD_DIM)
        got = native.prefill_attention_q8(q, keys, values, key_scales, value_scales, start)
        end = start + length
        k = keys[:, :, :end].float() * key_scales[:, :, :end, None]
        v = values[:, :, :end].float() * value_scales[:, :, :end, None]
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(length, end, dtype=torch.bool)
                                                  .tril(diagonal=start))
        assert got.shape == expected.shape
        assert (got - expected).norm() / expected.norm() < 5e-3, (start, length)


def test_the_native_prefill_keeps_the_prefills_logits(lm):
    """A chunked prefill (2 chunks) with the native chunk attention over the 8-bit cache, and with
    torch's attention: as close to the fp32 decoder's logits as each other."""
    attributes, _ = lm_attributes(lm)
    tokens = torch.randint(0, lm.card, (2, lm.num_codebooks, 300), generator=torch.Generator().manual_seed(5))

    def prefill(fast):
        fast.set_conditions(attributes[0])
        with torch.inference_mode():
            return fast.prefill(tokens, last_only=False)
    reference = prefill(FastLM(lm, max_frames=400, dtype="fp32"))
    error = {}
    for native_chunks in (True, False):
        fast = FastLM(lm, max_frames=400, dtype="int8", kernels="native")
        assert fast.cache.quantized and fast.cache._chunk_kernel
        fast.cache._chunk_kernel = native_chunks
        error[native_chunks] = ((prefill(fast) - reference).norm() / reference.norm()).item()
    assert error[True] < 1.2 * error[False], error


def test_native_gelu_is_torchs_exact_gelu_and_runs_in_the_prefill(lm):
    from engine.lm.kernels import load_cpu_kernels
    x = torch.cat([torch.linspace(-12, 12, 4099), torch.randn(3001) * 3])  # not a multiple of 16
    got = load_cpu_kernels().gelu(x)
    expected = F.gelu(x.double())
    assert ((got.double() - expected).abs() <= 2e-7 * expected.abs().clamp(min=1) + 1e-7).all()
    fast = FastLM(lm, max_frames=100, dtype="int8", kernels="native")
    calls = []
    native = fast._native_gelu
    fast._native_gelu = lambda h: calls.append(h.shape) or native(h)
    attributes, _ = lm_attributes(lm)
    fast.set_conditions(attributes[0])
    with torch.inference_mode():
        fast.prefill(torch.randint(0, lm.card, (2, lm.num_codebooks, 40)))
    assert len(calls) == len(fast.layers)  # each layer's feed-forward of the prefill


def test_the_native_kernels_let_other_python_threads_run():
    """A native call does not hold the GIL: the audio callback, the listeners' event loop and the
    control API keep running while a decode step (10-20 ms) or the codec's ELU runs."""
    import threading
    import time
    from engine.lm.kernels import load_cpu_kernels
    native = load_cpu_kernels()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the kernel on one core, this thread on the other
    try:
        x = torch.randn(8_000_000)
        started = time.perf_counter()
        native.elu(x)
        call_seconds = time.perf_counter() - started
        while call_seconds < 0.03:  # long enough that holding the GIL would show
            x = torch.cat([x, x])
            started = time.perf_counter()
            native.elu(x)
            call_seconds = time.perf_counter() - started
        done = threading.Event()

        def work():
            for _ in range(4):
                native.elu(x)
            done.set()
        worker = threading.Thread(target=work)
        worker.start()
        gaps, last = [], time.perf_counter()
        while not done.is_set():
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
        worker.join()
    finally:
        torch.set_num_threads(threads)
    assert len(gaps) > 100
    assert max(gaps) < call_seconds / 2, (max(gaps), call_seconds)


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="reads Linux's /proc/self/smaps")
@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_the_step_weights_lie_side_by_side_on_huge_pages(lm, dtype):
    """quantize.step_weights_onto_huge_pages: what the native step reads of every linear (int8:
    weights, row sums, scales; int4: packed nibbles, group scales) is moved into one mapping
    advised MADV_HUGEPAGE, in the step's order, each 64-byte aligned; the steps' logits are
    those of the same decoder without the move, to the bit."""
    from engine.lm import quantize
    moved = FastLM(lm, max_frames=100, dtype=dtype, kernels="native")
    with mock.patch.object(quantize, "onto_huge_pages", lambda tensors: list(tensors)):
        kept = FastLM(lm, max_frames=100, dtype=dtype, kernels="native")
    tensors = [getattr(lin, name) for layer in moved.layers for lin in layer.linears() for name in lin.STEP_TENSORS]
    assert len(tensors) == len(moved.layers) * 6 * (2 if dtype == "int4" else 3)
    addresses = [t.data_ptr() for t in tensors]
    assert addresses == sorted(addresses) and all(a % 64 == 0 for a in addresses)
    span = addresses[-1] + tensors[-1].numel() * tensors[-1].element_size() - addresses[0]
    assert span <= sum(t.numel() * t.element_size() + 63 for t in tensors)  # side by side
    assert "hg" in mapping_flags(addresses[0]) and "hg" in mapping_flags(addresses[-1])
    first = kept.layers[0].qkv
    assert "hg" not in mapping_flags(getattr(first, first.STEP_TENSORS[0]).data_ptr())
    assert torch.equal(_steps(moved, lm, True), _steps(kept, lm, True))


@pytest.mark.parametrize("dtype, kv_cache", [("int4", "int4"), ("int8", "int8")])
def test_the_step_gives_the_same_numbers_on_any_number_of_threads(lm, dtype, kv_cache):
    """The step runs as one parallel region whose threads each take a share of every linear's
    channels, of the attention's (head, row) tasks and of the rows (kernels/decode_step.cpp):
    every number is computed whole by one thread, so 1, 2 or 3 threads (shares of uneven
    sizes) give the same logits to the bit."""
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            results.append(_steps(FastLM(lm, max_frames=100, dtype=dtype, kernels="native", kv_cache=kv_cache),
                                  lm, True, steps=4))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])
