"""A byte-bounded LRU of fixed-size frames in shared memory, with hit/miss counts shared by all processes.

The frame store keeps frames of one shape ``(S, S, 3)`` uint8, so the cache is a slab of equal slots. The slab,
its slot table and its counters live in one shared-memory arena created in the parent process: DataLoader
workers (forked, or spawned: the arena pickles while a process is being started) read and fill the same cache,
so the byte bound holds for all workers together and ``hits``/``misses`` count every read of every worker.
"""

from __future__ import annotations

import multiprocessing as mp
from multiprocessing.heap import Arena

import numpy as np

_HEADER = 3  # int64 words: clock, hits, misses


class SharedFrameLRU:
    """LRU cache of uint8 frames of one shape, bounded to ``capacity_bytes`` of frame data.

    Keys are ``(video_index, frame)`` pairs of non-negative ints. Slots are found by a vectorised scan of the
    key table under a lock (a few microseconds for thousands of slots).
    """

    def __init__(self, frame_shape: tuple[int, ...], capacity_bytes: int):
        self.frame_shape = tuple(frame_shape)
        self.frame_bytes = int(np.prod(self.frame_shape))
        self.slots = max(0, int(capacity_bytes) // self.frame_bytes)
        table_bytes = 8 * (_HEADER + 2 * self.slots)
        self._arena = Arena(table_bytes + self.slots * self.frame_bytes)
        self._lock = mp.Lock()
        self._views()
        self._keys[:] = -1
        self._header[:] = 0

    def _views(self) -> None:
        """Numpy views over the arena: header (3,), keys (slots,), stamps (slots,), data (slots, *frame_shape)."""
        buf = self._arena.buffer
        n = self.slots
        self._header = np.frombuffer(buf, np.int64, _HEADER, 0)
        self._keys = np.frombuffer(buf, np.int64, n, 8 * _HEADER)
        self._stamps = np.frombuffer(buf, np.int64, n, 8 * (_HEADER + n))
        data = np.frombuffer(buf, np.uint8, n * self.frame_bytes, 8 * (_HEADER + 2 * n))
        self._data = data.reshape((n, *self.frame_shape))

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for k in ("_header", "_keys", "_stamps", "_data"):
            state.pop(k)
        return state  # the arena and lock pickle only while a worker process is being started

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._views()

    @staticmethod
    def _key(video_index: int, frame: int) -> int:
        assert video_index >= 0 and 0 <= frame < 2**32, f"bad cache key ({video_index}, {frame})"
        return (video_index << 32) | frame

    def get(self, video_index: int, frame: int) -> np.ndarray | None:
        """A copy of the cached frame (``frame_shape`` uint8), or None; counts a hit or a miss."""
        key = self._key(video_index, frame)
        with self._lock:
            self._header[0] += 1
            where = np.flatnonzero(self._keys == key)
            if where.size == 0:
                self._header[2] += 1
                return None
            slot = int(where[0])
            self._stamps[slot] = self._header[0]
            self._header[1] += 1
            return self._data[slot].copy()

    def put(self, video_index: int, frame: int, img: np.ndarray) -> None:
        """Store ``img`` (``frame_shape`` uint8), evicting the least recently used slot when full."""
        if self.slots == 0:
            return
        assert img.shape == self.frame_shape and img.dtype == np.uint8, f"frame {img.shape} {img.dtype}"
        key = self._key(video_index, frame)
        with self._lock:
            if np.any(self._keys == key):  # another worker filled it meanwhile
                return
            free = np.flatnonzero(self._keys < 0)
            slot = int(free[0]) if free.size else int(np.argmin(self._stamps))
            self._header[0] += 1
            self._keys[slot] = key
            self._stamps[slot] = self._header[0]
            self._data[slot] = img

    def stats(self) -> dict:
        """Counts over every process that shares this cache."""
        with self._lock:
            hits, misses = int(self._header[1]), int(self._header[2])
            used = int(np.count_nonzero(self._keys >= 0))
        total = hits + misses
        return {
            "hits": hits,
            "misses": misses,
            "hit_rate": hits / total if total else 0.0,
            "cache_frames": used,
            "cache_bytes": used * self.frame_bytes,
            "cache_capacity_bytes": self.slots * self.frame_bytes,
        }

    def reset_stats(self) -> None:
        with self._lock:
            self._header[1:] = 0

    def clear(self) -> None:
        with self._lock:
            self._keys[:] = -1
            self._stamps[:] = 0
            self._header[1:] = 0
