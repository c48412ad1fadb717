#!/usr/bin/env python3
"""Probe (issue 12, CUDA graphs for several padded batch sizes): which of the decode step's ops
give the first rows bitwise the same results however many rows share the call? Every op of the
step at musicgen-small's and -large's shapes: the linears as mm, as addmm with the residual as C
and with the GELU epilogue, the self-attention over the cache under per-row masks, the
cross-attention over padded text, the layer norm. A station's tokens do not depend on the padded
batch size only where every op prints "=" at every row count.

    python bench/gpu/probe_rows.py
"""
import torch
import torch.nn.functional as F

ROWS = (2, 4, 8, 16, 32, 64, 128)


def check(name, op, make_rows):
    """op(x) for x of each row count (the first two rows always the same) → '=' or 'DIFF' per count."""
    first = make_rows(2)
    reference, marks = None, []
    for rows in ROWS:
        x = [torch.cat([a, b]) for a, b in zip(first, make_rows(rows - 2))] if rows > 2 else first
        y = op(*x)[:2]
        reference = y if reference is None else reference
        marks.append(f"{rows}:{'=' if torch.equal(y, reference) else 'DIFF'}")
    print(f"{name:<44} {' '.join(marks)}", flush=True)


def main() -> None:
    ops(reduced=True)
    # With split-K's partial sums reduced in fp32 (not bf16): does cuBLAS then keep rows alike?
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    ops(reduced=False)


def ops(reduced: bool) -> None:
    torch.manual_seed(0)
    dtype, device = torch.bfloat16, "cuda" if torch.cuda.is_available() else "cpu"
    print(f"# {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}, torch {torch.__version__}, bf16, "
          f"bf16 reduced-precision reductions {'allowed' if reduced else 'off'}")

    def randn(*shape):
        return torch.randn(*shape, device=device, dtype=dtype)
    for D, H in ((1024, 16), (2048, 32)) if reduced else ((1024, 16),):
        for out_features, in_features in ((3 * D, D), (D, D), (4 * D, D), (D, 4 * D), (4 * 2048, D)):
            w = randn(out_features, in_features) * 0.02
            bias = torch.zeros(out_features, device=device, dtype=dtype)
            shape = f"D={D} {out_features}x{in_features}"
            check(f"mm {shape}", lambda x: x @ w.T, lambda r: [randn(r, in_features)])
            check(f"addmm(residual) {shape}", lambda c, x: torch.addmm(c, x, w.T),
                  lambda r: [randn(r, out_features), randn(r, in_features)])
            check(f"addmm+gelu {shape}", lambda x: torch._addmm_activation(bias, x, w.T, use_gelu=True),
                  lambda r: [randn(r, in_features)])
        positions, text = 1120, 64
        g, b = randn(D), randn(D)
        check(f"layer_norm D={D}", lambda x: F.layer_norm(x, (D,), g, b, 1e-5), lambda r: [randn(r, 1, D)])
        keys, values = randn(128, H, positions, 64), randn(128, H, positions, 64)

        def self_attention(q, mask):
            B = q.shape[0]
            return F.scaled_dot_product_attention(q, keys[:B], values[:B], attn_mask=mask)

        def masks(r, length=positions):
            keep = torch.arange(length, device=device).view(1, -1) <= torch.randint(1, length, (r, 1), device=device)
            return torch.where(keep, 0.0, float("-inf")).to(dtype).view(r, 1, 1, length)
        check(f"self-attention D={D} (additive row masks)", self_attention, lambda r: [randn(r, H, 1, 64), masks(r)])
        if device == "cuda":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            def efficient(q, mask):
                with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
                    return self_attention(q, mask)
            check(f"self-attention D={D}, memory-efficient kernel", efficient, lambda r: [randn(r, H, 1, 64), masks(r)])

            def matmuls(q, mask):  # two batched GEMMs around a softmax
                B = q.shape[0]
                scores = torch.matmul(q, keys[:B].transpose(-1, -2)) * 64 ** -0.5 + mask
                return torch.matmul(torch.softmax(scores.float(), dim=-1).to(dtype), values[:B])
            check(f"self-attention D={D}, matmul-softmax-matmul", matmuls, lambda r: [randn(r, H, 1, 64), masks(r)])
            for name, op in (("cuDNN (default)", self_attention), ("memory-efficient", efficient),
                             ("matmul-softmax-matmul", matmuls)):
                timings = []
                for rows in (2, 8, 64):
                    q, mask = randn(rows, H, 1, 64), masks(rows)
                    for _ in range(3):
                        op(q, mask)
                    torch.cuda.synchronize()
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    for _ in range(50):
                        op(q, mask)
                    end.record()
                    torch.cuda.synchronize()
                    timings.append(f"{rows} rows {1000 * start.elapsed_time(end) / 50:.1f} us")
                print(f"  self-attention D={D}, {name}: {', '.join(timings)} per call", flush=True)
        ck, cv = randn(128, H, text, 64), randn(128, H, text, 64)
        check(f"cross-attention D={D} (padded text)",
              lambda q, mask: F.scaled_dot_product_attention(q, ck[:q.shape[0]], cv[:q.shape[0]], attn_mask=mask),
              lambda r: [randn(r, H, 1, 64), masks(r, text)])


if __name__ == "__main__":
    main()
