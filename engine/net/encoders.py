"""Encode once, fan out: one worker thread per codec reads the played program and publishes
packets stamped with program time into its packet ring(s). Every listener of that codec gets the
same bytes.

Codecs (all through PyAV, whose wheels carry libopus and libmp3lame):
* `pcm`  – s16le, 60 ms packets at the model's rate;
* `opus` – libopus at 48 kHz (resampled by libswresample), 60 ms packets, plus the same packets as
  Ogg pages for `/stream.opus`;
* `mp3`  – libmp3lame at the model's rate, one frame per packet, no bit reservoir so that a
  listener can start on any frame.
"""
from __future__ import annotations

import fractions
import logging
import random
import threading
import typing as tp

import numpy as np

from ..rt.pcm import float_to_s16
from ..rt.ring import PcmRing, RingReader
from .ogg import ogg_page, opus_header_pages
from .packets import PacketRing

log = logging.getLogger(__name__)

OPUS_RATE = 48000
#: Packet length: 60 ms (Opus's longest usual frame) keeps messages per listener at ~17/s, which is
#: what lets one process feed a thousand listeners; a radio does not need lower latency.
PACKET_SECONDS = 0.06


class Codec:
    """Turns blocks of program frames into packets: (payload, start sample, duration samples)."""

    name = "codec"

    def __init__(self, sample_rate: int, channels: int):
        self.sample_rate = sample_rate
        self.channels = channels

    def encode(self, frames: np.ndarray, start_sample: int) -> tp.List[tp.Tuple[bytes, int, int]]:
        raise NotImplementedError


class PcmCodec(Codec):
    name = "pcm"

    def __init__(self, sample_rate: int, channels: int):
        super().__init__(sample_rate, channels)
        self.frame_samples = int(sample_rate * PACKET_SECONDS)

    def encode(self, frames, start_sample):
        out = []
        for at in range(0, frames.shape[0], self.frame_samples):
            block = frames[at:at + self.frame_samples]
            out.append((float_to_s16(block).tobytes(), start_sample + at, block.shape[0]))
        return out


class _AvCodec(Codec):
    """A PyAV audio encoder fed with float frames at the model's rate."""

    codec_name = ""
    rate = 0
    av_format = "s16"
    bit_rate = 0

    def __init__(self, sample_rate: int, channels: int, options: tp.Optional[dict] = None):
        super().__init__(sample_rate, channels)
        import av
        self._av = av
        self.layout = "mono" if channels == 1 else "stereo"
        ctx = av.CodecContext.create(self.codec_name, "w")
        ctx.sample_rate = self.rate or sample_rate
        ctx.layout = self.layout
        ctx.format = self.av_format
        ctx.bit_rate = self.bit_rate * channels
        ctx.time_base = fractions.Fraction(1, ctx.sample_rate)
        if options:
            ctx.options = options
        ctx.open()
        self.ctx = ctx
        self.frame_samples_out = ctx.frame_size

    def encode(self, frames, start_sample):
        # PyAV resamples to the codec's rate and cuts frames to its frame size.
        frame = self._av.AudioFrame.from_ndarray(
            np.ascontiguousarray(frames.reshape(1, -1)), format="flt", layout=self.layout)
        frame.sample_rate = self.sample_rate
        frame.time_base = fractions.Fraction(1, self.sample_rate)
        frame.pts = start_sample
        out = []
        for packet in self.ctx.encode(frame):
            rate = self.ctx.sample_rate
            start = (packet.pts or 0) * self.sample_rate // rate
            duration = (packet.duration or self.frame_samples_out) * self.sample_rate // rate
            out.append((bytes(packet), start, duration))
        return out


class OpusCodec(_AvCodec):
    name = "opus"
    codec_name = "libopus"
    rate = OPUS_RATE
    av_format = "s16"
    bit_rate = 64000

    def __init__(self, sample_rate: int, channels: int):
        super().__init__(sample_rate, channels,
                         options={"frame_duration": str(int(PACKET_SECONDS * 1000)), "application": "audio"})

    @property
    def opus_head(self) -> bytes:
        return bytes(self.ctx.extradata)


class Mp3Codec(_AvCodec):
    name = "mp3"
    codec_name = "libmp3lame"
    av_format = "s16p"
    bit_rate = 96000

    def __init__(self, sample_rate: int, channels: int):
        super().__init__(sample_rate, channels, options={"reservoir": "0"})


class EncoderWorker(threading.Thread):
    """Reads the program ring from the live point and publishes packets of one codec.

    It encodes only while someone listens to its codec (`want` / `release`, counted by the
    broadcaster): CPU belongs to generation on small machines. Woken by a first listener, it
    starts a fresh encoder `burst_samples` before the live point (the program ring keeps them),
    so the newcomer gets its burst at once. An encoder that fails is logged and started afresh
    at the live point after a backoff (1 s, doubling to 30 s); its listeners stay connected."""

    def __init__(self, codec: Codec, program: PcmRing, ring: PacketRing, *,
                 ogg_ring: tp.Optional[PacketRing] = None, block_seconds: float = 0.1,
                 burst_samples: int = 0, max_backoff_seconds: float = 30.0):
        super().__init__(name=f"encoder-{codec.name}", daemon=True)
        self.codec = codec
        self.reader = RingReader(program)
        self.start_sample = self.reader.cursor
        self.burst_samples = int(burst_samples)
        self.max_backoff_seconds = max_backoff_seconds
        self.restarts = 0  # encoders started afresh after a failure
        self.idle = True  # nothing to encode until someone listens
        self._demand = 0  # listeners of this codec
        self._demand_lock = threading.Lock()
        self._wake = threading.Event()
        self._published_until = 0  # program samples encoded so far
        self.ring = ring
        self.ogg_ring = ogg_ring
        self.ogg_serial = random.getrandbits(31)
        self._ogg_page_seq = 2  # pages 0 and 1 are the headers
        self._opus_pre_skip = (int.from_bytes(codec.opus_head[10:12], "little")
                               if ogg_ring is not None else 0)
        self.block_samples = int(block_seconds * codec.sample_rate)
        self._stop_event = threading.Event()
        self.error: tp.Optional[BaseException] = None

    @property
    def ogg_headers(self) -> bytes:
        return opus_header_pages(self.ogg_serial, self.codec.opus_head)

    def stop(self) -> None:
        self._stop_event.set()
        self._wake.set()

    def want(self) -> bool:
        """A listener of this codec joins (the network loop); True when the worker was idle: the
        listener then takes the packets published from now on, its burst first."""
        with self._demand_lock:
            self._demand += 1
            was_idle = self.idle
        self._wake.set()
        return was_idle

    def release(self) -> None:
        """A listener of this codec leaves."""
        with self._demand_lock:
            self._demand -= 1

    def health(self) -> dict:
        return {"state": "failed" if self.error is not None else "idle" if self.idle else "encoding",
                "restarts": self.restarts, "error": None if self.error is None else str(self.error)[:200]}

    def _wanted(self) -> tp.Tuple[bool, bool]:
        """(someone listens, the worker wakes from idle now)."""
        with self._demand_lock:
            wanted = self._demand > 0
            waking = wanted and self.idle
            self.idle = not wanted
        return wanted, waking

    def run(self) -> None:
        backoff = 1.0
        while not self._stop_event.is_set():
            try:
                self._encode_loop()
                return
            except Exception as err:  # noqa: BLE001 - an encoder failure must not end the stream
                self.error = err
                log.error("encoder %s failed (%s: %s); starting it afresh in %.0f s", self.codec.name,
                          type(err).__name__, err, backoff)
                if self._stop_event.wait(backoff):
                    return
                backoff = min(self.max_backoff_seconds, backoff * 2)
                self.restarts += 1
                self._fresh_codec(self.reader.ring.written_until)
                self.error = None
                log.info("encoder %s: started afresh (%d restarts)", self.codec.name, self.restarts)

    def _fresh_codec(self, from_sample: int) -> None:
        """A new encoder (no state from before a gap), reading from `from_sample`."""
        self.codec = type(self.codec)(self.codec.sample_rate, self.codec.channels)
        self.reader.cursor = self._published_until = max(from_sample, self.reader.ring.oldest_kept)

    def _resume(self) -> None:
        """Waking: encode from the burst before the live point. When the ring still holds packets
        up to there (it slept less than a burst), the same encoder simply goes on from where it
        stopped, so the packets join without a seam; otherwise a fresh one starts there."""
        burst_from = max(0, self.reader.ring.written_until - self.burst_samples)
        if self._published_until >= burst_from and self._published_until >= self.reader.ring.oldest_kept:
            self.reader.cursor = self._published_until
        else:
            self._fresh_codec(burst_from)

    def _encode_loop(self) -> None:
        overruns = 0
        while not self._stop_event.is_set():
            wanted, waking = self._wanted()
            if not wanted:
                self.reader.cursor = self.reader.ring.written_until  # skip: nobody listens
                if self.reader.ring.closed:
                    return
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            if waking:
                self._resume()
            start = self.reader.cursor
            frames = self.reader.read(self.block_samples)
            if self.reader.overruns != overruns:
                overruns = self.reader.overruns
                log.warning("encoder %s fell behind the live stream and skipped ahead", self.codec.name)
            if frames.shape[0] == 0:
                if self.reader.ring.closed:
                    return
                self._stop_event.wait(0.01)
                continue
            for payload, at, duration in self.codec.encode(frames, start):
                self.ring.publish(at, duration, payload)
                if self.ogg_ring is not None:
                    self._publish_ogg(payload, at, duration)
            self._published_until = self.reader.cursor

    def _publish_ogg(self, payload: bytes, at: int, duration: int) -> None:
        granule = self._opus_pre_skip + (at + duration - self.start_sample) * OPUS_RATE // self.codec.sample_rate
        page = ogg_page(self.ogg_serial, self._ogg_page_seq, max(granule, 0), payload)
        self._ogg_page_seq += 1
        self.ogg_ring.publish(at, duration, page)
