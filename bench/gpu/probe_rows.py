#!/usr/bin/env python3
"""Probe (issue 12, CUDA graphs for several padded batch sizes): are a row's results on the GPU
independent of how many rows share the GEMM? If the first two rows of x @ W^T are bitwise the same
at every row count, a station's tokens would not depend on the padded batch size it runs in.

    python bench/gpu/probe_rows.py
"""
import torch

torch.manual_seed(0)
for dtype in (torch.bfloat16, torch.float16):
    for out_features, in_features in ((3072, 1024), (1024, 4096), (8192, 1024)):
        w = torch.randn(out_features, in_features, device="cuda", dtype=dtype) * 0.02
        first = torch.randn(2, in_features, device="cuda", dtype=dtype)
        reference = None
        same = []
        for rows in (2, 4, 8, 16, 32, 64, 96, 128):
            x = torch.cat([first, torch.randn(rows - 2, in_features, device="cuda", dtype=dtype)])
            y = (x @ w.T)[:2]
            reference = y if reference is None else reference
            same.append((rows, torch.equal(y, reference)))
        print(dtype, (out_features, in_features), " ".join(f"{r}:{'=' if s else 'DIFF'}" for r, s in same))
