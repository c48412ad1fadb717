import torch

from engine.generator import SamplingParams, WindowGenerator


def _spy_generate(lm):
    prompts = []
    real = lm.generate

    def spy(prompt, *args, **kwargs):
        prompts.append(None if prompt is None else prompt.clone())
        return real(prompt, *args, **kwargs)
    return spy, prompts


def test_each_stride_is_prompted_by_the_last_context_of_emitted_tokens(tiny_model, monkeypatch):
    context_frames, stride_frames = 40, 25
    gen = WindowGenerator(tiny_model, context_frames, SamplingParams(), seed=3)
    spy, prompts = _spy_generate(tiny_model.lm)
    monkeypatch.setattr(tiny_model.lm, "generate", spy)
    emitted = []
    for _ in range(4):
        codes = gen.next_stride("lofi", stride_frames)
        assert codes.shape == (1, 4, stride_frames)
        emitted.append(codes)
    assert prompts[0] is None  # the first stride starts from nothing
    for n in range(1, 4):
        history = torch.cat(emitted[:n], dim=-1)
        expected = history[..., -context_frames:]
        assert torch.equal(prompts[n], expected), f"stride {n} was not prompted by the token tail"
    # Memory stays bounded: only the context is kept.
    assert gen.context.shape[-1] == context_frames


def test_same_seed_same_tokens_other_seed_other_tokens(tiny_model):
    def run(seed):
        gen = WindowGenerator(tiny_model, 20, SamplingParams(), seed=seed)
        return torch.cat([gen.next_stride("jazz", 15) for _ in range(3)], dim=-1)
    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_zero_context_means_independent_strides(tiny_model, monkeypatch):
    gen = WindowGenerator(tiny_model, 0, SamplingParams(), seed=1)
    spy, prompts = _spy_generate(tiny_model.lm)
    monkeypatch.setattr(tiny_model.lm, "generate", spy)
    gen.next_stride("a", 10)
    gen.next_stride("a", 10)
    assert prompts == [None, None]
