"""Video frames: letterboxing, sequential decoding, the seek-per-sample reader and read timing.

The frame store itself (decode once, keep letterboxed frames, LRU in front) is in ``data/store.py``.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

log = logging.getLogger(__name__)

PAD_VALUE = 114


class VideoError(RuntimeError):
    """A video that cannot be opened or ends before an expected frame; the message names the file."""


@dataclass(frozen=True)
class Letterbox:
    """Mapping between native and letterbox pixels: ``letterbox = native * scale + pad``."""

    scale: float
    pad_x: float
    pad_y: float

    def to_letterbox(self, boxes: np.ndarray) -> np.ndarray:
        """Native xyxy boxes (n, 4) -> letterbox xyxy (n, 4) float32."""
        b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        pad = np.array([self.pad_x, self.pad_y, self.pad_x, self.pad_y], dtype=np.float32)
        return b * np.float32(self.scale) + pad

    def to_native(self, boxes: np.ndarray) -> np.ndarray:
        """Letterbox xyxy boxes (n, 4) -> native xyxy (n, 4) float32."""
        b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        pad = np.array([self.pad_x, self.pad_y, self.pad_x, self.pad_y], dtype=np.float32)
        return (b - pad) / np.float32(self.scale)

    def as_tuple(self) -> tuple[float, float, float]:
        return (self.scale, self.pad_x, self.pad_y)


def letterbox_params(width: int, height: int, size: int) -> Letterbox:
    """The letterbox of a ``width x height`` image into ``size x size`` (scale up allowed, content centred)."""
    scale = min(size / width, size / height)
    new_w, new_h = round(width * scale), round(height * scale)
    return Letterbox(scale=scale, pad_x=float((size - new_w) // 2), pad_y=float((size - new_h) // 2))


def letterbox(img: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """Resize ``img`` (H, W, 3) uint8 keeping aspect, centre it on a ``PAD_VALUE`` canvas.

    Returns:
        ``out`` (size, size, 3) uint8 and the ``Letterbox`` that maps native px to ``out`` px.
    """
    assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8, f"expected (H, W, 3) uint8, got {img.shape}"
    h, w = img.shape[:2]
    lb = letterbox_params(w, h, size)
    new_w, new_h = round(w * lb.scale), round(h * lb.scale)
    interp = cv2.INTER_AREA if lb.scale < 1 else cv2.INTER_LINEAR
    resized = img if (new_w, new_h) == (w, h) else cv2.resize(img, (new_w, new_h), interpolation=interp)
    out = np.full((size, size, 3), PAD_VALUE, dtype=np.uint8)
    x0, y0 = int(lb.pad_x), int(lb.pad_y)
    out[y0 : y0 + new_h, x0 : x0 + new_w] = resized
    return out, lb


def read_image_rgb(path: str | Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB; raises ``VideoError`` naming an unreadable file."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise VideoError(f"{path}: cannot read image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def iter_frames(video_path: str | Path, keep: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
    """Decode ``video_path`` once, front to back, yielding ``(frame, (H, W, 3) uint8 RGB)`` for frames in ``keep``.

    Frames not kept are only grabbed (demuxed and decoded, never converted). Decoding stops after the last kept
    frame. A video that ends early raises ``VideoError`` naming the file and the frame.
    """
    wanted = sorted(set(int(f) for f in keep))
    if not wanted:
        return
    cap = cv2.VideoCapture(str(video_path))
    if not cap.isOpened():
        raise VideoError(f"{video_path}: cannot open video")
    try:
        wanted_set, last = set(wanted), wanted[-1]
        for f in range(last + 1):
            if f in wanted_set:
                ok, bgr = cap.read()
                if not ok:
                    raise VideoError(f"{video_path}: video ends before frame {f} (needed up to {last})")
                yield f, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            elif not cap.grab():
                raise VideoError(f"{video_path}: video ends before frame {f} (needed up to {last})")
    finally:
        cap.release()


class FrameSource(Protocol):
    def get(self, video_id: str, frame: int) -> tuple[np.ndarray, Letterbox]: ...


class SeekReader:
    """The original's frame access (the ``seed`` preset's reader), kept as the speed baseline: per sample a new
    ``VideoCapture``, seek, read one frame, release, then letterbox to ``img_size``."""

    def __init__(self, layout: Any, img_size: int):
        self.layout = layout
        self.img_size = int(img_size)
        self.reads = 0

    def get(self, video_id: str, frame: int) -> tuple[np.ndarray, Letterbox]:
        """Frame ``frame`` of ``video_id`` as (img_size, img_size, 3) uint8 RGB and its ``Letterbox``."""
        path = self.layout.videos[video_id].video_path
        cap = cv2.VideoCapture(str(path))
        try:
            if not cap.isOpened():
                raise VideoError(f"{path}: cannot open video")
            cap.set(cv2.CAP_PROP_POS_FRAMES, int(frame))
            ok, bgr = cap.read()
        finally:
            cap.release()
        if not ok:
            raise VideoError(f"{path}: cannot read frame {frame}")
        self.reads += 1
        return letterbox(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), self.img_size)

    def stats(self) -> dict:
        return {"reads": self.reads, "hits": 0, "misses": self.reads, "hit_rate": 0.0}


def time_reads(source: FrameSource, samples: Sequence[tuple[str, int]], repeat: int = 1) -> dict:
    """Time ``source.get`` over ``samples`` (``(video_id, frame)`` pairs), ``repeat`` passes.

    Returns:
        ``{"n", "mean_ms", "median_ms", "min_ms", "max_ms", "per_sample_ms"}`` (ms per sample).
    """
    assert samples and repeat >= 1, "time_reads needs samples and repeat >= 1"
    times = []
    for _ in range(repeat):
        for video_id, frame in samples:
            t0 = time.perf_counter()
            source.get(video_id, frame)
            times.append((time.perf_counter() - t0) * 1e3)
    return {
        "n": len(times),
        "mean_ms": statistics.fmean(times),
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "per_sample_ms": times,
    }
