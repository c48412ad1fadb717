"""Continuous batching of strides (engine/lm/batch.py, batcher.py) on the tiny model: a
station's tokens are the same alone as in any batch, whoever joins when; one stride's failure
ends that stride only; the least buffered station is admitted first."""
import threading

import pytest
import torch

from engine.lm.batch import BatchedDecoder
from engine.lm.batcher import StrideBatcher, StrideRequest
from engine.lm.generate import generate
from engine.lm.model import FastLM
from nativeutil import needs_native

#: station → (prompt, context frames, new frames, sampling, seed)
STATIONS = {
    "lofi": ("warm lofi hip hop", 12, 20, dict(temperature=1.0, top_k=250), 1),
    "jazz": ("a slow jazz trio with brushed drums and upright bass", 30, 14, dict(temperature=0.0), 2),
    "rain": ("rain", 0, 25, dict(temperature=0.8, top_k=0, top_p=0.9, cfg_coef=5.0), 3),
}


def attributes(model, prompt):
    return model._prepare_tokens_and_attributes([prompt], None)[0][0]


def request(model, name, **extra):
    prompt, context, frames, sampling, seed = STATIONS[name]
    torch.manual_seed(seed)
    codes = torch.randint(0, 2048, (1, model.lm.num_codebooks, context)) if context else None
    return StrideRequest(station=name, prompt=codes, attributes=attributes(model, prompt), new_frames=frames,
                         generator=torch.Generator().manual_seed(seed), **sampling, **extra)


def run(batcher, requests, start_when=None):
    """Submit each request from a thread of its own (as stations do) while this thread runs the
    batch; `start_when[name]`: submit once that many batched steps have run."""
    results, errors = {}, {}
    stop = threading.Event()

    def submit(r):
        while start_when and batcher.steps < start_when.get(r.station, 0):
            ready.wait(0.001)
        try:
            results[r.station] = batcher.generate(r)
        except BaseException as err:  # noqa: BLE001
            errors[r.station] = err
        if len(results) + len(errors) == len(requests):
            stop.set()
    ready = threading.Event()
    threads = [threading.Thread(target=submit, args=(r,)) for r in requests]
    for t in threads:
        t.start()
    batcher.run(stop, poll_seconds=0.001)
    for t in threads:
        t.join(30)
    return results, errors


@pytest.fixture(params=["fp32"])
def batcher(tiny_model, request):
    """A batcher of 4 slots for the three stations: `request.param` is the precision, with
    "/masked" the step CUDA replays (self-attention over the whole cache under masks) and
    "/native" the native CPU kernels (with int8 or int4 weights: over an 8-bit KV cache)."""
    dtype, *flags = request.param.split("/")
    fast = FastLM(tiny_model.lm, max_frames=80, dtype=dtype, kernels="native" if "native" in flags else "auto")
    if "native" in flags:  # (unmasked: the fused native step, native_step.py)
        assert fast.kernels == "native" and fast.cache.quantized and fast.native_step is not None
    b = StrideBatcher(BatchedDecoder(fast, slots=4, masked="masked" in flags))
    for name in STATIONS:
        b.join(name)
    return b


@pytest.mark.parametrize("batcher", ["fp32", "int8", "fp32/masked", pytest.param("int4/native", marks=needs_native),
                                     pytest.param("int8/native/masked", marks=needs_native)], indirect=True)
def test_a_stations_tokens_are_the_same_alone_as_in_a_batch(tiny_model, batcher):
    together, errors = run(batcher, [request(tiny_model, name) for name in STATIONS])
    assert not errors and set(together) == set(STATIONS)
    assert batcher.busy_slot_steps > batcher.steps  # strides really shared steps
    for name, (_, context, frames, _, _) in STATIONS.items():
        assert together[name].shape == (1, 4, context + frames)
        alone, _ = run(batcher, [request(tiny_model, name)])
        assert torch.equal(alone[name], together[name]), name
    if batcher.decoder.masked:  # the step CUDA replays computes the first 1, 2 or 4 slots: padded sizes
        assert batcher.decoder.step_sizes == [1, 2, 4]
    # Joining late (continuous batching): the same tokens again.
    staggered, _ = run(batcher, [request(tiny_model, name) for name in STATIONS], start_when={"jazz": 5, "rain": 11})
    for name in STATIONS:
        assert torch.equal(staggered[name], together[name]), name


@pytest.mark.parametrize("batcher", ["fp32", "fp32/masked"], indirect=True)
def test_the_batch_computes_what_generate_computes(tiny_model, batcher):
    """Greedy, one prompt: the batched step's tokens are the single-generation loop's."""
    r = request(tiny_model, "jazz")
    got, _ = run(batcher, [r])
    fast = FastLM(tiny_model.lm, max_frames=80, dtype="fp32")
    expected = generate(fast, r.prompt, r.attributes, r.new_frames, temperature=0.0, cfg_coef=3.0)
    assert torch.equal(got["jazz"], expected)


def test_one_strides_failure_ends_that_stride_only(tiny_model, batcher):
    def cut_in(step, total):
        if step == 6:
            raise KeyboardInterrupt("cut in")  # what a station's progress callback raises
    reference, _ = run(batcher, [request(tiny_model, "lofi"), request(tiny_model, "rain")])
    results, errors = run(batcher, [request(tiny_model, "lofi", progress=cut_in), request(tiny_model, "rain"),
                                    request(tiny_model, "jazz", logits_hook=lambda logits: logits * float("nan"))])
    assert isinstance(errors["lofi"], KeyboardInterrupt) and isinstance(errors["jazz"], FloatingPointError)
    assert torch.equal(results["rain"], reference["rain"])


def test_the_least_buffered_station_is_admitted_first(tiny_model, batcher):
    order = []

    def noting(name):
        def hook(logits):
            order.append(name)
            return logits
        return hook
    buffered = {"lofi": 9.0, "jazz": 0.5, "rain": 4.0}
    requests = [request(tiny_model, name, logits_hook=noting(name), buffered=lambda n=name: buffered[n])
                for name in STATIONS]
    pause = threading.Event()
    threads = [threading.Thread(target=batcher.generate, args=(r,)) for r in requests]
    for t in threads:
        t.start()
    while len(batcher._waiting) < 3:  # all three wait before the batch runs
        pause.wait(0.001)
    while any(t.is_alive() for t in threads):
        batcher.run_once()
    assert order == ["jazz", "rain", "lofi"]


def test_slots_are_per_station(batcher):
    with pytest.raises(ValueError, match="already has a slot"):
        batcher.join("lofi")
    batcher.join("fourth")
    with pytest.raises(ValueError, match="all 4 slots"):
        batcher.join("fifth")
    batcher.leave("lofi")
    assert batcher.join("fifth") == 0


def test_batched_stations_stride_after_stride_give_their_alone_tokens(tiny_model):
    """WindowGenerators of three stations (different prompts, seeds, windows, sampling) going
    stride after stride in one batch give what each gives alone."""
    from engine.lm.window import SamplingParams, WindowGenerator
    settings = {"a": (3, 10, 15, SamplingParams()), "b": (4, 20, 8, SamplingParams(temperature=0.7, top_k=50)),
                "c": (5, 5, 12, SamplingParams(temperature=1.2, top_p=0.8, cfg_coef=4.0))}
    prompts = {"a": "dusty boom bap", "b": "ambient drone with strings", "c": "fast breakbeat"}

    def play(names):
        batcher = StrideBatcher(BatchedDecoder(FastLM(tiny_model.lm, max_frames=40, dtype="fp32"), slots=3))
        generators = {}
        for name in settings:  # the same slots whoever plays
            batcher.join(name)
            seed, context, stride, sampling = settings[name]
            generators[name] = WindowGenerator(tiny_model, context, sampling, seed, batcher=batcher, station=name)
        codes, stop = {name: [] for name in names}, threading.Event()

        def station(name):
            for _ in range(3):
                codes[name].append(generators[name].next_stride(prompts[name], settings[name][2]))
            if all(len(c) == 3 for c in codes.values()):
                stop.set()
        threads = [threading.Thread(target=station, args=(name,)) for name in names]
        for t in threads:
            t.start()
        batcher.run(stop, poll_seconds=0.001)
        return {name: torch.cat(c, dim=-1) for name, c in codes.items()}, batcher
    together, batcher = play(list(settings))
    assert batcher.busy_slot_steps > batcher.steps
    for name in settings:
        alone, _ = play([name])
        assert torch.equal(alone[name], together[name]), name


def test_int8_groups_are_quantised_on_their_own_and_idle_ones_skipped():
    from engine.lm.quantize import Int8, activations_per_group
    torch.manual_seed(0)
    layer = Int8(torch.randn(96, 64), None)
    x = torch.randn(6, 64)
    x[4:] *= 100  # a loud slot: one scale per call would squash the others' activations
    with activations_per_group([layer], rows=2, active=[True, False, True]):
        y = layer(x)
    assert torch.equal(y[:2], layer(x[:2])) and torch.equal(y[4:], layer(x[4:]))
    assert not y[2:4].any()  # the idle slot was not computed
    assert layer.group_rows == 0 and layer.active_groups is None  # only while in it


def test_dense_gemms_run_in_calls_of_at_most_max_rows():
    """The masked step's GEMMs in chunks of rows (batch.INVARIANT_GEMM_ROWS): the same numbers
    as one call, for the plain, residual and GELU forms, and each chunk really a call of its own."""
    import torch.nn.functional as F

    from engine.lm.quantize import Dense, gemm_rows_at_most
    torch.manual_seed(0)
    layer = Dense(torch.randn(48, 32), None, torch.float32)
    x, residual = torch.randn(10, 1, 32), torch.randn(10, 1, 48)
    whole = (layer(x), layer.add_to(residual, x), layer.gelu(x))
    calls = []
    original = torch.addmm

    def counting_addmm(*args, **kwargs):
        calls.append(args[1].shape[0])
        return original(*args, **kwargs)
    with gemm_rows_at_most([layer], 4):
        torch.addmm = counting_addmm
        try:
            chunked = (layer(x), layer.add_to(residual, x), layer.gelu(x))
        finally:
            torch.addmm = original
    assert calls == [4, 4, 2]  # the residual form: three calls of at most 4 rows
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(whole[2], F.gelu(x @ layer.weight.T))  # exact GELU on CPU
    assert layer.max_rows == 0  # only while in it
