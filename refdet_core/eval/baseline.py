"""The classical baseline: multi-scale template matching of the reference images, frame by frame.

Each reference image is resized (aspect kept) so that its longer side is ``object_size * scale`` native
pixels for every scale, then to the working resolution of the downscaled frames; every frame is matched
against every template with ``cv2.matchTemplate`` (TM_CCOEFF_NORMED), and the best match of the frame gives its
score (in [-1, 1]) and box (mapped back to native px). The enter threshold is tuned on training videos for mean
ST-IoU; the detections then go through the same temporal post-processing and scorer as the neural model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from refdet_core.eval.metrics import GroundTruth, ScoredTrack, gt_frame_set, st_iou
from refdet_core.eval.postprocess import PostprocessConfig, postprocess_scored

log = logging.getLogger(__name__)

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_MIN_TEMPLATE = 4  # px at working resolution; smaller templates match noise


@dataclass
class BaselineConfig:
    scales: tuple[float, ...] = (0.7, 1.0, 1.4)  # template sizes relative to object_size
    object_size: float = 32.0  # expected longer side of the object, native px (tune_threshold estimates it)
    frame_stride: int = 2  # match every n-th frame; post-processing bridges the skipped ones
    max_side: int = 480  # frames are downscaled so that their longer side is at most this
    grey: bool = False  # greyscale is about 3x faster, but colour is what tells tiny objects apart
    ref_crop: float = 0.6  # keep this central share of each reference side (ground photos carry background)
    thresholds: tuple[float, ...] = tuple(np.round(np.arange(0.30, 0.96, 0.05), 2).tolist())  # enter candidates
    leave_ratio: float = 0.8  # leave threshold = enter * leave_ratio
    post: PostprocessConfig = field(default_factory=PostprocessConfig)


@dataclass
class Detections:
    """Best template match of each processed frame of one video."""

    frames: np.ndarray  # (T,) int64
    scores: np.ndarray  # (T,) float32
    boxes: np.ndarray  # (T, 4) float32 xyxy native px
    seconds: float = 0.0

    def __iter__(self):
        """Unpacks as ``frames, scores, boxes = detections``."""
        return iter((self.frames, self.scores, self.boxes))


def sample_paths(root: str | Path, video_id: str) -> tuple[Path, list[Path]]:
    """``(drone_video.mp4, sorted reference images)`` of one sample in the challenge layout."""
    folder = Path(root) / "samples" / video_id
    video = folder / "drone_video.mp4"
    if not video.is_file():
        raise FileNotFoundError(f"{video}: missing drone_video.mp4 for video {video_id}")
    refs = sorted(p for p in (folder / "object_images").glob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not refs:
        raise FileNotFoundError(f"{folder / 'object_images'}: no reference images for video {video_id}")
    return video, refs


def _read_image(path: Path, grey: bool) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"{path}: unreadable image")
    return img


def crop_centre(img: np.ndarray, share: float) -> np.ndarray:
    """The central ``share`` of each side of an image (share 1.0: the whole image)."""
    assert 0.0 < share <= 1.0, f"share {share} must be in (0, 1]"
    h, w = img.shape[:2]
    dy, dx = round(h * (1 - share) / 2), round(w * (1 - share) / 2)
    return img[dy : h - dy, dx : w - dx]


def make_templates(refs: Sequence[np.ndarray], sizes: Sequence[float]) -> list[np.ndarray]:
    """Each reference resized (aspect kept) so that its longer side is each of ``sizes`` px (deduplicated)."""
    out, seen = [], set()
    for i, ref in enumerate(refs):
        h, w = ref.shape[:2]
        for size in sizes:
            k = max(float(size), _MIN_TEMPLATE) / max(h, w)
            tw, th = max(round(w * k), _MIN_TEMPLATE), max(round(h * k), _MIN_TEMPLATE)
            if (i, tw, th) not in seen:
                seen.add((i, tw, th))
                out.append(cv2.resize(ref, (tw, th), interpolation=cv2.INTER_AREA))
    return out


def best_match(frame: np.ndarray, templates: Sequence[np.ndarray]) -> tuple[float, tuple[int, int, int, int]]:
    """Highest TM_CCOEFF_NORMED score over all templates and its box (x1, y1, x2, y2) in ``frame`` px."""
    best_score, best_box = -1.0, (0, 0, 1, 1)
    for tpl in templates:
        th, tw = tpl.shape[:2]
        if th > frame.shape[0] or tw > frame.shape[1]:
            continue
        _, score, _, (x, y) = cv2.minMaxLoc(cv2.matchTemplate(frame, tpl, cv2.TM_CCOEFF_NORMED))
        if np.isfinite(score) and score > best_score:
            best_score, best_box = float(score), (x, y, x + tw, y + th)
    return best_score, best_box


def decoded_frames(video_path: str | Path, frame_stride: int = 1) -> Iterator[tuple[int, np.ndarray]]:
    """``(frame index, BGR image)`` of every ``frame_stride``-th frame, decoded in order (skipped ones only grabbed)."""
    cap = cv2.VideoCapture(str(video_path))
    if not cap.isOpened():
        raise ValueError(f"{video_path}: cannot open video")
    index = -1
    try:
        while cap.grab():
            index += 1
            if index % frame_stride:
                continue
            ok, img = cap.retrieve()
            if not ok:
                break
            yield index, img
    finally:
        cap.release()
    if index < 0:
        raise ValueError(f"{video_path}: no frame could be decoded")


def template_match_video(
    video_path: str | Path,
    reference_paths: Sequence[str | Path],
    *,
    scales: Sequence[float] = (0.7, 1.0, 1.4),
    object_size: float = 32.0,
    frame_stride: int = 1,
    max_side: int = 480,
    grey: bool = False,
    ref_crop: float = 0.6,
) -> Detections:
    """Match the references in every ``frame_stride``-th frame of a video, decoded sequentially.

    Frames are downscaled so that their longer side is at most ``max_side``; templates are sized to
    ``object_size * scale`` native px from the central ``ref_crop`` of each reference.
    Unpacks as ``frames, scores, boxes``.

    Returns:
        Detections with frames (T,), scores (T,), boxes (T, 4) xyxy in native px of the video.
    """
    assert frame_stride >= 1 and max_side >= 16, f"frame_stride {frame_stride}, max_side {max_side}"
    refs = [crop_centre(_read_image(Path(p), grey), ref_crop) for p in reference_paths]
    t0 = time.perf_counter()
    frames, scores, boxes = [], [], []
    templates: list[np.ndarray] | None = None
    k = 1.0
    for index, img in decoded_frames(video_path, frame_stride):
        if templates is None:  # the working scale is known once the first frame is
            k = min(1.0, max_side / max(img.shape[:2]))
            templates = make_templates(refs, [object_size * s * k for s in scales])
        small = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY) if grey else img
        if k < 1.0:
            small = cv2.resize(small, None, fx=k, fy=k, interpolation=cv2.INTER_AREA)
        score, box = best_match(small, templates)
        frames.append(index)
        scores.append(score)
        boxes.append([v / k for v in box])
    seconds = time.perf_counter() - t0
    log.info("%s: %d frames matched in %.1f s", video_path, len(frames), seconds)
    return Detections(
        frames=np.asarray(frames, dtype=np.int64),
        scores=np.asarray(scores, dtype=np.float32),
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        seconds=seconds,
    )


def match_videos(root: str | Path, video_ids: Sequence[str], *, cfg: BaselineConfig) -> dict[str, Detections]:
    """Raw per-frame matches of each video of a challenge layout (before post-processing)."""
    out = {}
    for vid in video_ids:
        video, refs = sample_paths(root, vid)
        out[vid] = template_match_video(
            video,
            refs,
            scales=cfg.scales,
            object_size=cfg.object_size,
            frame_stride=cfg.frame_stride,
            max_side=cfg.max_side,
            grey=cfg.grey,
            ref_crop=cfg.ref_crop,
        )
    return out


def _post_cfg(cfg: BaselineConfig, enter: float) -> PostprocessConfig:
    post = replace(cfg.post, enter=enter, leave=enter * cfg.leave_ratio)
    # Frames skipped by the stride must be bridged, or every interval falls apart.
    return replace(post, max_gap=max(post.max_gap, cfg.frame_stride - 1))


def postprocess_all(detections: Mapping[str, Detections], post: PostprocessConfig) -> dict[str, ScoredTrack]:
    return {vid: postprocess_scored(d.frames, d.scores, d.boxes, post) for vid, d in detections.items()}


def estimate_object_size(gt: GroundTruth, video_ids: Sequence[str]) -> float | None:
    """Median longer side (native px) of the GT boxes of ``video_ids``; None when there is none."""
    sides = [
        max(b[2] - b[0], b[3] - b[1])
        for vid in video_ids
        for frame in gt_frame_set(gt.get(vid, {}))
        for b in gt[vid][frame]
    ]
    return float(np.median(sides)) if sides else None


@dataclass
class TuneResult:
    enter: float  # the chosen enter threshold
    leave: float
    mean_st_iou: float  # on the training videos, at that threshold
    table: dict[float, float]  # enter threshold -> mean ST-IoU
    cfg: BaselineConfig  # cfg with object_size and post thresholds set: pass it to run_baseline


def tune_threshold(
    detections: Mapping[str, Detections], gt: GroundTruth, *, cfg: BaselineConfig
) -> tuple[float, dict[float, float]]:
    """Enter threshold from ``cfg.thresholds`` with the highest mean ST-IoU over the videos of ``detections``.

    Ties go to the lower threshold. Returns (best enter, {enter: mean ST-IoU}).
    """
    assert detections, "tune_threshold needs at least one video"
    sub_gt = {vid: gt.get(vid, {}) for vid in detections}
    table = {}
    for enter in cfg.thresholds:
        tracks = postprocess_all(detections, _post_cfg(cfg, enter))
        table[float(enter)] = st_iou(sub_gt, tracks)["mean_st_iou"]
    best = max(table, key=lambda t: (table[t], -t))
    return best, table


def fit_baseline(root: str | Path, train_ids: Sequence[str], gt: GroundTruth, *, cfg: BaselineConfig) -> TuneResult:
    """Set object_size from the training GT, match the training videos, and tune the enter threshold."""
    size = estimate_object_size(gt, train_ids)
    if size is not None:
        cfg = replace(cfg, object_size=size)
    enter, table = tune_threshold(match_videos(root, train_ids, cfg=cfg), gt, cfg=cfg)
    post = _post_cfg(cfg, enter)
    log.info("baseline: object_size %.1f px, enter %.2f, train mean ST-IoU %.4f", cfg.object_size, enter, table[enter])
    return TuneResult(enter, post.leave, table[enter], table, replace(cfg, post=post))


def run_baseline(root: str | Path, video_ids: Sequence[str], *, cfg: BaselineConfig) -> dict[str, ScoredTrack]:
    """Template matching + post-processing (``cfg.post`` thresholds) on each video -> ``{video_id: ScoredTrack}``."""
    post = replace(cfg.post, max_gap=max(cfg.post.max_gap, cfg.frame_stride - 1))
    return postprocess_all(match_videos(root, video_ids, cfg=cfg), post)
