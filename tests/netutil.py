"""Helpers for the network tests: a real server.py process on loopback."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import typing as tp
import urllib.request

from engine.net import protocol

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SR = 32000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    """server.py in the background; its stdout (the played program, s16le) is collected. Waits
    are on events: the reader threads notify `changed` whenever a log line or audio arrives."""

    def __init__(self, *args: str, port: int | None = None, stdout: bool = True, **popen):
        self.port = port or free_port()
        self.stderr_lines: list[str] = []
        self.program = bytearray()
        self.stdout_closed = False
        self.changed = threading.Condition()
        cmd = [sys.executable, os.path.join(ROOT, "server.py"), "--model", "tiny", "--no-play",
               *(["--stdout"] if stdout else []), "--port", str(self.port), *args]
        env = dict(popen.pop("env", os.environ), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, **popen)
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        self.wait_for_log("buffered; playback starts", timeout=120)

    def _read_stdout(self) -> None:
        while chunk := self.proc.stdout.read1(65536):
            with self.changed:
                self.program.extend(chunk)
                self.changed.notify_all()
        with self.changed:
            self.stdout_closed = True
            self.changed.notify_all()

    def _read_stderr(self) -> None:
        for line in iter(self.proc.stderr.readline, b""):
            with self.changed:
                self.stderr_lines.append(line.decode(errors="replace"))
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    @property
    def log(self) -> str:
        return "".join(self.stderr_lines)

    def _wait(self, done, what: str, timeout: float) -> None:
        with self.changed:
            finished = self.changed.wait_for(lambda: done() or self.proc.poll() is not None, timeout)
            if done():
                return
        if finished:
            raise AssertionError(f"server exited ({self.proc.poll()}):\n{self.log[-3000:]}")
        raise AssertionError(f"{what} not seen in {timeout} s:\n{self.log[-3000:]}")

    def wait_for_log(self, text: str, timeout: float = 30, count: int = 1) -> None:
        """Until `text` has been logged `count` times in all."""
        self._wait(lambda: self.log.count(text) >= count, repr(text), timeout)

    def wait_for_program(self, n_bytes: int, timeout: float = 30) -> None:
        """Until at least `n_bytes` of the played program have come out on stdout."""
        self._wait(lambda: len(self.program) >= n_bytes, f"{n_bytes} bytes of program", timeout)

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

    def terminate_and_wait(self, timeout: float = 60) -> int:
        """SIGTERM, then the exit code once the process has ended and its stdout is drained."""
        self.proc.terminate()
        rc = self.proc.wait(timeout=timeout)
        with self.changed:
            assert self.changed.wait_for(lambda: self.stdout_closed, timeout), "stdout never closed"
        return rc

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


async def receive(url: str, seconds: float, received: tp.Optional[tp.Callable[[int], None]] = None,
                  **connect_kwargs):
    """Connect, return (hello, [(seq, stream_sample, payload)], [status dicts], elapsed).
    `received(n)` is called with the packet count after every packet."""
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
                frame = protocol.parse(message)
                packets.append((frame.seq, frame.stream_sample, frame.payload))
                if received is not None:
                    received(len(packets))
        return hello, packets, statuses, time.monotonic() - started
