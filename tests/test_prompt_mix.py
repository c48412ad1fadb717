"""Weighted prompts and morphs, mixed inside the decode step (lm/conditions.py)."""
import torch

from engine.lm.model import FastLM
from engine.lm.window import PromptMix, SamplingParams, WindowGenerator
from engine.station.steering import Change, Conditions


def strides(tiny_model, conditioning, n=2, frames=30, seed=4):
    gen = WindowGenerator(tiny_model, 40, SamplingParams(), seed=seed)
    return torch.cat([gen.next_stride(conditioning, frames) for _ in range(n)], dim=-1)


def test_one_prompt_of_weight_one_gives_exactly_the_tokens_of_that_prompt(tiny_model):
    from engine.net.control import parse_command
    sampling = SamplingParams()
    single = parse_command({"type": "set_prompt", "prompt": "jazz"}, sampling, "next")
    weighted = parse_command({"type": "set_prompts", "prompts": [{"text": "jazz", "weight": 3}]}, sampling, "next")
    conditions = [change.apply_to(Conditions.single("rock", sampling), 0, 50.0) for change in (single, weighted)]
    assert conditions[0] == conditions[1]
    tokens = [strides(tiny_model, c.conditioning()) for c in conditions]
    assert torch.equal(tokens[0], tokens[1])
    assert torch.equal(tokens[0], strides(tiny_model, "jazz"))


def test_a_mix_is_neither_prompt_and_its_weights_matter(tiny_model):
    a, b = strides(tiny_model, "jazz"), strides(tiny_model, "heavy metal drums")
    half = strides(tiny_model, PromptMix(("jazz", "heavy metal drums"), (0.5, 0.5)))
    assert not torch.equal(half, a) and not torch.equal(half, b)
    # The conditional logits of a mix lie nearer the prompt it weighs more.
    fast = FastLM(tiny_model.lm, max_frames=60, dtype="fp32")
    attributes = tiny_model._prepare_tokens_and_attributes(["jazz", "heavy metal drums"], None)[0]
    tokens = torch.randint(0, 2048, (2, 4, 40), generator=torch.Generator().manual_seed(0))

    def cond_logits(weights):
        fast.set_conditions(attributes, weights)
        with torch.inference_mode():
            return fast.prefill(tokens)[0]
    only_a, only_b, mostly_a = cond_logits([1.0, 0.0]), cond_logits([0.0, 1.0]), cond_logits([0.8, 0.2])
    assert (mostly_a - only_a).norm() < (mostly_a - only_b).norm()
    assert not torch.allclose(only_a, only_b)


def test_a_morph_moves_the_weights_step_by_step_and_monotonically(tiny_model, monkeypatch):
    seen = []
    real_mix = FastLM.mix_conditions

    def spy(self, weights):
        seen.append(tuple(weights))
        return real_mix(self, weights)

    monkeypatch.setattr(FastLM, "mix_conditions", spy)
    gen = WindowGenerator(tiny_model, 40, SamplingParams(), seed=1)
    gen.next_stride("jazz", 30)  # frames 0..29 played with jazz alone
    sampling = SamplingParams()
    morph = Change(prompts=(("heavy metal drums", 1.0),), morph_seconds=1.0)
    conditions = morph.apply_to(Conditions.single("jazz", sampling), frame=30, frame_rate=50.0)
    assert conditions.mix.texts == ("jazz", "heavy metal drums")
    for _ in range(3):  # frames 30..119: the morph runs over 30..79
        gen.next_stride(conditions.conditioning(), 30)
    metal = [w[1] for w in seen]
    assert len(set(metal)) >= 45  # a new mix nearly every step, not one jump at a seam
    assert metal == sorted(metal)  # across stride seams too
    assert all(abs(sum(w) - 1.0) < 1e-9 for w in seen)
    assert metal[0] <= 0.02 and metal[-1] == 1.0  # (the first, 0, goes in with the prompts)
    # Once the morph is over, the new prompt plays alone on the unweighted path.
    assert conditions.mix.settled(80).texts == ("heavy metal drums",)
    assert conditions.mix.single_from(80) == "heavy metal drums"
    status = conditions.describe(55)
    assert [p["text"] for p in status["prompts"]] == ["jazz", "heavy metal drums"]
    assert abs(status["prompts"][1]["weight"] - 0.5) < 1e-9 and status["morph_frames_left"] == 25


def test_the_static_step_reads_the_mix_written_in_place(tiny_model):
    """kernels="graph" (replayed as a CUDA graph on CUDA, run eagerly here) reads the cross
    attention from fixed tensors: the per-step mix must land in them."""
    from engine.lm.generate import generate
    attributes = tiny_model._prepare_tokens_and_attributes(["jazz", "slow ambient drone with rain"], None)[0]

    def weights_at(timestep):
        a = min(1.0, timestep / 40)
        return (1.0 - a, a)
    runs = [generate(FastLM(tiny_model.lm, max_frames=80, dtype="fp32", kernels=kernels), None, attributes, 60,
                     temperature=0, weights_at=weights_at) for kernels in ("eager", "graph")]
    assert torch.equal(runs[0], runs[1])
    still = generate(FastLM(tiny_model.lm, max_frames=80, dtype="fp32"), None, attributes, 60, temperature=0,
                     weights_at=lambda t: (1.0, 0.0))
    assert not torch.equal(runs[0], still)  # the morph changed the tokens
