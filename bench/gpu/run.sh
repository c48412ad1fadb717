#!/bin/bash
# On the GPU machine, from the repository root, after bench/gpu/prepare.sh here (with .devsite
# carried along). In priority order, each step under its own time limit so that one slow step
# cannot take the others' time: the CUDA tests, stations against count (small, large shapes), the
# prompt-change latency, the step compiled by torch.compile against the captured one, the engine
# beside its peers (fast-musicgen, transformers, audiocraft), then the full side-by-side engine
# bench and the step profiles. Results go to $OUT (or ./out).
export PYTHONPATH=$PWD/.devsite:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
step() {  # step SECONDS FILE COMMAND...: run COMMAND for at most SECONDS, its output into $OUT/FILE
  local seconds=$1 file=$2; shift 2
  echo "== $file: $*"; local started=$SECONDS
  timeout "$seconds" "$@" > "$OUT/$file" 2>&1; echo "== $file: exit $? after $((SECONDS - started)) s"
  grep -v "INFO\|Warning\|warn(" "$OUT/$file" | tail -${TAIL:-12}
}
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,memory.total --format=csv,noheader
step ${T_TESTS:-120} pytest.txt python3 -m pytest -q -p no:cacheprovider tests/test_fastlm_cuda.py
step ${T_SMALL:-130} stations_small.txt python3 bench/bench_stations.py --device cuda --model random-small \
  --counts 1,8,16,32,48 --separate 1,4,8
step ${T_CUTIN:-80} cutin_small.txt python3 bench/bench_cutin.py --device cuda --model random-small --changes 6 \
  --timeout 60
step ${T_LARGE:-120} stations_large.txt python3 bench/bench_stations.py --device cuda --model random-large \
  --counts 1,4,8,12 --separate 1,2
step ${T_COMPILE:-100} compile_small.txt python3 bench/gpu/probe_compile.py --model random-small
step ${T_PEERS:-240} peers_small.txt python3 bench/bench_engine.py --device cuda --dtypes bf16 --steps 200 \
  --methods engine,fast-musicgen,transformers,extend
[ -n "$FULL" ] || exit 0
step 300 bench_small.txt python3 bench/bench_engine.py --device cuda --dtypes bf16,bf16/eager,fp16
step 200 bench_large.txt python3 bench/bench_engine.py --device cuda --model random-large --dtypes bf16
for m in random-small random-large; do
  step 100 profile_$m.txt python3 bench/profile_step.py --device cuda --model $m --dtype bf16 --context 2 --steps 100
done
