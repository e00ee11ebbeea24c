"""The frame store: decode each video once, keep letterboxed uint8 frames, serve them through a shared LRU.

On disk (``out_dir``)::

    index.json          key, settings, build seconds, per video: kept frames, annotated frames, letterbox
    <n>.npy             (N, S, S, 3) uint8 per video, memory-mapped on read       (fmt="npy")
    <n>/<frame>.jpg     one JPEG per kept frame                                   (fmt="jpeg")

A store is reused when the hash of its inputs (video path, size and mtime; the annotations; the video set)
and settings (img_size, bg_share, fmt, version) matches and its files have the sizes the index records, else
rebuilt. A build is written to a temporary folder beside ``out_dir`` and renamed into place, so a failed build
never touches the existing store; what a killed build left there is removed at the next build. A folder that
holds anything but a frame store is never replaced (``destination.check_destination``) unless forced.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm.auto import tqdm

from refdet_core.config import RefDetConfig
from refdet_core.data.frames import Letterbox, iter_frames, letterbox, letterbox_params
from refdet_core.data.layout import read_layout
from refdet_core.data.lru import SharedFrameLRU
from refdet_core.data.store_check import (
    INDEX,
    StoreError,
    damaged_file,
    is_store,
    layout_inputs,
    read_index,
    store_foreign,
)
from refdet_core.destination import (
    check_destination,
    clean_leftovers,
    make_temp_dir,
    recover_old,
    replace_dir,
)
from refdet_core.io import atomic_write_json

log = logging.getLogger(__name__)

STORE_VERSION = 1
JPEG_QUALITY = 95


def select_frames(record: Any, bg_share: float) -> tuple[list[int], list[int]]:
    """``(annotated, background)`` frames to keep: all annotated, ``bg_share`` of the rest evenly spread."""
    annotated = sorted(int(f) for f in record.boxes_by_frame if 0 <= int(f) < record.frames)
    ann = set(annotated)
    rest = np.array([f for f in range(record.frames) if f not in ann], dtype=np.int64)
    n_bg = int(round(bg_share * len(rest)))
    if n_bg == 0:
        return annotated, []
    picks = np.unique(np.round(np.linspace(0, len(rest) - 1, n_bg)).astype(np.int64))
    return annotated, rest[picks].tolist()


def _annotation_digest(record: Any) -> str:
    h = hashlib.sha256()
    for f in sorted(record.boxes_by_frame):
        h.update(str(int(f)).encode())
        h.update(np.ascontiguousarray(record.boxes_by_frame[f], dtype=np.float32).tobytes())
    return h.hexdigest()


def store_key(layout: Any, video_ids: Sequence[str], *, img_size: int, bg_share: float, fmt: str) -> str:
    """Hash of everything a store depends on: the videos' files and annotations and the settings."""
    parts: list[Any] = [STORE_VERSION, int(img_size), float(bg_share), fmt]
    for vid in sorted(video_ids):
        rec = layout.videos[vid]
        st = os.stat(rec.video_path)
        parts.append(
            [vid, str(Path(rec.video_path).resolve()), st.st_size, st.st_mtime_ns, rec.frames, _annotation_digest(rec)]
        )
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]


def _write_video(rec: Any, keep: list[int], dest: Path, name: str, img_size: int, fmt: str) -> Letterbox:
    """Decode ``rec``'s video once and write the kept frames, letterboxed, under ``dest``."""
    lb = letterbox_params(rec.width, rec.height, img_size)
    if fmt == "npy":
        arr = np.lib.format.open_memmap(
            dest / f"{name}.npy", mode="w+", dtype=np.uint8, shape=(len(keep), img_size, img_size, 3)
        )
    else:
        (dest / name).mkdir()
    for row, (f, rgb) in enumerate(iter_frames(rec.video_path, keep)):
        out, lb = letterbox(rgb, img_size)
        if fmt == "npy":
            arr[row] = out
        elif not cv2.imwrite(
            str(dest / name / f"{f:07d}.jpg"),
            cv2.cvtColor(out, cv2.COLOR_RGB2BGR),
            [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY],
        ):
            raise StoreError(f"{dest / name}: cannot write frame {f}")
    if fmt == "npy":
        arr.flush()
        del arr
    return lb


class FrameStore:
    """Letterboxed uint8 frames of a set of videos, on disk, behind a shared byte-bounded LRU.

    ``get(video_id, frame) -> ((S, S, 3) uint8 RGB, Letterbox)``. Safe to use from DataLoader workers: the LRU
    and its hit/miss counts are shared by every process (see ``data/lru.py``); memory maps open lazily per
    process.
    """

    def __init__(self, root: str | Path, index: dict, *, cache_mb: float = 512, reused: bool = False):
        self.root = Path(root)
        self.index = index
        self.img_size = int(index["img_size"])
        self.fmt = index["fmt"]
        self.reused = reused
        self.video_ids = list(index["videos"])
        self._vidx = {vid: i for i, vid in enumerate(self.video_ids)}
        self._rows = {vid: {f: r for r, f in enumerate(v["frames"])} for vid, v in index["videos"].items()}
        self._lb = {vid: Letterbox(*v["letterbox"]) for vid, v in index["videos"].items()}
        frame_bytes = self.img_size * self.img_size * 3
        cap = min(int(cache_mb * 2**20), frame_bytes * sum(len(r) for r in self._rows.values()))
        self.cache = SharedFrameLRU((self.img_size, self.img_size, 3), cap)
        self._maps: dict[str, np.ndarray] = {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_maps"] = {}  # memory maps reopen in each process
        return state

    @classmethod
    def open(cls, root: str | Path, *, cache_mb: float = 512) -> FrameStore:
        """Open an existing store; raises ``StoreError`` naming the folder when there is none."""
        path = Path(root) / INDEX
        if not path.is_file():
            raise StoreError(f"{root}: no frame store here (missing {INDEX})")
        index = read_index(Path(root))
        damage = damaged_file(Path(root), index)
        if damage:
            raise StoreError(f"{damage}; rebuild the frame store with `refdet cache build`")
        return cls(root, index, cache_mb=cache_mb, reused=True)

    @classmethod
    def build(
        cls,
        layout: Any,
        out_dir: str | Path,
        *,
        video_ids: Sequence[str] | None = None,
        img_size: int,
        bg_share: float,
        fmt: str = "npy",
        cache_mb: float = 512,
        progress: bool = True,
        force: bool = False,
    ) -> FrameStore:
        """Open the store at ``out_dir`` when its key matches, else decode each video once and (re)write it.

        ``video_ids`` defaults to every video of ``layout``. ``out_dir`` must be missing, empty or a frame store
        (``DestinationError`` otherwise, naming it), unless ``force``; never the data root or a folder above it.
        """
        assert fmt in ("npy", "jpeg"), f"fmt must be 'npy' or 'jpeg', got {fmt!r}"
        assert 0.0 <= bg_share <= 1.0, f"bg_share must be in [0, 1], got {bg_share}"
        out_dir = Path(out_dir)
        clean_leftovers(out_dir.parent, [out_dir.name])
        recover_old(out_dir, is_store)
        check_destination(
            out_dir, what="frame store", foreign=store_foreign, force=force, protect=layout_inputs(layout)
        )
        ids = list(layout.videos) if video_ids is None else list(video_ids)
        key = store_key(layout, ids, img_size=img_size, bg_share=bg_share, fmt=fmt)
        existing = cls._reusable(out_dir, key)
        if existing is not None:
            return cls(out_dir, existing, cache_mb=cache_mb, reused=True)
        index = cls._build_into(
            layout, ids, out_dir, key=key, img_size=img_size, bg_share=bg_share, fmt=fmt, progress=progress
        )
        return cls(out_dir, index, cache_mb=cache_mb, reused=False)

    @staticmethod
    def _reusable(out_dir: Path, key: str) -> dict | None:
        """The index of the store at ``out_dir`` when it has ``key`` and every file it lists, else None."""
        if not (out_dir / INDEX).is_file():
            return None
        try:
            existing = read_index(out_dir)
        except StoreError as err:
            log.warning("%s; rebuilding the frame store", err)
            return None
        if existing.get("key") != key:
            log.info("frame store %s is stale (inputs or settings changed); rebuilding", out_dir)
            return None
        damage = damaged_file(out_dir, existing)
        if damage:
            log.warning("%s; rebuilding the frame store", damage)
            return None
        log.info("frame store %s is up to date; reusing it", out_dir)
        return existing

    @staticmethod
    def _build_into(
        layout: Any,
        ids: list[str],
        out_dir: Path,
        *,
        key: str,
        img_size: int,
        bg_share: float,
        fmt: str,
        progress: bool,
    ) -> dict:
        tmp = make_temp_dir(out_dir.parent, out_dir.name)
        t0 = time.perf_counter()
        videos: dict[str, dict] = {}
        try:
            for n, vid in enumerate(tqdm(ids, desc="frame store", unit="video", disable=not progress)):
                rec = layout.videos[vid]
                if rec.frames <= 0:
                    raise StoreError(f"{rec.video_path}: frame count unknown (read the layout with probe_video=True)")
                annotated, background = select_frames(rec, bg_share)
                keep = sorted(annotated + background)
                lb = _write_video(rec, keep, tmp, str(n), img_size, fmt)
                videos[vid] = {
                    "file": f"{n}.npy" if fmt == "npy" else str(n),
                    "frames": keep,
                    "annotated": annotated,
                    "letterbox": list(lb.as_tuple()),
                    "width": rec.width,
                    "height": rec.height,
                }
            index = {
                "version": STORE_VERSION,
                "key": key,
                "img_size": int(img_size),
                "bg_share": float(bg_share),
                "fmt": fmt,
                "seconds": time.perf_counter() - t0,
                "videos": videos,
            }
            atomic_write_json(tmp / INDEX, index)
            replace_dir(tmp, out_dir)
        except BaseException:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("frame store %s: %d videos in %.1f s", out_dir, len(ids), index["seconds"])
        return index

    def _read(self, video_id: str, row: int, frame: int) -> np.ndarray:
        entry = self.index["videos"][video_id]
        if self.fmt == "npy":
            mm = self._maps.get(video_id)
            if mm is None:
                path = self.root / entry["file"]
                try:
                    mm = self._maps[video_id] = np.load(path, mmap_mode="r")
                except (OSError, ValueError) as err:  # a file truncated or removed after the store was opened
                    raise StoreError(f"{path}: cannot read the frame store file ({err})") from None
            return np.array(mm[row])
        path = self.root / entry["file"] / f"{frame:07d}.jpg"
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise StoreError(f"{path}: cannot read stored frame")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def get(self, video_id: str, frame: int) -> tuple[np.ndarray, Letterbox]:
        """Frame ``frame`` of ``video_id``: (S, S, 3) uint8 RGB (a private copy) and its ``Letterbox``."""
        rows = self._rows.get(video_id)
        if rows is None:
            raise StoreError(f"{self.root}: video {video_id!r} is not in the frame store")
        row = rows.get(int(frame))
        if row is None:
            raise StoreError(f"{self.root}: frame {frame} of {video_id!r} is not kept in the frame store")
        vidx = self._vidx[video_id]
        img = self.cache.get(vidx, int(frame))
        if img is None:
            img = self._read(video_id, row, int(frame))
            self.cache.put(vidx, int(frame), img)
        return img, self._lb[video_id]

    def frames(self, video_id: str) -> list[int]:
        return list(self.index["videos"][video_id]["frames"])

    def annotated(self, video_id: str) -> list[int]:
        """Kept frames of ``video_id`` that carry a box, sorted."""
        return list(self.index["videos"][video_id]["annotated"])

    def background(self, video_id: str) -> list[int]:
        """Kept frames of ``video_id`` without a box, sorted."""
        ann = set(self.index["videos"][video_id]["annotated"])
        return [f for f in self.index["videos"][video_id]["frames"] if f not in ann]

    def letterbox(self, video_id: str) -> Letterbox:
        return self._lb[video_id]

    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())

    def stats(self) -> dict:
        """Frames kept, bytes on disk, build seconds, reuse, and the shared LRU's hits/misses/hit_rate."""
        vids = self.index["videos"].values()
        kept = sum(len(v["frames"]) for v in vids)
        ann = sum(len(v["annotated"]) for v in vids)
        return {
            "videos": len(self.video_ids),
            "frames": kept,
            "annotated": ann,
            "background": kept - ann,
            "bytes": self.nbytes(),
            "seconds": float(self.index["seconds"]),
            "reused": self.reused,
            "img_size": self.img_size,
            "fmt": self.fmt,
            **self.cache.stats(),
        }

    def reset_stats(self) -> None:
        self.cache.reset_stats()


def default_store_dir(cfg: RefDetConfig, root: str | Path) -> Path:
    """``cfg.data.store_dir``, or ``<root>/.frame_store_<size>`` when empty, named by the whole-frame letterbox
    size, so that stores of different sizes (01 at 320, a 640 training, inference) never replace each other."""
    if cfg.data.store_dir:
        return Path(cfg.data.store_dir)
    return Path(root) / f".frame_store_{cfg.data.img_size}"


def store_from_config(
    layout: Any,
    cfg: RefDetConfig,
    *,
    out_dir: str | Path | None = None,
    progress: bool = True,
    force: bool = False,
) -> FrameStore:
    """The frame store of ``cfg.data`` for ``layout`` (built, or reused when up to date)."""
    d = cfg.data
    return FrameStore.build(
        layout,
        Path(out_dir) if out_dir else default_store_dir(cfg, layout.root),
        img_size=d.img_size,
        bg_share=d.store_bg_share,
        fmt=d.store_format,
        cache_mb=d.cache_mb,
        progress=progress,
        force=force,
    )


def build_store(
    root: str | Path, out: str | Path | None, cfg: RefDetConfig, *, progress: bool = True, force: bool = False
) -> dict:
    """``refdet cache build ROOT --out DIR``: read the layout, build (or reuse) the store, return its stats.

    ``force`` replaces whatever is at ``DIR`` (but never the data root or a folder holding it).

    Returns:
        ``{"videos", "frames", "annotated", "background", "bytes", "seconds", "reused", ...}``.
    """
    layout = read_layout(root)
    out_dir = Path(out) if out else default_store_dir(cfg, root)
    store = store_from_config(layout, cfg, out_dir=out_dir, progress=progress, force=force)
    stats = store.stats()
    stats["out"] = str(out_dir)
    return stats
