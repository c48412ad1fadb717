#!/usr/bin/env bash
# Set up from nothing on Debian with Python 3.11 (into .venv/), then start the radio on the tiny
# offline model. `bash setup.sh --no-run` only installs.
set -euo pipefail
cd "$(dirname "$0")"

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
if ! ldconfig -p 2>/dev/null | grep -q libportaudio.so.2 || ! command -v g++ >/dev/null; then
  echo "setup: installing libportaudio2 (the sound device) and g++ (the CPU kernels)"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq libportaudio2 g++ >/dev/null
fi

PYTHON="${PYTHON:-python3.11}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
echo "setup: installing torch and the pinned dependencies (several GB the first time)"
.venv/bin/python -m pip install -q -r requirements.txt -r requirements-dev.txt
.venv/bin/python -m pip install -q --no-deps -r requirements-nodeps.txt
.venv/bin/python -c "import torch, audiocraft.models, soundfile"
echo "setup: building the native CPU kernels (about half a minute, once; skipped without AVX-512)"
.venv/bin/python -c "from engine.lm.kernels import load_cpu_kernels; load_cpu_kernels()"
echo "setup: done"

if [ "${1:-}" != "--no-run" ]; then
  echo "setup: starting the radio on the tiny offline model (noise, not music); Ctrl-C stops it"
  exec .venv/bin/python server.py --model tiny
fi
