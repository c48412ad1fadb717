#!/bin/bash
# On the GPU machine, from the repository root, after bench/gpu/prepare.sh here: the CUDA tests,
# then the side-by-side bench for musicgen-small's and -large's shapes, then the step profiles.
# Results go to $OUT (or ./out).
export PYTHONPATH=$PWD/.devsite:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
python3 -m pytest -q tests/test_fastlm_cuda.py 2>&1 | tee "$OUT/pytest.txt" | tail -3
python3 bench/bench_engine.py --device cuda --dtypes bf16,bf16/eager,fp16 2>&1 | tee "$OUT/bench_small.txt"
python3 bench/bench_engine.py --device cuda --model random-large --dtypes bf16 2>&1 | tee "$OUT/bench_large.txt"
python3 bench/bench_stations.py --device cuda --model random-small --counts 1,8,16,32,48 --separate 1,4,8 2>&1 \
  | tee "$OUT/bench_stations_small.txt"
python3 bench/bench_stations.py --device cuda --model random-large --counts 1,4,8,12 --separate 1,2 2>&1 \
  | tee "$OUT/bench_stations_large.txt"
for m in random-small random-large; do
  python3 bench/profile_step.py --device cuda --model $m --dtype bf16 --context 2 --steps 100 2>&1 \
    | grep -v "USDT\|ERROR:\|STAGE:" | tee -a "$OUT/profile.txt"
done
