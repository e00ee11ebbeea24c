"""Video metrics: ST-IoU per video and mean, frame-level presence P/R/F1, mAP@0.5 over frames.

Representation (native pixels of the original frame):

- ``Track`` = ``{frame: (x1, y1, x2, y2)}``, at most one predicted box per frame;
  ``ScoredTrack`` = ``{frame: (x1, y1, x2, y2, score)}``. Every function here accepts both (the score is
  ignored by ST-IoU and presence; mAP uses it, 1.0 when absent).
- ``GroundTruth`` = ``{video_id: {frame: [box, ...]}}``; a frame may carry several GT boxes (a list of
  4-sequences or an ``(n, 4)`` array), a frame with an empty list carries none.

ST-IoU(video) = sum over f in F_gt & F_pred of IoU(B_f, B'_f) / |F_gt | F_pred|, where F are the frames that
carry a box; with several GT boxes in a frame the prediction is scored against the one it overlaps
most; a video with neither GT nor prediction scores 1.0; the mean runs over the ground-truth videos, and a GT
video missing from the predictions has no predicted frames.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Iterable, Mapping, Sequence

import torch
from torchvision.ops import box_iou

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]
ScoredBox = tuple[float, float, float, float, float]
Track = dict[int, Box]
ScoredTrack = dict[int, ScoredBox]
GroundTruth = dict[str, dict[int, list[Box]]]

_CHUNK = 512  # frames per box_iou call: a (512, ~512) matrix, small and vectorised


def gt_frame_set(gt_frames: Mapping[int, Sequence]) -> set[int]:
    """Frames that carry at least one GT box."""
    return {f for f, boxes in gt_frames.items() if len(boxes) > 0}


def to_track(track: Mapping[int, Sequence[float]]) -> Track:
    """Drop the scores of a ScoredTrack (a Track passes through unchanged)."""
    return {int(f): tuple(float(v) for v in box[:4]) for f, box in track.items()}


def _chunks(items: list[int], size: int) -> Iterable[list[int]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def frame_ious(gt_frames: Mapping[int, Sequence], pred: Mapping[int, Sequence[float]]) -> dict[int, float]:
    """IoU of the predicted box with its best-overlapping GT box, for every frame that has both.

    Raises ValueError for a predicted box with x2 <= x1 or y2 <= y1 on such a frame.
    """
    common = sorted(f for f in pred if len(gt_frames.get(f, ())) > 0)
    out: dict[int, float] = {}
    for chunk in _chunks(common, _CHUNK):
        p = torch.tensor([list(pred[f][:4]) for f in chunk], dtype=torch.float64)  # (c, 4)
        bad = (p[:, 2] <= p[:, 0]) | (p[:, 3] <= p[:, 1])
        if bool(bad.any()):
            f = chunk[int(bad.nonzero()[0, 0])]
            raise ValueError(f"predicted box on frame {f} has x2 <= x1 or y2 <= y1: {tuple(pred[f][:4])}")
        owner: list[int] = []
        gts: list[list[float]] = []
        for i, f in enumerate(chunk):
            for box in gt_frames[f]:
                owner.append(i)
                gts.append([float(v) for v in box[:4]])
        g = torch.tensor(gts, dtype=torch.float64)  # (m, 4)
        owner_t = torch.tensor(owner, dtype=torch.long)  # (m,)
        # IoU of each GT box with the prediction of its own frame: one column per GT box.
        iou = box_iou(p, g)[owner_t, torch.arange(len(gts))].nan_to_num(0.0)  # (m,)
        best = torch.zeros(len(chunk), dtype=torch.float64).scatter_reduce(0, owner_t, iou, reduce="amax")
        out.update(zip(chunk, best.tolist()))
    return out


def st_iou_video(gt_frames: Mapping[int, Sequence], pred: Mapping[int, Sequence[float]]) -> float:
    """ST-IoU of one video: summed per-frame IoU over |F_gt | F_pred|; 1.0 when both are empty."""
    union = len(gt_frame_set(gt_frames) | set(pred))
    if union == 0:
        return 1.0
    return math.fsum(frame_ious(gt_frames, pred).values()) / union


def _check_known(gt: Mapping[str, object], pred: Mapping[str, object]) -> None:
    unknown = sorted(set(pred) - set(gt))
    if unknown:
        more = f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""
        raise ValueError(f"predictions for unknown video id(s) not in the ground truth: {unknown[:5]}{more}")
    if not gt:
        raise ValueError("ground truth has no videos")


def st_iou(gt: Mapping[str, Mapping[int, Sequence]], pred: Mapping[str, Mapping[int, Sequence[float]]]) -> dict:
    """ST-IoU per GT video and their mean.

    Returns:
        ``{"videos": {video_id: st_iou}, "mean_st_iou": mean over the GT videos}``.
    """
    _check_known(gt, pred)
    videos = {vid: st_iou_video(gt[vid], pred.get(vid, {})) for vid in gt}
    return {"videos": videos, "mean_st_iou": math.fsum(videos.values()) / len(videos)}


def presence_prf(gt: Mapping[str, Mapping[int, Sequence]], pred: Mapping[str, Mapping[int, Sequence[float]]]) -> dict:
    """Frame-level presence precision / recall / F1, counted over all frames of all GT videos.

    A frame is "present" on a side when that side has a box on it (box quality is ignored):
    TP = GT and prediction, FP = prediction without GT, FN = GT without prediction. An empty denominator
    gives 1.0 (no predicted frames: no false alarm; no GT frames: nothing missed); F1 = 2PR / (P + R), 0 if both 0.

    Returns:
        ``{"precision", "recall", "f1", "tp", "fp", "fn"}``.
    """
    _check_known(gt, pred)
    tp = fp = fn = 0
    for vid, gt_frames in gt.items():
        g, p = gt_frame_set(gt_frames), set(pred.get(vid, {}))
        tp, fp, fn = tp + len(g & p), fp + len(p - g), fn + len(g - p)
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def coco_backend() -> str | None:
    """The COCO evaluation backend torchmetrics can use here (faster_coco_eval preferred), or None."""
    for name in ("faster_coco_eval", "pycocotools"):
        if importlib.util.find_spec(name) is not None:
            return name
    return None


def _frame_pair(gt_boxes: Sequence, box: Sequence[float] | None) -> tuple[dict, dict]:
    """torchmetrics (prediction, target) dicts of one frame: one image."""
    target_boxes = torch.tensor([[float(v) for v in b[:4]] for b in gt_boxes], dtype=torch.float32).reshape(-1, 4)
    target = {"boxes": target_boxes, "labels": torch.zeros(len(target_boxes), dtype=torch.long)}
    if box is None:
        boxes, scores = torch.zeros((0, 4)), torch.zeros(0)
    else:
        score = float(box[4]) if len(box) > 4 else 1.0
        boxes, scores = torch.tensor([[float(v) for v in box[:4]]]), torch.tensor([score])
    pred = {"boxes": boxes, "scores": scores, "labels": torch.zeros(len(boxes), dtype=torch.long)}
    return pred, target


def map50(gt: Mapping[str, Mapping[int, Sequence]], pred: Mapping[str, Mapping[int, Sequence[float]]]) -> float:
    """mAP@0.5 (COCO-style, torchmetrics MeanAveragePrecision) with one image per frame that has GT or a prediction.

    Predictions may be Tracks (score 1.0) or ScoredTracks. Returns NaN when it is undefined (no GT box at all)
    or when torchmetrics or a COCO backend is not installed (with a warning).
    """
    _check_known(gt, pred)
    backend = coco_backend()
    if backend is None or importlib.util.find_spec("torchmetrics") is None:
        log.warning("mAP@0.5 skipped: needs torchmetrics and pycocotools or faster_coco_eval")
        return float("nan")
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", iou_thresholds=[0.5], backend=backend)
    n_images = 0
    for vid, gt_frames in gt.items():
        track = pred.get(vid, {})
        frames = sorted(gt_frame_set(gt_frames) | set(track))
        if not frames:
            continue
        pairs = [_frame_pair(gt_frames.get(f, ()), track.get(f)) for f in frames]
        metric.update([p for p, _ in pairs], [t for _, t in pairs])
        n_images += len(frames)
    if n_images == 0:
        return float("nan")
    value = float(metric.compute()["map"])
    return value if value >= 0 else float("nan")  # COCO gives -1 when no GT box exists
