"""Detecting on every k-th frame only: the frames between two key frames get their box from the two.

The model runs on frames 0, k, 2k, ... (``VideoPredictor(detect_every=k)``); every frame is still decoded,
because the video is read front to back, but the frames between are only grabbed, never converted or
letterboxed. Between two key frames whose selected boxes are both valid and overlap (IoU at least
``MIN_IOU``), the box moves linearly from one to the other and the score is the lower of the two, so that
post-processing never keeps a frame its key frames would not keep; otherwise each frame takes its nearer key
frame's detection (the frames after the last key frame take the last one's).
"""

from __future__ import annotations

import numpy as np

from refdet_core.eval.tracks import box_iou

MIN_IOU = 0.1  # two key boxes closer than this are not taken for one moving object


def fill_between(
    keys: np.ndarray, scores: np.ndarray, boxes: np.ndarray, valid: np.ndarray, total: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Key-frame detections -> every frame's: scores (T,), boxes (T, 4), valid (T,) for T = ``total``.

    ``keys`` (M,) increasing frame indices starting at 0; ``scores`` (M,), ``boxes`` (M, 4), ``valid`` (M,).
    """
    keys = np.asarray(keys, dtype=np.int64)
    assert len(keys) and keys[0] == 0 and keys[-1] < total, f"key frames {keys[:3]}... do not fit {total} frames"
    assert len(scores) == len(boxes) == len(valid) == len(keys), "one detection per key frame"
    out_s = np.zeros(total, dtype=np.float32)
    out_b = np.zeros((total, 4), dtype=np.float32)
    out_v = np.zeros(total, dtype=bool)
    nearest = np.searchsorted(keys, np.arange(total), side="right") - 1  # (T,) the key at or before each frame
    nxt = np.minimum(nearest + 1, len(keys) - 1)
    after = np.where(nxt > nearest, keys[nxt], total)  # the next key frame (``total`` after the last)
    closer_next = (after - np.arange(total) < np.arange(total) - keys[nearest]) & (nxt > nearest)
    src = np.where(closer_next, nxt, nearest)
    out_s[:], out_b[:], out_v[:] = scores[src], boxes[src], valid[src]
    for j in np.flatnonzero(np.diff(keys) > 1):
        if not (valid[j] and valid[j + 1]) or box_iou(boxes[j : j + 1], boxes[j + 1 : j + 2])[0, 0] < MIN_IOU:
            continue
        a, b = keys[j], keys[j + 1]
        t = (np.arange(a + 1, b) - a)[:, None] / (b - a)  # (b - a - 1, 1)
        out_b[a + 1 : b] = (1.0 - t) * boxes[j] + t * boxes[j + 1]
        out_s[a + 1 : b] = min(scores[j], scores[j + 1])
        out_v[a + 1 : b] = True
    return out_s, out_b, out_v
