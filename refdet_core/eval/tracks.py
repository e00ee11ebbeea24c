"""Candidates linked over frames into tracks, so that a video's box is chosen per track, not per frame.

Each frame keeps its best candidate boxes (``eval.candidates``); a look-alike may outscore the target in a few
frames, but rarely along a whole track. ``link`` associates candidates frame to frame in the manner of ByteTrack
(Zhang et al., 2022): tracks first take the confident candidates by IoU, then the remaining tracks take the
weak ones, unmatched confident candidates start tracks and a track ends after ``max_age`` frames unseen.
Two things keep small, fast objects on one track, most of all when the model runs on every k-th frame only
(``eval/keyframes.py``), where a track's last box can be k frames old: each track moves its last box on by its
velocity (a running mean of its box's motion per frame, in place of ByteTrack's Kalman filter) to where it
should be now, and the IoU is taken between boxes grown by ``buffer`` of their size on each side (the buffered
IoU of C-BIoU, Yang et al., 2023), so that a 15 px box that moved 10 px still overlaps its track.
``select_by_track`` then gives each frame the candidate of the best track alive there, scored by the track's
mean score (its length-weighted evidence), which hysteresis then turns into intervals as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TrackConfig:
    enabled: bool = False  # False: each frame's best candidate, frame by frame
    iou: float = 0.3  # a candidate continues a track when its box overlaps the track's last box this much
    high: float = 0.5  # ByteTrack's first round: candidates at least this confident (of the ranking score)
    max_age: int = 5  # frames a track survives unseen
    min_hits: int = 3  # a track's score counts its candidates as at least this many (short tracks score less)
    buffer: float = 0.25  # boxes grow by this share of their width and height on each side before the IoU
    motion: bool = True  # a track's last box moves on by the track's velocity before it is matched

    def __post_init__(self) -> None:
        if not (0.0 < self.iou <= 1.0 and 0.0 <= self.high <= 1.0 and self.max_age >= 1 and self.min_hits >= 1):
            raise ValueError(f"need 0 < iou <= 1, 0 <= high <= 1, max_age >= 1, min_hits >= 1; got {self}")
        if self.buffer < 0:
            raise ValueError(f"need buffer >= 0; got {self}")


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xyxy boxes (M, 4) x (N, 4) -> (M, N)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=-1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def grown(boxes: np.ndarray, share: float) -> np.ndarray:
    """xyxy boxes (N, 4) grown by ``share`` of their width and height on each side."""
    pad = (boxes[:, 2:] - boxes[:, :2]) * share
    return np.concatenate([boxes[:, :2] - pad, boxes[:, 2:] + pad], axis=1)


VELOCITY_KEEP = 0.5  # share of a track's previous velocity kept at each match (the rest is the new motion)


def _greedy(iou: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Pairs (row, col) by descending IoU, each row and column once, IoU >= threshold."""
    pairs, used_r, used_c = [], set(), set()
    for flat in np.argsort(-iou, axis=None):
        r, c = divmod(int(flat), iou.shape[1])
        if iou[r, c] < threshold:
            break
        if r not in used_r and c not in used_c:
            pairs.append((r, c))
            used_r.add(r)
            used_c.add(c)
    return pairs


def link(
    boxes: np.ndarray, scores: np.ndarray, valid: np.ndarray, cfg: TrackConfig, frames: np.ndarray | None = None
) -> np.ndarray:
    """Track ids (T, K) int64 of every candidate (-1 where not valid); boxes (T, K, 4), scores (T, K).

    ``frames`` (T,) the frame index of each row (default 0..T-1): rows are key frames when the model ran on every
    k-th frame only, and ages and motion count frames, not rows.
    """
    t_len, k = scores.shape
    frames = np.arange(t_len) if frames is None else np.asarray(frames)
    assert len(frames) == t_len, f"{len(frames)} frame indices for {t_len} rows"
    ids = np.full((t_len, k), -1, np.int64)
    last_box: list[np.ndarray] = []
    last_seen: list[int] = []
    velocity: list[np.ndarray] = []  # per track, xyxy px per frame
    for t, now in enumerate(frames.tolist()):
        live = [i for i in range(len(last_box)) if now - last_seen[i] <= cfg.max_age]
        cand = np.flatnonzero(valid[t])
        for confident in (True, False):  # ByteTrack: confident candidates first, then the weak ones
            pick = cand[(scores[t, cand] >= cfg.high) == confident]
            pick = pick[ids[t, pick] < 0]
            if not len(pick) or not live:
                continue
            moved = [last_box[i] + velocity[i] * (now - last_seen[i]) * cfg.motion for i in live]
            iou = box_iou(grown(np.stack(moved), cfg.buffer), grown(boxes[t, pick], cfg.buffer))
            matched = _greedy(iou, cfg.iou)
            for r, c in matched:
                track, box = live[r], boxes[t, pick[c]]
                step = (box - last_box[track]) / (now - last_seen[track])
                velocity[track] = VELOCITY_KEEP * velocity[track] + (1.0 - VELOCITY_KEEP) * step
                ids[t, pick[c]] = track
                last_box[track], last_seen[track] = box, now
            taken = {live[r] for r, _ in matched}
            live = [i for i in live if i not in taken]
        for c in cand[ids[t, cand] < 0]:  # unmatched: a new track (weak ones too, their score keeps them low)
            ids[t, c] = len(last_box)
            last_box.append(boxes[t, c])
            last_seen.append(now)
            velocity.append(np.zeros(4, np.float32))
    return ids


def track_scores(ids: np.ndarray, scores: np.ndarray, min_hits: int) -> np.ndarray:
    """Score per track id: the sum of its candidates' scores over max(its length, ``min_hits``)."""
    n = int(ids.max()) + 1 if ids.size and ids.max() >= 0 else 0
    ok = ids >= 0
    total = np.bincount(ids[ok], weights=scores[ok], minlength=n)
    count = np.bincount(ids[ok], minlength=n)
    return (total / np.maximum(count, min_hits)).astype(np.float32)


def select_by_track(
    boxes: np.ndarray, scores: np.ndarray, valid: np.ndarray, cfg: TrackConfig, frames: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One box per row from the best track alive there -> scores (T,) (the track's score), boxes (T, 4),
    valid (T,); ``frames`` as in ``link``."""
    ids = link(boxes, scores, valid, cfg, frames)
    per_track = track_scores(ids, scores, cfg.min_hits)
    ranked = np.where(ids >= 0, per_track[np.maximum(ids, 0)] if len(per_track) else 0.0, -np.inf)
    idx = ranked.argmax(axis=1)
    rows = np.arange(len(idx))
    ok = valid[rows, idx] & (ids[rows, idx] >= 0)
    return np.where(ok, ranked[rows, idx], 0.0).astype(np.float32), boxes[rows, idx], ok
