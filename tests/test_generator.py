import pytest
import torch

from engine.lm.window import SamplingParams, WindowGenerator


def _spy_generate(monkeypatch, gen, fast=True):
    """Record the prompt codes each stride is given (the fast decoder's `generate` or
    audiocraft's `LMModel.generate`)."""
    prompts = []
    if fast:
        import engine.lm.window as window
        real = window.generate

        def spy(model, prompt, *args, **kwargs):
            prompts.append(None if prompt is None else prompt.clone())
            return real(model, prompt, *args, **kwargs)
        monkeypatch.setattr(window, "generate", spy)
    else:
        real_lm = gen.lm.generate

        def spy(prompt, *args, **kwargs):
            prompts.append(None if prompt is None else prompt.clone())
            return real_lm(prompt, *args, **kwargs)
        monkeypatch.setattr(gen.lm, "generate", spy)
    return prompts


@pytest.mark.parametrize("fast", [True, False], ids=["fast-decoder", "audiocraft-loop"])
def test_each_stride_is_prompted_by_the_last_context_of_emitted_tokens(tiny_model, monkeypatch, fast):
    context_frames, stride_frames = 40, 25
    gen = WindowGenerator(tiny_model, context_frames, SamplingParams(), seed=3, fast=fast)
    assert (gen.fast is not None) == fast
    prompts = _spy_generate(monkeypatch, gen, fast)
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


@pytest.mark.parametrize("fast", [True, False], ids=["fast-decoder", "audiocraft-loop"])
def test_same_seed_same_tokens_other_seed_other_tokens(tiny_model, fast):
    def run(seed):
        gen = WindowGenerator(tiny_model, 20, SamplingParams(), seed=seed, fast=fast)
        return torch.cat([gen.next_stride("jazz", 15) for _ in range(3)], dim=-1)
    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("fast", [True, False])
def test_warm_up_leaves_the_stream_unchanged(tiny_model, fast):
    """The producer's throwaway warm-up stride changes no context, stride count or seed."""
    def run(warm: bool):
        gen = WindowGenerator(tiny_model, 20, SamplingParams(), seed=3, fast=fast)
        strides = [gen.next_stride("jazz", 15)]
        if warm:
            assert gen.warm_up("rock", 5).shape == (1, tiny_model.lm.num_codebooks, 5)
        strides.append(gen.next_stride("jazz", 15))
        return torch.cat(strides, dim=-1), gen.stride_index, gen.frames_emitted
    cold, warm = run(False), run(True)
    assert torch.equal(cold[0], warm[0]) and cold[1:] == warm[1:] == (2, 30)


def test_zero_context_means_independent_strides(tiny_model, monkeypatch):
    gen = WindowGenerator(tiny_model, 0, SamplingParams(), seed=1)
    prompts = _spy_generate(monkeypatch, gen)
    gen.next_stride("a", 10)
    gen.next_stride("a", 10)
    assert prompts == [None, None]
