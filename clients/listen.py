#!/usr/bin/env python3
"""Listen to a MusicGen radio station over its WebSocket.

    python clients/listen.py ws://127.0.0.1:8765/ws                  # plays on the sound device
    python clients/listen.py ws://127.0.0.1:8765/ws --out radio.wav --duration 30
    python clients/listen.py ws://127.0.0.1:8765/ws --codec pcm --out radio.wav

Protocol (see README): a JSON `hello`, then binary messages = 16-byte header (version u8,
codec u8, reserved u16, sequence u32, program sample index i64) + payload (s16le PCM or one raw
Opus packet), and periodic JSON `status` messages.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import queue
import struct
import sys
import threading
import typing as tp
import urllib.parse

import numpy as np

log = logging.getLogger("listen")
HEADER = struct.Struct("<BBHIq")


class OpusDecoder:
    """Raw Opus packets → float32 frames [n, channels] (PyAV's libopus)."""

    def __init__(self, sample_rate: int, channels: int, opus_head: bytes):
        import av
        self.ctx = av.CodecContext.create("libopus", "r")
        self.ctx.extradata = opus_head
        self.ctx.sample_rate = sample_rate
        self.ctx.layout = "mono" if channels == 1 else "stereo"
        self._av = av
        self.channels = channels

    def decode(self, payload: bytes) -> np.ndarray:
        frames = []
        for frame in self.ctx.decode(self._av.Packet(payload)):
            data = frame.to_ndarray()  # planar [channels, n] or packed [1, n*channels]
            if frame.format.is_planar:
                data = data.T
            else:
                data = data.reshape(-1, self.channels)
            frames.append(data.astype(np.float32) / (32768.0 if data.dtype == np.int16 else 1.0))
        return np.concatenate(frames) if frames else np.zeros((0, self.channels), np.float32)


class Output:
    """Where decoded audio goes: a sound file or the sound device (fed from its own thread)."""

    def __init__(self, out_path: tp.Optional[str], sample_rate: int, channels: int,
                 device: tp.Optional[str]):
        self.sample_rate, self.channels = sample_rate, channels
        self.samples = 0
        self.file = None
        self.queue: "queue.Queue[tp.Optional[np.ndarray]]" = queue.Queue(maxsize=500)
        if out_path:
            import soundfile
            self.file = soundfile.SoundFile(out_path, "w", samplerate=sample_rate, channels=channels,
                                            subtype="PCM_16")
        else:
            import sounddevice
            self.stream = sounddevice.OutputStream(samplerate=sample_rate, channels=channels,
                                                   dtype="float32", device=device, latency="high")
            self.stream.start()
            self.thread = threading.Thread(target=self._play, daemon=True)
            self.thread.start()

    def _play(self) -> None:
        while (block := self.queue.get()) is not None:
            self.stream.write(block)

    def write(self, frames: np.ndarray) -> None:
        self.samples += frames.shape[0]
        if self.file is not None:
            self.file.write(frames)
        else:
            try:
                self.queue.put_nowait(frames)
            except queue.Full:
                log.warning("sound device is not keeping up; dropping %d samples", frames.shape[0])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        else:
            self.queue.put(None)
            self.thread.join(timeout=5)
            self.stream.stop()
            self.stream.close()


async def listen(url: str, out_path: tp.Optional[str], duration: tp.Optional[float],
                 device: tp.Optional[str]) -> int:
    import websockets
    output = None
    retry = 0
    try:
        while True:
            try:
                async with websockets.connect(url, max_size=2**20) as ws:
                    hello = json.loads(await ws.recv())
                    if hello.get("type") != "hello":
                        log.error("not a MusicGen radio station: first message was %r", hello)
                        return 2
                    retry = 0
                    rate, channels = hello["sample_rate"], hello["channels"]
                    log.info("tuned in: %s (%s, %d Hz, %d ch): %r", hello["station"]["model"],
                             hello["codec"], rate, channels, hello["station"]["prompt"])
                    if output is None:
                        output = Output(out_path, rate, channels, device)
                    decoder = (OpusDecoder(rate, channels, base64.b64decode(hello["opus_head"]))
                               if hello["codec"] == "opus" else None)
                    async for message in ws:
                        if isinstance(message, str):
                            status = json.loads(message)
                            if status.get("type") == "status":
                                log.debug("status: %s", status)
                            continue
                        payload = message[HEADER.size:]
                        if decoder is not None:
                            frames = decoder.decode(payload)
                        else:
                            frames = (np.frombuffer(payload, "<i2").astype(np.float32) / 32768.0
                                      ).reshape(-1, channels)
                        if duration is not None:
                            frames = frames[:max(0, int(duration * rate) - output.samples)]
                        output.write(frames)
                        if duration is not None and output.samples >= int(duration * rate):
                            return 0
                    log.warning("station closed the connection (%s %s)", ws.close_code, ws.close_reason)
            except (OSError, websockets.exceptions.WebSocketException) as err:
                log.warning("station unreachable (%s)", err)
            retry += 1
            delay = min(15, 2 ** retry)
            log.info("reconnecting in %d s", delay)
            await asyncio.sleep(delay)
    finally:
        if output is not None:
            output.close()
            log.info("received %.1f s of audio", output.samples / output.sample_rate)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url", help="the station's WebSocket, e.g. ws://127.0.0.1:8765/ws")
    p.add_argument("--codec", choices=["opus", "pcm"], default="opus")
    p.add_argument("--out", help="write to this .wav/.flac instead of playing")
    p.add_argument("--duration", type=float, help="stop after this many seconds of audio")
    p.add_argument("--audio-device", help="sound device number or name")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    parts = urllib.parse.urlsplit(args.url)
    if parts.scheme not in ("ws", "wss"):
        p.error("the URL must start with ws:// or wss://")
    query = dict(urllib.parse.parse_qsl(parts.query))
    query["codec"] = args.codec
    url = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))
    try:
        return asyncio.run(listen(url, args.out, args.duration, args.audio_device))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
