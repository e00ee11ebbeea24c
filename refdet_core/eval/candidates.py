"""Per-frame candidate boxes and how one of them is chosen: detector score, re-identification, colour, tracks.

Whole-video inference keeps each frame's ``k`` best boxes after NMS (``top_candidates``) and, for each, two
similarities with the references: ``reid``, the model's own match embedding of the box's crop against the
references' (``models/match.py``, ``ReferenceMatch.crop_similarity``; 0 for a model without ``ref_match``) and
``colour``, the Bhattacharyya coefficient of centre-weighted soft RGB histograms (``candidate_colours``).
``Selection`` then ranks the candidates by

    ranked = (1 - reid_weight) * score + reid_weight * reid
    ranked = (1 - model_weight) * colour ** power + model_weight * ranked      (only with ``colour`` on)

and picks one box per frame: the best ranked, or, with ``tracks`` on, the candidate of the best track alive in
the frame (``eval/tracks.py``). With ``relative`` on, the picked scores become margins below the video's best,
``1 - (best - score)``: a similarity's level differs from video to video (light, kind, how many look-alikes stand
about), its order within one video much less, so a threshold then keeps what comes close to the video's best
candidate. It assumes the target shows somewhere in the video: the best frame always passes. Every weight is
chosen on tuning videos (notebook 06); the colour rule has no learnt part, is blind to shape and is off unless
chosen there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import batched_nms, roi_align

from refdet_core.eval.tracks import TrackConfig, select_by_track
from refdet_core.models.head import dfl_decode
from refdet_core.models.support_encoder import colour_histogram

CROP_PX = 32  # candidate boxes are resampled to this square before their colour histogram
PRE_NMS = 100  # anchors per frame considered before NMS


@dataclass(frozen=True)
class Selection:
    """How each frame's box is picked among its candidates (the module docstring gives the ranking)."""

    colour: bool = False  # the colour rule on top of the ranking
    candidates: int = 10  # boxes per frame kept after NMS
    nms_iou: float = 0.5
    bins: int = 4  # RGB bins per channel of the histograms
    power: float = 4.0  # sharpens the colour match (Bhattacharyya coefficients of unrelated crops sit near 0.6)
    model_weight: float = 0.25  # share of the detector's (and re-ID's) ranking in the colour rule
    reid_weight: float = 0.0  # share of the re-identification similarity in the ranking
    tracks: bool = False  # pick per track (eval/tracks.py), not per frame
    relative: bool = False  # scores as margins below the video's best (the module docstring)

    def __post_init__(self) -> None:
        if self.candidates < 1 or self.bins < 2 or self.power <= 0 or not 0.0 <= self.model_weight <= 1.0:
            raise ValueError(f"need candidates >= 1, bins >= 2, power > 0, 0 <= model_weight <= 1; got {self}")
        if not 0.0 < self.nms_iou <= 1.0:
            raise ValueError(f"nms_iou must be in (0, 1], got {self.nms_iou}")
        if not 0.0 <= self.reid_weight <= 1.0:
            raise ValueError(f"reid_weight must be in [0, 1], got {self.reid_weight}")


@dataclass
class Candidates:
    """Each frame's candidate boxes: scores (T, K) detector sigmoid, boxes (T, K, 4) xyxy native px clipped,
    valid (T, K) False for padding and boxes empty after clipping, colour (T, K) and reid (T, K) similarities
    with the references."""

    scores: np.ndarray
    boxes: np.ndarray
    valid: np.ndarray
    colour: np.ndarray
    reid: np.ndarray

    FIELDS = ("scores", "boxes", "valid", "colour", "reid")

    @classmethod
    def concat(cls, parts: list[Candidates]) -> Candidates:
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in cls.FIELDS))

    def combined(self, check: Selection) -> np.ndarray:
        """(T, K) the score each candidate is ranked by (and that post-processing thresholds)."""
        w = check.reid_weight
        ranked = self.scores if w == 0 else (1.0 - w) * self.scores + w * np.clip(self.reid, 0.0, 1.0)
        if check.colour:
            w = check.model_weight
            ranked = (1.0 - w) * np.clip(self.colour, 0.0, 1.0) ** check.power + w * ranked
        return ranked.astype(np.float32)

    def select(self, check: Selection, frames: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One box per row -> scores (T,), boxes (T, 4), valid (T,) (False where no candidate is valid).

        ``frames`` (T,) the frame index of each row, where rows are key frames only (tracks count frames)."""
        if check.tracks:
            scores, boxes, valid = select_by_track(
                self.boxes, self.combined(check), self.valid, TrackConfig(enabled=True), frames
            )
        else:
            ranked = np.where(self.valid, self.combined(check), -np.inf)
            idx = ranked.argmax(axis=1)
            rows = np.arange(len(idx))
            valid = self.valid[rows, idx]
            scores, boxes = np.where(valid, ranked[rows, idx], 0.0), self.boxes[rows, idx]
        if check.relative and valid.any():
            scores = np.where(valid, 1.0 - (scores[valid].max() - scores), 0.0)
        return scores.astype(np.float32), boxes, valid


def top_candidates(
    box_logits: torch.Tensor, scores: torch.Tensor, anchors: torch.Tensor, strides: torch.Tensor, *, k: int, iou: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best boxes per frame after NMS, best first (the first is the top anchor's box).

    Args:
        box_logits (B, A, 4 * R), scores (B, A, 1) logits, anchors (A, 2), strides (A,).

    Returns:
        scores (B, k) sigmoid (0 for padding when fewer boxes survive), boxes (B, k, 4) xyxy input px (zeros
        for padding).
    """
    assert scores.dim() == 3 and scores.shape[-1] == 1, f"expected scores (B, A, 1), got {tuple(scores.shape)}"
    probs = scores[..., 0].float().sigmoid()  # (B, A)
    top = probs.topk(min(PRE_NMS, probs.shape[1]), dim=1).indices  # (B, P)
    rows = torch.arange(probs.shape[0], device=top.device)[:, None]
    boxes = dfl_decode(box_logits[rows, top], anchors[top], strides[top])  # (B, P, 4)
    return nms_per_frame(probs.gather(1, top), boxes, k=k, iou=iou)


def top_decoded_candidates(
    boxes: torch.Tensor, probs: torch.Tensor, *, k: int, iou: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``top_candidates`` for decoded outputs (the ONNX query graph's): boxes (B, A, 4) xyxy, probs (B, A)
    sigmoid -> scores (B, k), boxes (B, k, 4)."""
    top = probs.topk(min(PRE_NMS, probs.shape[1]), dim=1).indices  # (B, P)
    return nms_per_frame(probs.gather(1, top), boxes.gather(1, top[..., None].expand(-1, -1, 4)), k=k, iou=iou)


def nms_per_frame(
    scores: torch.Tensor, boxes: torch.Tensor, *, k: int, iou: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """NMS within each frame in one batched call: scores (B, P), boxes (B, P, 4) -> the ``k`` best survivors per
    frame, best first: scores (B, k) (0 for padding), boxes (B, k, 4) (zeros for padding)."""
    b, p = scores.shape
    frame = torch.arange(b, device=scores.device).repeat_interleave(p)  # (B*P,)
    keep = batched_nms(boxes.reshape(-1, 4).float(), scores.reshape(-1).float(), frame, iou)  # by score, descending
    keep = keep[torch.sort(frame[keep], stable=True).indices]  # grouped by frame, still best first in each
    f = frame[keep]
    starts = torch.cumsum(torch.bincount(f, minlength=b), 0) - torch.bincount(f, minlength=b)  # (B,)
    rank = torch.arange(len(keep), device=keep.device) - starts[f]
    keep, f, rank = keep[rank < k], f[rank < k], rank[rank < k]
    out_s, out_b = scores.new_zeros(b, k), boxes.new_zeros(b, k, 4)
    out_s[f, rank], out_b[f, rank] = scores.reshape(-1)[keep], boxes.reshape(-1, 4)[keep]
    return out_s, out_b


def reference_histograms(references: torch.Tensor, bins: int) -> torch.Tensor:
    """uint8 references (K, 3, S, S) -> (K, bins**3) centre-weighted histograms."""
    return colour_histogram(references.float() / 255.0, bins)


def candidate_colours(frames: torch.Tensor, boxes: torch.Tensor, ref_hist: torch.Tensor, bins: int) -> torch.Tensor:
    """Best Bhattacharyya coefficient over the references of each candidate box's colours.

    Args:
        frames (B, 3, S, S) uint8 letterboxed; boxes (B, K, 4) xyxy in the same px; ref_hist (R, bins**3).

    Returns:
        (B, K) in [0, 1]: 1 for the same colour distribution as one of the references.
    """
    b, k = boxes.shape[:2]
    crops = roi_align(frames.float() / 255.0, list(boxes.float()), output_size=CROP_PX, aligned=True)  # (B*K, 3, C, C)
    hist = colour_histogram(crops, bins)  # (B*K, bins^3)
    coef = hist.sqrt() @ ref_hist.to(hist).sqrt().t()  # (B*K, R)
    return coef.amax(dim=1).clamp(0.0, 1.0).reshape(b, k)
