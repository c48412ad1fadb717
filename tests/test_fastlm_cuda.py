"""The fast decoder on CUDA: the CUDA-graph decode step computes what the eager step and
audiocraft's `LMModel.generate` compute. These need a CUDA GPU; CI has none, so they run on a
GPU machine (`python -m pytest tests/test_fastlm_cuda.py`) and are skipped elsewhere."""
import warnings

import pytest
import torch

from engine.lm.generate import generate, pattern_sequence
from engine.lm.model import FastLM

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def cuda_model():
    from engine.models.load import load_model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model("tiny", device="cuda", seed=0)


def _attributes(model, text="lofi hip hop"):
    attributes, _ = model._prepare_tokens_and_attributes([text], None)
    return attributes


@pytest.mark.parametrize("fused", [False, True], ids=["torch-step", "fused-step"])
@pytest.mark.parametrize("prompt_frames", [0, 37, 300])
def test_graph_step_greedy_fp32_gives_audiocrafts_tokens(cuda_model, prompt_frames, fused):
    lm = cuda_model.lm
    torch.backends.cuda.matmul.allow_tf32 = False
    generator = torch.Generator().manual_seed(prompt_frames)
    prompt = (torch.randint(0, lm.card, (1, lm.num_codebooks, prompt_frames), generator=generator).cuda()
              if prompt_frames else None)
    attributes = _attributes(cuda_model)
    with torch.inference_mode():
        expected = lm.generate(prompt, attributes, max_gen_len=prompt_frames + 45, use_sampling=False,
                               cfg_coef=3.0)
    fast = FastLM(lm, max_frames=400, dtype="fp32", fused_step=fused)
    assert fast.kernels == "graph" and (fast._fused is not None) == fused
    got = generate(fast, prompt, attributes[0], 45, temperature=0)
    assert fast.step_graph.graph is not None
    assert torch.equal(got, expected)


@pytest.mark.parametrize("fused", [False, True], ids=["torch-step", "fused-step"])
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_graph_step_logits_equal_the_eager_step(cuda_model, dtype, fused):
    """Teacher-forced through one sequence: the replayed graph's logits at each position are the
    eager step's, within the precision's rounding; the graph's with the residual adds and the
    GELU in the GEMMs' epilogues (or on the fused Triton kernels), the eager one's as separate
    ops (exact GELU)."""
    eager = FastLM(cuda_model.lm, max_frames=120, dtype=dtype, kernels="eager", fuse_epilogues=False)
    graph = FastLM(cuda_model.lm, max_frames=120, dtype=dtype, kernels="graph", fused_step=fused)
    assert graph.gelu_epilogue and not eager.gelu_epilogue and (graph._fused is not None) == fused
    attributes = _attributes(cuda_model)[0]
    codes = generate(eager, None, attributes, 100, generator=torch.Generator("cuda").manual_seed(1))[0]
    sequence = pattern_sequence(eager, codes)  # [K, S]
    with torch.inference_mode():
        for fast in (eager, graph):
            fast.set_conditions(attributes)
            fast.prefill(sequence[:, :10].unsqueeze(0).expand(2, -1, -1))
        for position in range(10, sequence.shape[1]):
            expected = eager.step(sequence[:, position], position).float()
            got = graph.step(sequence[:, position], position).float()
            error = ((got - expected).norm() / expected.norm()).item()
            assert error < 2e-2, (position, error)
    assert graph.step_graph.graph is not None


@pytest.mark.parametrize("fused", [False, True], ids=["torch-step", "fused-step"])
def test_graph_follows_prompt_changes_and_reproduces_samples(cuda_model, fused):
    eager = FastLM(cuda_model.lm, max_frames=60, dtype="fp32", kernels="eager")
    graph = FastLM(cuda_model.lm, max_frames=60, dtype="fp32", kernels="graph", fused_step=fused)
    for text in ("jazz", "rock", "slow ambient drone with rain"):  # 1, 1 and 5 words
        attributes = _attributes(cuda_model, text)[0]
        expected = generate(eager, None, attributes, 30, temperature=0)
        assert torch.equal(generate(graph, None, attributes, 30, temperature=0), expected), text
    attributes = _attributes(cuda_model)[0]
    runs = [generate(graph, None, attributes, 40, generator=torch.Generator("cuda").manual_seed(5))
            for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    other = generate(graph, None, attributes, 40, generator=torch.Generator("cuda").manual_seed(6))
    assert not torch.equal(runs[0], other)


@pytest.mark.parametrize("fused", [False, True], ids=["torch-step", "fused-step"])
def test_graph_follows_a_morph_without_capturing_again(cuda_model, fused):
    """Weighted prompts mixed in place before each step: the replayed graph reads the new mix
    (greedy tokens equal the eager step's), and it is captured once for the whole morph."""
    eager = FastLM(cuda_model.lm, max_frames=80, dtype="fp32", kernels="eager")
    graph = FastLM(cuda_model.lm, max_frames=80, dtype="fp32", kernels="graph", fused_step=fused)
    attributes, _ = cuda_model._prepare_tokens_and_attributes(["jazz", "slow ambient drone with rain"], None)

    def weights_at(timestep):
        a = min(1.0, timestep / 40)
        return (1.0 - a, a)
    expected = generate(eager, None, attributes, 60, temperature=0, weights_at=weights_at)
    got = generate(graph, None, attributes, 60, temperature=0, weights_at=weights_at)
    captured = graph.step_graph.graph
    assert torch.equal(got, expected)
    generate(graph, None, attributes, 60, temperature=0, weights_at=weights_at)
    assert graph.step_graph.graph is captured  # same prompts, new weights: no new capture


def test_batched_stations_give_their_alone_tokens_on_cuda(cuda_model):
    """The batched step as CUDA replays it (masked attention, one CUDA graph per padded size):
    three stations' sampled tokens in one batch (4 slots computed) equal each one's alone (the
    first station alone: 1 slot computed; lm/batcher.py)."""
    import threading

    from engine.lm.batch import BatchedDecoder
    from engine.lm.batcher import StrideBatcher, StrideRequest
    sizes = {}  # stations run → the slot counts their steps computed
    prompts = {"a": ("dusty boom bap", 20, 1), "b": ("a slow jazz trio with brushed drums", 35, 2), "c": ("rain", 0, 3)}

    def run(names):
        fast = FastLM(cuda_model.lm, max_frames=120, dtype="bf16")
        batcher = StrideBatcher(BatchedDecoder(fast, slots=3))
        for name in prompts:
            batcher.join(name)
        assert batcher.decoder.masked and batcher.decoder.attention == "split"
        results, stop = {}, threading.Event()

        def station(name):
            text, context, seed = prompts[name]
            torch.manual_seed(seed)
            codes = torch.randint(0, 2048, (1, 4, context)).cuda() if context else None
            results[name] = batcher.generate(StrideRequest(
                station=name, prompt=codes, attributes=_attributes(cuda_model, text)[0], new_frames=40,
                generator=torch.Generator("cuda").manual_seed(seed)))
            if len(results) == len(names):
                stop.set()
        threads = [threading.Thread(target=station, args=(n,)) for n in names]
        for t in threads:
            t.start()
        batcher.run(stop, poll_seconds=0.001)
        sizes[tuple(names)] = batcher.decoder.step_sizes
        return results
    together = run(list(prompts))
    for name in prompts:
        assert torch.equal(run([name])[name], together[name]), name
    assert 4 in sizes[("a", "b", "c")] and sizes[("a",)] == [1]  # the padded graphs ran
