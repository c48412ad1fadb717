#!/bin/bash
# On the GPU machine, from the repository root, after bench/gpu/prepare.sh here (with .devsite
# carried along, and .baseline/engine for the "before" step). In priority order, each step under its
# own time limit so that one slow step cannot take the others' time: the CUDA tests, the decode
# step before and now (bench/gpu/probe_step.py: fused epilogues, padded batch sizes), the engine
# beside its peers (fast-musicgen, transformers, audiocraft); with FULL=1 also stations against
# count, the prompt-change latency, the large shape's stations, the torch.compile probe, the full
# side-by-side engine bench and the step profiles. Results go to $OUT (or ./out).
export PYTHONPATH=$PWD/.devsite:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
step() {  # step SECONDS FILE COMMAND...: run COMMAND for at most SECONDS, its output into $OUT/FILE
  local seconds=$1 file=$2; shift 2
  echo "== $file: $*"; local started=$SECONDS
  timeout "$seconds" "$@" > "$OUT/$file" 2>&1; echo "== $file: exit $? after $((SECONDS - started)) s"
  grep -v "INFO\|Warning\|warn(" "$OUT/$file" | tail -${TAIL:-12}
}
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,memory.total --format=csv,noheader
step ${T_TESTS:-90} pytest.txt python3 -m pytest -q -p no:cacheprovider tests/test_fastlm_cuda.py
if [ -d .baseline/engine ]; then  # the previous commit's engine (git archive HEAD engine | tar -x -C .baseline)
  step ${T_BEFORE:-45} step_before.txt python3 bench/gpu/probe_step.py --engine .baseline --variants default
fi
step ${T_STEP:-100} step_small.txt python3 bench/gpu/probe_step.py --variants unfused,fused,split --batch 1,2,4,8,16,32,64
step ${T_PEERS:-140} peers_small.txt python3 bench/bench_engine.py --device cuda --dtypes bf16 --steps 100 \
  --methods engine,fast-musicgen,transformers,extend
[ -n "$FULL" ] || exit 0
step ${T_SMALL:-120} stations_small.txt python3 bench/bench_stations.py --device cuda --model random-small \
  --counts 1,8,16,32,48 --separate 1,4
step 80 cutin_small.txt python3 bench/bench_cutin.py --device cuda --model random-small --changes 6 --timeout 60
step 120 stations_large.txt python3 bench/bench_stations.py --device cuda --model random-large \
  --counts 1,4,8,12 --separate 1,2
step 100 compile_small.txt python3 bench/gpu/probe_compile.py --model random-small
step 300 bench_small.txt python3 bench/bench_engine.py --device cuda --dtypes bf16,bf16/eager,fp16
step 200 bench_large.txt python3 bench/bench_engine.py --device cuda --model random-large --dtypes bf16
for m in random-small random-large; do
  step 100 profile_$m.txt python3 bench/profile_step.py --device cuda --model $m --dtype bf16 --context 2 --steps 100
done
