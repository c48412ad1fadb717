"""The network side of the station: encoder workers, their packet rings, and the listeners.

Threads and loop: encoders run in worker threads and publish packets; a publish wakes the asyncio
loop (`call_soon_threadsafe`), where each listener is one small coroutine reading its own cursor
into the packet ring. Nothing on the loop waits on the producer or an encoder. A supervisor task
drops listeners that fall more than `max_lag_seconds` behind the live point.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import typing as tp

from ..rt.ring import PcmRing
from . import protocol
from .encoders import EncoderWorker, Mp3Codec, OpusCodec, PcmCodec
from .packets import Packet, PacketRing

log = logging.getLogger(__name__)

#: Packet ring keys: one per codec, plus Opus packets wrapped as Ogg pages.
RING_KEYS = ("pcm", "opus", "ogg", "mp3")


class ListenerDropped(Exception):
    """The listener fell too far behind; `reason` is sent as the close reason."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclasses.dataclass(eq=False)
class Listener:
    kind: str  # e.g. "ws-opus", "http-mp3": what /status counts
    ring_key: str
    cursor: int  # next packet sequence number to send
    sent_until: int = 0  # program sample index up to which packets were handed to the socket
    dropped: tp.Optional[str] = None
    task: tp.Optional[asyncio.Task] = None
    on_drop: tp.Optional[tp.Callable[[str, int], None]] = None  # (reason, WebSocket close code)


class Broadcaster:
    """Owns the encoders, the packet rings and the set of listeners of one station."""

    def __init__(self, program: PcmRing, sample_rate: int, channels: int, *,
                 burst_seconds: float = 2.0, max_lag_seconds: float = 10.0, ring_seconds: float = 30.0):
        self.sample_rate = sample_rate
        self.channels = channels
        self.burst_samples = int(burst_seconds * sample_rate)
        self.max_lag_samples = int(max_lag_seconds * sample_rate)
        packets = int(ring_seconds * 50) + 64  # enough for packets of 20 ms and longer
        self.rings: tp.Dict[str, PacketRing] = {
            # WebSocket messages are built once per packet, in the encoder thread, for every listener.
            key: PacketRing(packets, framer=protocol.framer(key) if key in protocol.CODEC_IDS else None)
            for key in RING_KEYS}
        self.program = program
        self.opus = OpusCodec(sample_rate, channels)
        burst = self.burst_samples
        self._opus_worker = EncoderWorker(self.opus, program, self.rings["opus"], ogg_ring=self.rings["ogg"],
                                          burst_samples=burst)
        pcm_worker = EncoderWorker(PcmCodec(sample_rate, channels), program, self.rings["pcm"], burst_samples=burst)
        mp3_worker = EncoderWorker(Mp3Codec(sample_rate, channels), program, self.rings["mp3"], burst_samples=burst)
        self.workers = [pcm_worker, self._opus_worker, mp3_worker]
        #: Packet ring → the worker that fills it (encoding only while its rings have listeners).
        self.worker_of = {"pcm": pcm_worker, "opus": self._opus_worker, "ogg": self._opus_worker, "mp3": mp3_worker}
        self.listeners: tp.Set[Listener] = set()
        self._counts: tp.Counter[str] = collections.Counter()  # listeners per kind, kept on join/leave
        self.sent_bytes: tp.Counter[str] = collections.Counter()  # per packet ring, on the loop only
        self.dropped_total = 0
        self.loop: tp.Optional[asyncio.AbstractEventLoop] = None
        self._events: tp.Dict[str, asyncio.Event] = {}
        self._supervisor: tp.Optional[asyncio.Task] = None

    @property
    def ogg_headers(self) -> bytes:
        return self._opus_worker.ogg_headers

    @property
    def opus_head(self) -> bytes:
        return self.opus.opus_head

    # -- lifecycle (start on the loop's thread) ------------------------------------------------
    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._events = {key: asyncio.Event() for key in RING_KEYS}
        for key, ring in self.rings.items():
            ring.listeners.append(lambda key=key: self.loop.call_soon_threadsafe(self._wake, key))
        for worker in self.workers:
            worker.start()
        self._supervisor = asyncio.create_task(self._supervise())

    async def stop(self, reason: str = "the station is shutting down") -> None:
        """Stop the encoders; every listener is dropped with `reason` (WebSocket close 1001)."""
        for worker in self.workers:
            worker.stop()
        if self._supervisor:
            self._supervisor.cancel()
        for listener in list(self.listeners):
            self.drop(listener, reason, protocol.CLOSE_GOING_AWAY)

    def _wake(self, key: str) -> None:
        event = self._events[key]
        self._events[key] = asyncio.Event()
        event.set()

    # -- listeners ---------------------------------------------------------------------------
    def join(self, kind: str, ring_key: str) -> Listener:
        """A new listener at the live point minus the burst."""
        ring = self.rings[ring_key]
        if self.worker_of[ring_key].want():  # its encoder was idle: it encodes the burst (or its rest) now
            burst_from = max(0, self.program.written_until - self.burst_samples)
            start = ring.seq_at_or_after(burst_from)  # packets kept from before it slept, if any
            first = ring.get(start)
            sent_until = first.stream_sample if first is not None else burst_from
        else:
            newest = ring.newest()
            start = ring.next_seq if newest is None else ring.seq_at_or_after(
                newest.stream_sample + newest.duration_samples - self.burst_samples)
            first = ring.get(start)
            # Lag is counted from the first packet it will get (or the live point when none is kept).
            sent_until = first.stream_sample if first is not None else (newest.stream_sample if newest else 0)
        listener = Listener(kind, ring_key, start, sent_until=sent_until)
        self.listeners.add(listener)
        self._counts[kind] += 1
        log.info("listener joined: %s (%d listening)", kind, len(self.listeners))
        return listener

    def leave(self, listener: Listener) -> None:
        if listener in self.listeners:
            self.listeners.discard(listener)
            self.worker_of[listener.ring_key].release()
            self._counts[listener.kind] -= 1
            if not self._counts[listener.kind]:
                del self._counts[listener.kind]
            log.info("listener left: %s%s (%d listening)", listener.kind,
                     f", dropped: {listener.dropped}" if listener.dropped else "", len(self.listeners))

    async def packets(self, listener: Listener) -> tp.AsyncIterator[Packet]:
        """The listener's packets from its cursor on, waiting for new ones; raises
        ListenerDropped when its cursor has been overwritten."""
        ring = self.rings[listener.ring_key]
        while True:
            if listener.dropped:
                raise ListenerDropped(listener.dropped)
            packet = ring.get(listener.cursor)
            if packet is None:
                if listener.cursor < ring.oldest_seq:
                    raise ListenerDropped("too slow: fell out of the buffer")
                await self._events[listener.ring_key].wait()
                continue
            listener.cursor += 1
            yield packet

    async def feed(self, listener: Listener, send: tp.Callable[[Packet], tp.Awaitable[None]]) -> None:
        """Send the listener its packets until it is dropped or its connection fails; every
        transport (WebSocket, HTTP, Icecast) is just a different `send`."""
        try:
            async for packet in self.packets(listener):
                await send(packet)
                listener.sent_until = packet.stream_sample + packet.duration_samples
                self.sent_bytes[listener.ring_key] += len(packet.framed or packet.payload)
        except ListenerDropped as dropped:
            self.drop(listener, dropped.reason)
        except (ConnectionError, RuntimeError):
            pass  # the peer went away

    def counts(self) -> tp.Dict[str, int]:
        """Listeners per kind (e.g. "ws-opus": 3), without visiting them."""
        return dict(self._counts)

    def lag_samples(self, listener: Listener) -> int:
        newest = self.rings[listener.ring_key].newest()
        if newest is None:
            return 0
        return newest.stream_sample + newest.duration_samples - listener.sent_until

    def drop(self, listener: Listener, reason: str, close_code: int = protocol.CLOSE_TOO_SLOW) -> None:
        """End a listener's stream: its transport is told why (`on_drop`) and its pump stops."""
        if listener.dropped:
            return
        listener.dropped = reason
        if close_code == protocol.CLOSE_TOO_SLOW:
            self.dropped_total += 1
            log.info("listener dropped: %s, %s", listener.kind, reason)
        if listener.on_drop is not None:
            listener.on_drop(reason, close_code)
        if listener.task is not None:
            listener.task.cancel()

    async def _supervise(self, period_seconds: float = 0.25) -> None:
        while True:
            await asyncio.sleep(period_seconds)
            for listener in list(self.listeners):
                lag = self.lag_samples(listener)
                if lag > self.max_lag_samples:
                    self.drop(listener, f"too slow: {lag / self.sample_rate:.1f} s behind the live point")
