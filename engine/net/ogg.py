"""Ogg pages for Ogg/Opus streams (RFC 3533, RFC 7845), one page per Opus packet.

Pages are built once by the Opus encoder worker; each HTTP listener gets the two header pages
(OpusHead, OpusTags) and then the live pages, as an Icecast server does on connect."""
from __future__ import annotations

import struct


def _crc_table() -> tuple:
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else (r << 1)
        table.append(r & 0xFFFFFFFF)
    return tuple(table)


_CRC_TABLE = _crc_table()

FLAG_CONTINUED, FLAG_BOS, FLAG_EOS = 0x01, 0x02, 0x04


def ogg_crc(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _CRC_TABLE[((crc >> 24) & 0xFF) ^ byte]
    return crc


def ogg_page(serial: int, page_seq: int, granule: int, packet: bytes, flags: int = 0) -> bytes:
    """One page holding exactly one whole packet (≤ 65025 bytes)."""
    if len(packet) > 255 * 255 - 1:
        raise ValueError("packet too large for a single Ogg page")
    lacing = bytes([255] * (len(packet) // 255) + [len(packet) % 255])
    header = struct.pack("<4sBBqIIIB", b"OggS", 0, flags, granule, serial, page_seq, 0, len(lacing))
    page = bytearray(header + lacing + packet)
    struct.pack_into("<I", page, 22, ogg_crc(bytes(page)))
    return bytes(page)


def opus_tags(vendor: str = "musicgen-radio") -> bytes:
    v = vendor.encode()
    return b"OpusTags" + struct.pack("<I", len(v)) + v + struct.pack("<I", 0)


def opus_header_pages(serial: int, opus_head: bytes) -> bytes:
    """The two header pages every Ogg/Opus stream starts with (page sequence 0 and 1)."""
    return (ogg_page(serial, 0, 0, opus_head, FLAG_BOS)
            + ogg_page(serial, 1, 0, opus_tags()))
