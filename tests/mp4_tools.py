"""Test helpers that damage videos the way real files get damaged."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl"}


def _atoms(buf: bytes | bytearray, start: int, end: int) -> Iterator[tuple[bytes, int, int, int]]:
    """(type, offset, size, header size) of the MP4 atoms between ``start`` and ``end``."""
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", buf[pos : pos + 8])
        head = 8
        if size == 1:
            size, head = struct.unpack(">Q", buf[pos + 8 : pos + 16])[0], 16
        elif size == 0:
            size = end - pos
        yield kind, pos, size, head
        pos += size


def _shift_chunk_offsets(buf: bytearray, start: int, end: int, delta: int) -> None:
    for kind, pos, size, head in _atoms(buf, start, end):
        if kind in CONTAINERS:
            _shift_chunk_offsets(buf, pos + head, pos + size, delta)
        elif kind in (b"stco", b"co64"):
            n = struct.unpack(">I", buf[pos + head + 4 : pos + head + 8])[0]
            width, fmt = (4, ">I") if kind == b"stco" else (8, ">Q")
            for i in range(n):
                at = pos + head + 8 + i * width
                buf[at : at + width] = struct.pack(fmt, struct.unpack(fmt, buf[at : at + width])[0] + delta)


def faststart(data: bytes) -> bytes:
    """The same MP4 with its ``moov`` atom moved to the front (what ``ffmpeg -movflags faststart`` writes)."""
    top = {kind: (pos, size) for kind, pos, size, _ in _atoms(data, 0, len(data))}
    moov_at, moov_size = top[b"moov"]
    moov = bytearray(data[moov_at : moov_at + moov_size])
    rest = data[:moov_at] + data[moov_at + moov_size :]
    ftyp_at, ftyp_size = top[b"ftyp"]
    cut = ftyp_at + ftyp_size
    _shift_chunk_offsets(moov, 8, len(moov), moov_size)  # the media data moves back by the moov's size
    return rest[:cut] + bytes(moov) + rest[cut:]


def truncate_faststart(path: Path, share: float = 0.5) -> None:
    """Rewrite ``path`` as a faststart MP4 cut after ``share`` of its bytes: it opens, reports every frame, and
    stops decoding in the middle."""
    data = faststart(path.read_bytes())
    path.write_bytes(data[: int(len(data) * share)])
