"""Measurements of the data path that notebook 01 charts: box statistics, read times, cache hit rates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from refdet_core.data.frames import time_reads


def box_table(layout: Any) -> pd.DataFrame:
    """One row per ground-truth box: video, frame, x1, y1, x2, y2, w, h (native px)."""
    rows = [
        (vid, frame, *box)
        for vid, rec in layout.videos.items()
        for frame, boxes in sorted(rec.boxes_by_frame.items())
        for box in np.asarray(boxes).reshape(-1, 4)
    ]
    df = pd.DataFrame(rows, columns=["video", "frame", "x1", "y1", "x2", "y2"])
    return df.assign(w=df.x2 - df.x1, h=df.y2 - df.y1)


def sample_frames(layout: Any, video_ids: Sequence[str], n: int, seed: int = 0) -> list[tuple[str, int]]:
    """``n`` (video_id, frame) pairs spread over the annotated frames of ``video_ids``."""
    rng = np.random.default_rng(seed)
    pool = [(v, f) for v in video_ids for f in layout.videos[v].annotated_frames]
    picks = rng.choice(len(pool), size=min(n, len(pool)), replace=False)
    return [pool[i] for i in sorted(picks)]


def compare_reads(seek: Any, store: Any, samples: Sequence[tuple[str, int]]) -> pd.DataFrame:
    """ms per sample: seek-per-sample, frame store with a cold LRU, and an LRU hit (the same samples again)."""
    store.cache.clear()
    seek_t = time_reads(seek, samples)
    cold = time_reads(store, samples)
    hit = time_reads(store, samples)
    return pd.DataFrame(
        {
            name: {"mean_ms": t["mean_ms"], "median_ms": t["median_ms"], "n": t["n"]}
            for name, t in (("seek per sample", seek_t), ("frame store (cold)", cold), ("LRU hit", hit))
        }
    ).T


def simulate_cache(loader: Any, store: Any, epochs: int) -> pd.DataFrame:
    """Draw ``epochs`` epochs of episodes through ``loader``; hits, misses and hit rate of the store per epoch."""
    rows = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        before = store.stats()
        for _ in loader:
            pass
        after = store.stats()
        hits, misses = after["hits"] - before["hits"], after["misses"] - before["misses"]
        rows.append({"epoch": epoch, "hits": hits, "misses": misses, "hit_rate": hits / max(hits + misses, 1)})
    return pd.DataFrame(rows)
