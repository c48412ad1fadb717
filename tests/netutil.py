"""Helpers for the network tests: a real server.py process on loopback."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = struct.Struct("<BBHIq")
SR = 32000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    """server.py in the background; its stdout (the played program, s16le) is collected."""

    def __init__(self, *args: str, port: int | None = None):
        self.port = port or free_port()
        self.stderr_lines: list[str] = []
        self.program = bytearray()
        cmd = [sys.executable, os.path.join(ROOT, "server.py"), "--model", "tiny", "--no-play",
               "--stdout", "--port", str(self.port), *args]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        self.wait_for_log("buffered; playback starts", timeout=120)

    def _read_stdout(self) -> None:
        while chunk := self.proc.stdout.read1(65536):
            self.program.extend(chunk)

    def _read_stderr(self) -> None:
        for line in iter(self.proc.stderr.readline, b""):
            self.stderr_lines.append(line.decode(errors="replace"))

    @property
    def log(self) -> str:
        return "".join(self.stderr_lines)

    def wait_for_log(self, text: str, timeout: float = 30, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while self.log.count(text) < count:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited ({self.proc.returncode}):\n{self.log[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not logged in {timeout} s:\n{self.log[-3000:]}")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def status(self) -> dict:
        with urllib.request.urlopen(self.url + "/status", timeout=10) as r:
            return json.loads(r.read())

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


async def receive(url: str, seconds: float, **connect_kwargs):
    """Connect, return (hello, [(seq, stream_sample, payload)], [status dicts], elapsed)."""
    import websockets
    packets, statuses = [], []
    connect_kwargs.setdefault("max_queue", None)  # a client that keeps reading
    async with websockets.connect(url, **connect_kwargs) as ws:
        hello = json.loads(await ws.recv())
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            try:
                message = await asyncio.wait_for(ws.recv(), timeout=max(0.01, seconds - (time.monotonic() - started)))
            except asyncio.TimeoutError:
                break
            if isinstance(message, str):
                statuses.append(json.loads(message))
            else:
                _, _, _, seq, stream_sample = HEADER.unpack_from(message)
                packets.append((seq, stream_sample, message[HEADER.size:]))
        return hello, packets, statuses, time.monotonic() - started
