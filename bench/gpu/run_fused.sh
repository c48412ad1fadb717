#!/bin/bash
# On the GPU machine (after bench/gpu/prepare.sh here, .devsite carried along), the fused step's
# checks in priority order: the CUDA tests; the captured single-station step on torch's ops against
# the fused Triton step (the default) and other attention cuts (probe_step.py); the batched step
# per padded size with its bitwise check; the engine beside fast-musicgen (sampling included);
# the large shape. SWEEP=1 first sweeps the GEMV launch sizes (probe_gemv.py). Results: $OUT.
export PYTHONPATH=$PWD/.devsite:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
step() {  # step SECONDS FILE COMMAND...: COMMAND for at most SECONDS, its output into $OUT/FILE
  local seconds=$1 file=$2; shift 2
  timeout "$seconds" "$@" > "$OUT/$file" 2>&1; echo "== $file: exit $?"
  grep -v "INFO\|Warning\|warn(\|next " "$OUT/$file" | tail -${TAIL:-10}
}
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
if [ -n "$SWEEP" ]; then
  step 150 gemv_small.txt python3 bench/gpu/probe_gemv.py --dim 1024 --block-n 2,4,8 --block-k 1024,2048,4096 --warps 4,8
fi
step 100 pytest.txt python3 -m pytest -q -x -p no:cacheprovider tests/test_fastlm_cuda.py
step 80 step_small.txt python3 bench/gpu/probe_step.py --variants ${VARIANTS:-fused,default,span32x32,span128x128}
step 90 batch_small.txt python3 bench/gpu/probe_step.py --variants default --batch 1,2,4,8,16,32,64
step 100 engine_small.txt python3 bench/bench_engine.py --device cuda --dtypes bf16 --steps 100 --methods engine,fast-musicgen
step 90 step_large.txt python3 bench/gpu/probe_step.py --model random-large --variants fused,default --batch 1,8,16
