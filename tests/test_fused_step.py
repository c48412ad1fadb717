"""The fused CUDA decode step (engine/lm/fused_step.py, fused_kernels.py), run by Triton's
interpreter on CPU on the tiny model in fp32: its logits and the keys and values it writes into
the cache are the torch step's, with the cross-attention folded (a short prompt) and not (a prompt
of more than FOLD_TEXT_POSITIONS text tokens), through a morph between two weighted prompts, and
after prompt changes (the folded tensors replaced only when their shape changes). On CUDA the
captured step runs it: tests/test_fastlm_cuda.py."""
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import warnings
    import torch
    from engine.models.load import load_model
    from engine.lm.fused_kernels import Blocks
    from engine.lm.fused_step import FOLD_TEXT_POSITIONS
    from engine.lm.generate import pattern_sequence
    from engine.lm.model import FastLM

    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    model = load_model("tiny", device="cpu", seed=0)
    lm = model.lm
    torch_step = FastLM(lm, max_frames=90, dtype="fp32", kernels="graph", fused_step=False)
    fused = FastLM(lm, max_frames=90, dtype="fp32", kernels="graph")
    assert torch_step._fused is None and fused._fused is not None
    # wide launches: fewer programs for the interpreter to run (the math is the same)
    fused._fused.blocks = {lin.shape: Blocks(n=256, k=256) for lin in [fused.head] + list(fused.layers[0].linears())}
    codes = torch.randint(0, lm.card, (lm.num_codebooks, 60))
    sequence = pattern_sequence(torch_step, codes)

    def attributes(*texts):
        return model._prepare_tokens_and_attributes(list(texts), None)[0]

    def check(prompts, weights_of=None, steps=3, start=20):
        for fast in (torch_step, fused):
            fast.set_conditions(prompts, None if weights_of is None else weights_of(start))
            fast.prefill(sequence[:, :start].unsqueeze(0).expand(2, -1, -1))
        worst = 0.0
        for position in range(start, start + steps):
            if weights_of is not None:
                for fast in (torch_step, fused):
                    fast.mix_conditions(weights_of(position))
            expected = torch_step.step(sequence[:, position], position).clone()
            got = fused.step(sequence[:, position], position)
            worst = max(worst, ((got - expected).norm() / expected.norm()).item())
            assert torch.allclose(fused.cache.kv[..., :position + 1, :], torch_step.cache.kv[..., :position + 1, :],
                                  atol=1e-5), position
        assert worst < 1e-5, worst
        return fused._fused.padded

    with torch.inference_mode():
        assert check(attributes("lofi hip hop")) == 4  # 3 text tokens, folded (padded to 4)
        assert not fused._fused.conditions_changed()  # the same prompt: nothing refolded
        long = " ".join(["warm"] * (FOLD_TEXT_POSITIONS + 8))
        assert check(attributes(long)) == 0  # not folded: the projections and SDPA over the text
        morph = attributes("jazz", "slow ambient drone with rain")
        assert check(morph, lambda position: (1 - (position - 20) / 4, (position - 20) / 4), steps=4) > 0
        bank = fused._fused._bank[0]
        assert bank.shape[0] == 2  # the two prompts folded once; the steps only mixed them
    print("ok")
""")


def test_fused_step_is_the_torch_step_folded_unfolded_and_through_a_morph():
    path = os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])  # keep the caller's packages
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=path)
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")
