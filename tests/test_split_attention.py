"""The batched CUDA step's self-attention (engine/lm/split_attention.py), run by Triton's
interpreter on CPU: the attention SDPA computes under the same masks, and a row's result the same
bits alone as in a batch. (On CUDA the captured batched step runs it: tests/test_fastlm_cuda.py.)"""
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import torch
    import torch.nn.functional as F
    from engine.lm.split_attention import SPAN_POSITIONS, SplitAttention

    torch.manual_seed(0)
    B, H, P, Dh = 5, 2, 3 * SPAN_POSITIONS + 20, 64
    # positions at and around the span edges, the first and the last cached one
    positions = torch.tensor([0, SPAN_POSITIONS - 1, SPAN_POSITIONS, 2 * SPAN_POSITIONS + 1, P - 1])
    keep = (torch.arange(P).view(1, -1) <= positions.view(-1, 1)).view(B, 1, 1, P)
    qkv = torch.randn(B, 1, 3, H, Dh).permute(2, 0, 3, 1, 4)  # q a view, as the step's
    keys, values = torch.randn(B, H, P, Dh), torch.randn(B, H, P, Dh)
    attention = SplitAttention(B, H, P, Dh, keys.device)
    got = attention(qkv[0], keys, values, positions)
    expected = F.scaled_dot_product_attention(qkv[0], keys, values, attn_mask=keep)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    error = (got - expected).abs().max().item()
    assert error < 1e-5, error
    for rows in (1, 2, 4):  # the first rows alone: the same bits as in the batch of 5
        alone = attention(qkv[0][:rows], keys[:rows], values[:rows], positions[:rows])
        assert torch.equal(alone, got[:rows]), rows
    # bf16 (the CUDA step's precision): within its rounding
    half = attention(qkv[0].bfloat16(), keys.bfloat16(), values.bfloat16(), positions)
    assert half.dtype == torch.bfloat16
    assert (half.float() - expected).abs().max().item() < 3e-2
    print("ok", error)
""")


def test_split_attention_is_sdpa_under_masks_and_the_same_alone_as_in_a_batch():
    path = os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])  # keep the caller's packages
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=path)
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok")
