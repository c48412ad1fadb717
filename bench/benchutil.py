"""What the network benches share: a tiny-model station started as `server.py` on a free port,
and its /status."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import typing as tp
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status(port: int, timeout: float = 30.0) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=timeout) as r:
        return json.loads(r.read())


def start_station(*args: str, startup_seconds: float = 120.0) -> tp.Tuple[subprocess.Popen, int, dict]:
    """`server.py --model tiny --no-play ARGS` on a free port, once it plays: (process, port,
    its first /status). Raises SystemExit with its log when it does not start."""
    port = free_port()
    cmd = [sys.executable, os.path.join(ROOT, "server.py"), "--model", "tiny", "--no-play", "--port", str(port),
           "--seed", "1", "--log-level", "WARNING", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + startup_seconds
    while True:
        try:
            first = status(port)
            if first["played_seconds"] > 0:
                return proc, port, first
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"server did not start: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.2)
