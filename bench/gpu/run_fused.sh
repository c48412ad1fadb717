#!/bin/bash
# On the GPU machine (after bench/gpu/prepare.sh here, .devsite carried along): the fused step's
# GEMV kernels swept against cuBLAS at musicgen-small's shapes (probe_gemv.py), the captured step
# today / fused / fused with the swept launch sizes and attention spans (probe_step.py), then the
# CUDA tests. LARGE=1 adds the large shape. Results go to $OUT (or ./out).
export PYTHONPATH=$PWD/.devsite:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
timeout ${T_GEMV:-150} python3 bench/gpu/probe_gemv.py --dim 1024 --block-n ${BLOCK_N:-2,4,8} \
  --block-k ${BLOCK_K:-1024,2048,4096} --warps ${WARPS:-4,8} --out "$OUT/blocks_small.json" > "$OUT/gemv_small.txt" 2>&1
echo "== gemv: exit $?"; grep -v "next" "$OUT/gemv_small.txt"
timeout ${T_STEP:-120} python3 bench/gpu/probe_step.py --variants ${VARIANTS:-fused,triton,tuned,span64x32,span64x64,span256x64} \
  --blocks "$OUT/blocks_small.json" > "$OUT/step_small.txt" 2>&1
echo "== step: exit $?"; grep -v "INFO\|warn" "$OUT/step_small.txt" | tail -7
timeout ${T_TESTS:-120} python3 -m pytest -q -x -p no:cacheprovider tests/test_fastlm_cuda.py > "$OUT/pytest.txt" 2>&1
echo "== tests: exit $?"; tail -4 "$OUT/pytest.txt"
[ -n "$LARGE" ] || exit 0
timeout 150 python3 bench/gpu/probe_gemv.py --dim 2048 --block-n 2,4,8 --block-k 1024,2048 --warps 4,8 \
  --out "$OUT/blocks_large.json" > "$OUT/gemv_large.txt" 2>&1; echo "== gemv large: exit $?"; grep -v next "$OUT/gemv_large.txt"
timeout 120 python3 bench/gpu/probe_step.py --model random-large --variants fused,tuned \
  --blocks "$OUT/blocks_large.json" > "$OUT/step_large.txt" 2>&1
echo "== step large: exit $?"; grep -v "INFO\|warn" "$OUT/step_large.txt" | tail -4
