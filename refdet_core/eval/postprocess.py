"""Temporal post-processing of per-frame detections into a track (pure functions, numpy only).

Input: the best detection of each processed frame, ``frames`` (T,) strictly increasing ints (a stride is
fine), ``scores`` (T,), ``boxes`` (T, 4) xyxy native px. Steps, in order, each switchable:

1. **hysteresis**: keep runs of frames with score >= ``leave`` that reach ``enter`` somewhere (offline,
   both directions, as Canny's edge hysteresis); switched off: plain ``score >= enter``.
2. **gap filling**: kept frames separated by at most ``max_gap`` missing frames belong to one interval and the
   missing frames get linearly interpolated boxes and scores; switched off: intervals are runs of consecutive frames.
3. **minimum length**: intervals shorter than ``min_len`` frames are dropped (ST-IoU charges a frame per blip).
4. **smoothing**: centred moving average of each box coordinate over ``smooth`` frames inside each interval
   (the window shrinks symmetrically at the interval ends, so linear motion is kept exactly).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from refdet_core.eval.metrics import ScoredTrack, Track, to_track


@dataclass
class PostprocessConfig:
    enter: float = 0.5  # score that starts an interval
    leave: float = 0.3  # score below which an interval ends (<= enter)
    max_gap: int = 5  # missing frames bridged by interpolation inside an interval
    smooth: int = 3  # moving-average window in frames (1 = none; an even one rounds up)
    min_len: int = 3  # shortest interval kept, in frames
    use_hysteresis: bool = True
    use_gap_fill: bool = True
    use_smoothing: bool = True
    use_min_len: bool = True

    def __post_init__(self) -> None:
        if self.leave > self.enter:
            raise ValueError(f"leave ({self.leave}) must be <= enter ({self.enter})")
        if self.max_gap < 0 or self.smooth < 1 or self.min_len < 1:
            raise ValueError(f"need max_gap >= 0, smooth >= 1, min_len >= 1; got {self}")


def hysteresis(scores: np.ndarray, enter: float, leave: float) -> np.ndarray:
    """Mask (T,) of the samples in runs with score >= leave that contain a score >= enter."""
    scores = np.asarray(scores, dtype=np.float64)
    above = scores >= leave
    strong = scores >= enter
    # Label runs of `above`: a new run id starts at every False->True step.
    starts = above & ~np.concatenate([[False], above[:-1]])
    run_id = np.cumsum(starts) * above  # 0 = not above
    keep_ids = np.unique(run_id[strong & above])
    return above & np.isin(run_id, keep_ids[keep_ids > 0])


def split_intervals(frames: np.ndarray, max_gap: int) -> list[np.ndarray]:
    """Split sorted frames (T,) into index arrays where more than ``max_gap`` frames are missing in between."""
    frames = np.asarray(frames)
    if len(frames) == 0:
        return []
    breaks = np.nonzero(np.diff(frames) - 1 > max_gap)[0] + 1
    return np.split(np.arange(len(frames)), breaks)


def fill_gaps(frames: np.ndarray, scores: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every frame from first to last of one interval, boxes and scores linearly interpolated where missing.

    Returns:
        frames (F,), scores (F,), boxes (F, 4) with F = frames[-1] - frames[0] + 1.
    """
    full = np.arange(frames[0], frames[-1] + 1)
    filled_boxes = np.stack([np.interp(full, frames, boxes[:, k]) for k in range(4)], axis=1)  # (F, 4)
    return full, np.interp(full, frames, scores), filled_boxes


def smooth_boxes(boxes: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average of each coordinate of boxes (F, 4) over ``window`` frames (an even one rounds up).

    Near the interval ends the window shrinks symmetrically, so linear motion passes through unchanged.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    if window <= 1 or len(boxes) <= 1:
        return boxes.copy()
    idx = np.arange(len(boxes))
    radius = np.minimum(window // 2, np.minimum(idx, len(boxes) - 1 - idx))  # (F,)
    csum = np.concatenate([np.zeros((1, 4)), np.cumsum(boxes, axis=0)])  # (F + 1, 4)
    return (csum[idx + radius + 1] - csum[idx - radius]) / (2 * radius + 1)[:, None]


def _check_inputs(frames: Sequence[int], scores: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, ...]:
    f = np.asarray(frames, dtype=np.int64).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) if len(f) else np.zeros((0, 4))
    assert len(f) == len(s) == len(b), f"frames {f.shape}, scores {s.shape}, boxes {b.shape} must agree on T"
    assert len(f) < 2 or bool((np.diff(f) > 0).all()), "frames must be strictly increasing"
    return f, s, b


def postprocess_scored(
    frames: Sequence[int], scores: np.ndarray, boxes: np.ndarray, cfg: PostprocessConfig
) -> ScoredTrack:
    """Per-frame detections (T,), (T,), (T, 4) -> ``{frame: (x1, y1, x2, y2, score)}`` after the four steps."""
    f, s, b = _check_inputs(frames, scores, boxes)
    keep = hysteresis(s, cfg.enter, cfg.leave) if cfg.use_hysteresis else s >= cfg.enter
    f, s, b = f[keep], s[keep], b[keep]
    track: ScoredTrack = {}
    for idx in split_intervals(f, cfg.max_gap if cfg.use_gap_fill else 0):
        fi, si, bi = f[idx], s[idx], b[idx]
        if cfg.use_gap_fill:
            fi, si, bi = fill_gaps(fi, si, bi)
        if cfg.use_min_len and len(fi) < cfg.min_len:
            continue
        if cfg.use_smoothing:
            bi = smooth_boxes(bi, cfg.smooth)
        for frame, score, box in zip(fi.tolist(), si.tolist(), bi.tolist()):
            track[frame] = (*box, score)
    return track


def postprocess(frames: Sequence[int], scores: np.ndarray, boxes: np.ndarray, cfg: PostprocessConfig) -> Track:
    """As :func:`postprocess_scored`, without the scores: ``{frame: (x1, y1, x2, y2)}``."""
    return to_track(postprocess_scored(frames, scores, boxes, cfg))
