"""A ring of encoded packets: one encoder thread writes, any number of listeners read.

Each packet is stamped with its sequence number and the program sample index (at the model's
sample rate) of its first sample, so listeners of any codec agree on "when" a packet is. Like the
PCM ring, the writer never waits: a listener whose sequence number has been overwritten has fallen
behind and is dropped by the network layer.
"""
from __future__ import annotations

import dataclasses
import typing as tp


@dataclasses.dataclass(frozen=True)
class Packet:
    seq: int
    stream_sample: int  # program sample index of the first sample (model rate)
    duration_samples: int  # at the model rate
    payload: bytes
    framed: bytes = b""  # the payload already wrapped for its transport (built once, sent to all)


class PacketRing:
    """Fixed-capacity ring of packets addressed by sequence number."""

    def __init__(self, capacity: int,
                 framer: tp.Optional[tp.Callable[[int, int, bytes], bytes]] = None):
        self.capacity = int(capacity)
        self.framer = framer  # (seq, stream_sample, payload) → framed bytes
        self._slots: tp.List[tp.Optional[Packet]] = [None] * self.capacity
        self.next_seq = 0  # the sequence number the next packet will get
        self.listeners: tp.List[tp.Callable[[], None]] = []  # called after each publish

    @property
    def oldest_seq(self) -> int:
        return max(0, self.next_seq - self.capacity)

    def publish(self, stream_sample: int, duration_samples: int, payload: bytes) -> Packet:
        seq = self.next_seq
        framed = self.framer(seq, stream_sample, payload) if self.framer else b""
        packet = Packet(seq, stream_sample, duration_samples, payload, framed)
        self._slots[packet.seq % self.capacity] = packet
        self.next_seq = packet.seq + 1
        for notify in list(self.listeners):
            notify()
        return packet

    def get(self, seq: int) -> tp.Optional[Packet]:
        """The packet `seq`, or None if not yet written or already overwritten."""
        if seq < self.oldest_seq or seq >= self.next_seq:
            return None
        packet = self._slots[seq % self.capacity]
        return packet if packet is not None and packet.seq == seq else None

    def newest(self) -> tp.Optional[Packet]:
        return self.get(self.next_seq - 1)

    def seq_at_or_after(self, stream_sample: int) -> int:
        """The first kept packet whose start is ≥ `stream_sample` (next_seq when none)."""
        lo, hi = self.oldest_seq, self.next_seq  # binary search: stream_sample grows with seq
        while lo < hi:
            mid = (lo + hi) // 2
            packet = self.get(mid)
            if packet is None or packet.stream_sample < stream_sample:
                lo = mid + 1
            else:
                hi = mid
        return lo
