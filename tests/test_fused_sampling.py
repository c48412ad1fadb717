"""The CUDA top-k sampler (engine/lm/fused_sampling.py), run by Triton's interpreter on CPU: given
the same uniforms, it draws the token that guidance, the top k, the softmax at the temperature and
the inverse CDF give, computed in float64 by sorting (samplingref.py, the algorithm of the CPU's
native sampler), ties at equal values going to the lower entry. (On CUDA, sampling.sample uses it:
tests/test_fastlm_cuda.py.)"""
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import torch
    from engine.lm.fused_sampling import sample_top_k
    from samplingref import sampling_cases, top_k_inverse_cdf as reference

    same = total = 0
    for logits, k, temperature, uniforms in sampling_cases():
        got = sample_top_k(logits, 3.0, temperature, k, uniforms)
        assert got.dtype == torch.long and got[0].item() == 1, got
        same += int((got == reference(logits, 3.0, temperature, k, uniforms)).sum())
        total += 4
    assert same >= total - 1, (same, total)  # (fp32 against float64 sums: a draw on a boundary may differ)
    print("ok", same, total)
""")


def test_cuda_sampler_draws_the_top_k_inverse_cdf_token():
    path = os.pathsep.join([ROOT, os.path.join(ROOT, "tests"), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=path)
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok")
