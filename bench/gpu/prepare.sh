#!/bin/bash
# Builds .devsite/ (git-ignored) for a GPU machine whose Python has torch, transformers and numpy
# but not audiocraft's other dependencies: the pure-Python packages are copied from this
# checkout's .venv, and bench/gpu/site adds inert stand-ins for the import-time-only ones
# (spaCy, PyAV, librosa, soundfile, soxr, sounddevice; a minimal xFormers). Then, on that machine,
# from the repository root:  bash bench/gpu/run.sh   (with .devsite carried along).
set -euo pipefail
cd "$(dirname "$0")/../.."
site=$(ls -d .venv/lib/python3*/site-packages)
rm -rf .devsite && mkdir -p .devsite
for p in audiocraft julius omegaconf hydra antlr4 num2words docopt.py flashy dora colorlog \
         retrying.py treetable submitit pyloudnorm fast_musicgen; do
  cp -r "$site/$p" .devsite/
done
cp -r bench/gpu/site/. .devsite/
find .devsite -name __pycache__ -prune -exec rm -rf {} +
grep -qx "/.devsite/" .git/info/exclude 2>/dev/null || echo "/.devsite/" >> .git/info/exclude
du -sh .devsite
