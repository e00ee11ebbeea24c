"""Whole-video inference: every frame of a drone video -> at most one box per frame -> a temporal track.

The loop: the references are read, letterboxed to ``support_size`` and encoded **once**
per video (``RefDet.set_reference_images`` with N = 1); the video is decoded front to back by a reader thread
that letterboxes each frame exactly as the frame store does for training (``data.frames.letterbox``) while the
model works on the previous batch; frames are batched; per frame the best boxes after NMS are kept as
candidates (``eval.candidates``) with their re-identification and colour similarities to the references,
mapped back to native pixels (``Letterbox.to_native``) and clipped to the frame, and one wins (``Selection``:
by score, re-ID and optionally colour, per frame or per track); then ``eval.postprocess`` (hysteresis, gap
filling, minimum length, smoothing) turns the per-frame detections into a track.

Post-processing thresholds, the candidate selection and the precision come from the checkpoint folder's
``inference.json`` when there is one: notebook 06 writes there the settings it chose on the training videos
(``save_inference``), so ``refdet predict`` gives the notebook's answers. Without it, ``meta.json``'s
``"postprocess"`` / ``"selection"`` mappings, else the ``PostprocessConfig`` and ``Selection`` defaults.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from refdet_core import memory
from refdet_core.checkpoint import model_from_checkpoint
from refdet_core.data.frames import Letterbox, VideoError, letterbox, read_image_rgb
from refdet_core.data.layout import LayoutError, read_layout
from refdet_core.eval.candidates import (
    Candidates,
    Selection,
    candidate_colours,
    reference_histograms,
    top_candidates,
)
from refdet_core.eval.keyframes import fill_between
from refdet_core.eval.metrics import GroundTruth, ScoredTrack, map50, presence_prf, st_iou
from refdet_core.eval.postprocess import PostprocessConfig, postprocess_scored
from refdet_core.io import atomic_write_json

log = logging.getLogger(__name__)

MIN_BOX_PX = 1.0  # a clipped box thinner than this (native px) is no detection
PREFETCH = 2  # batches decoded ahead by the reader thread
DEFAULT_THRESHOLDS = tuple(np.round(np.arange(0.05, 0.96, 0.05), 2).tolist())  # enter candidates of tune_enter
REFINE = 0.01  # tune_enter's second pass: enter in steps of this around the first pass's best
LEAVE_RATIOS = (0.6, 0.8, 0.9, 1.0)  # leave = enter * ratio; 1.0 = a plain threshold


@dataclass
class VideoResult:
    """Per-frame detections of one video and its post-processed track.

    frames (T,) int64 every decoded frame; scores (T,) float32 best sigmoid score of the frame; boxes (T, 4)
    float32 xyxy native px, clipped to the frame; valid (T,) bool False where the clipped box was empty
    (such a frame counts as score 0 in post-processing); track ``{frame: (x1, y1, x2, y2, score)}``.
    """

    video_id: str
    frames: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    valid: np.ndarray
    width: int
    height: int
    seconds: float  # wall time end to end: references, decode, model, candidates, post-processing
    track: ScoredTrack = field(default_factory=dict)
    candidates: Candidates | None = None  # each detected frame's top boxes, from which scores/boxes/valid came
    key_frames: np.ndarray | None = None  # (M,) the frames the model ran on, when not every one (detect_every > 1)

    @property
    def frames_per_s(self) -> float:
        return len(self.frames) / self.seconds if self.seconds > 0 else float("nan")

    def post_scores(self) -> np.ndarray:
        """Scores (T,) as post-processing sees them: 0 where the box was empty."""
        return np.where(self.valid, self.scores, 0.0).astype(np.float32)

    def retrack(self, post: PostprocessConfig) -> VideoResult:
        """The same detections with the track recomputed under other post-processing settings."""
        return replace(self, track=postprocess_scored(self.frames, self.post_scores(), self.boxes, post))

    def reselect(self, check: Selection, post: PostprocessConfig) -> VideoResult:
        """The same candidates with each frame's box picked under another colour check, then ``post``."""
        assert self.candidates is not None, f"{self.video_id}: no candidates stored"
        scores, boxes, valid = self.candidates.select(check, self.key_frames)
        if self.key_frames is not None:
            scores, boxes, valid = fill_between(self.key_frames, scores, boxes, valid, len(self.frames))
        return replace(self, scores=scores, boxes=boxes, valid=valid).retrack(post)


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Clip xyxy boxes (T, 4) to a ``width x height`` frame -> (clipped (T, 4) float32, valid (T,) bool)."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, width)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, height)
    valid = (b[:, 2] - b[:, 0] >= MIN_BOX_PX) & (b[:, 3] - b[:, 1] >= MIN_BOX_PX)
    return b, valid


def letterbox_bgr(bgr: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """A decoded BGR frame -> letterboxed RGB (size, size, 3) uint8, identical to ``letterbox(rgb, size)``.

    Resizing works per channel and the pad is grey, so letterboxing first and swapping channels after is exact
    and converts far fewer pixels than the native frame has.
    """
    out, lb = letterbox(bgr, size)
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB), lb


@dataclass
class FrameBatch:
    """Letterboxed frames of a video: ``frames`` (b, S, S, 3) uint8 RGB at the frame indices ``index`` (b,);
    ``decoded`` frames read so far (the video's length after the last batch), ``size`` (W, H) native."""

    frames: np.ndarray
    index: np.ndarray
    letterbox: Letterbox | None
    size: tuple[int, int]
    decoded: int


def frame_batches(video_path: str | Path, img_size: int, batch: int, *, every: int = 1) -> Iterator[FrameBatch]:
    """Decode a video front to back -> batches of b = ``batch`` frames (fewer in the last one).

    ``every`` > 1 keeps frames 0, every, 2 * every, ... only; the others are grabbed, not converted (the last
    batch may then hold no frame and only say how many were decoded). Raises VideoError for a video that cannot
    be opened or yields no frame.
    """
    assert batch >= 1 and every >= 1, f"batch {batch} and every {every} must be >= 1"
    cap = cv2.VideoCapture(str(video_path))
    if not cap.isOpened():
        raise VideoError(f"{video_path}: cannot open video")
    index, sent, buf, keys, lb, size = 0, 0, [], [], None, (0, 0)
    try:
        while True:
            if index % every:  # between key frames: advance the stream, convert nothing
                if not cap.grab():
                    break
                index += 1
                continue
            ok, bgr = cap.read()
            if not ok:
                break
            img, lb = letterbox_bgr(bgr, img_size)
            size = (bgr.shape[1], bgr.shape[0])
            buf.append(img)
            keys.append(index)
            index += 1
            if len(buf) == batch:
                yield FrameBatch(np.stack(buf), np.asarray(keys, dtype=np.int64), lb, size, index)
                buf, keys, sent = [], [], index
    finally:
        cap.release()
    if index == 0:
        raise VideoError(f"{video_path}: no frame could be decoded")
    if buf or index > sent:  # frames left, or frames grabbed since the last full batch
        frames = np.stack(buf) if buf else np.zeros((0, img_size, img_size, 3), dtype=np.uint8)
        yield FrameBatch(frames, np.asarray(keys, dtype=np.int64), lb, size, index)


def prefetch(items: Iterator, depth: int = PREFETCH) -> Iterator:
    """Run ``items`` in a reader thread, ``depth`` items ahead (OpenCV decodes without holding the GIL).

    An exception in the thread is raised here, in the consumer.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    done, stop = object(), threading.Event()

    def work() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put(item)
            q.put(done)
        except BaseException as err:  # handed to the consumer, which re-raises it
            q.put(err)

    thread = threading.Thread(target=work, daemon=True, name="refdet-video-reader")
    thread.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a reader waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


class VideoPredictor:
    """Runs a RefDet over whole videos.

    Args:
        model: a RefDet in ``prototype`` or ``dual`` head mode (put in eval mode and moved to ``device`` here).
        img_size: query letterbox size, as in training; support_size: reference letterbox size, as in training.
        post: temporal post-processing settings. batch: frames per forward pass. k_shot: references per video
            (the first ``k_shot`` images, repeated when fewer, as the episode dataset does).
        precision: "fp32" or "bf16" (autocast). channels_last: NHWC activations for the query path.
        check: how each frame's box is picked among its candidates (``eval.candidates``; default: by the
            detector's score).
        detect_every: run the model on every k-th frame only (``eval.keyframes`` fills the frames between).

    Re-ID and colour similarities are computed only where ``check`` uses them, unless ``all_cues`` is set (the
    validation protocol scores every arm from one pass).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        img_size: int,
        support_size: int,
        post: PostprocessConfig,
        batch: int,
        device: str | torch.device = "cpu",
        k_shot: int = 3,
        precision: str = "fp32",
        channels_last: bool = False,
        check: Selection | None = None,
        detect_every: int = 1,
    ) -> None:
        if getattr(model.head, "mode", "prototype") == "standard":
            raise ValueError("video inference needs prototype scores; the model's head_mode is 'standard'")
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision {precision!r}: choose fp32 or bf16")
        if detect_every < 1:
            raise ValueError(f"detect_every must be >= 1, got {detect_every}")
        assert batch >= 1 and k_shot >= 1, f"batch {batch} and k_shot {k_shot} must be >= 1"
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.img_size, self.support_size, self.k_shot = img_size, support_size, k_shot
        self.post, self.batch = post, batch
        self.precision, self.channels_last = precision, channels_last
        self.check = Selection() if check is None else check
        self.detect_every = detect_every
        self.all_cues = False  # re-ID and colour for every candidate even where ``check`` ignores them
        self.ref_hist: torch.Tensor | None = None
        self.match = getattr(self.model, "match", None)  # the re-ID embedding of models/match.py, if trained
        self.reid = getattr(self.model, "reid", None)  # the crop re-ID network of models/reid.py, if trained
        self.reid_refs: torch.Tensor | None = None  # its embedding of the references (set_references)
        self.stage_s: dict[str, float] = defaultdict(float)  # wall seconds per stage (host clock: exact on CPU)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def reference_tensor(self, reference_paths: Sequence[str | Path]) -> torch.Tensor:
        """Reference images -> uint8 (1, K, 3, Ss, Ss), letterboxed as the episode dataset does."""
        assert reference_paths, "no reference images"
        imgs = [
            letterbox(read_image_rgb(reference_paths[i % len(reference_paths)]), self.support_size)[0]
            for i in range(self.k_shot)
        ]
        return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2)[None].contiguous()  # (1, K, 3, Ss, Ss)

    @torch.inference_mode()
    def set_references(self, reference_paths: Sequence[str | Path]) -> None:
        """Encode the references of one video once; later ``detect`` calls reuse the prototypes."""
        refs = self.reference_tensor(reference_paths).to(self.device)
        self.ref_hist = reference_histograms(refs[0], self.check.bins)
        with self._autocast():
            self.model.set_reference_images(refs)
        self.embed_references(refs)

    @property
    def has_reid(self) -> bool:
        """A re-ID similarity exists: the crop re-ID network's, else the model's match embedding's."""
        return self.reid is not None or self.match is not None

    def embed_references(self, refs: torch.Tensor) -> None:
        """uint8 (1, K, 3, Ss, Ss) -> the crop re-ID network's reference embeddings (nothing without one)."""
        if self.reid is not None:
            self.reid_refs = self.reid.references(refs.to(self.device).float() / 255.0)

    def reid_similarity(self, x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Frames (B, 3, S, S) uint8, candidates (B, C, 4) letterbox px -> (B, C) cosine with the references: the
        crop re-ID network where the model has one, else its match embedding (``models/match.py``)."""
        if self.reid is not None:
            assert self.reid_refs is not None, "set_references before detect"
            return self.reid.crop_similarity(x.float() / 255.0, boxes, self.reid_refs)
        with self._autocast():
            return self.match.crop_similarity(self.model.backbone, x.float() / 255.0, boxes, self.templates())

    @torch.inference_mode()
    def detect(self, frames: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Letterboxed frames (B, S, S, 3) uint8 RGB -> each frame's K candidates: scores (B, K), boxes
        (B, K, 4) xyxy letterbox px, colour and re-ID similarity with the references (B, K) each
        (``set_references`` first)."""
        assert self.ref_hist is not None, "set_references before detect"
        x = torch.as_tensor(frames).to(self.device, non_blocking=True).permute(0, 3, 1, 2)  # (B, 3, S, S)
        assert x.shape[1:] == (3, self.img_size, self.img_size), f"frames {tuple(x.shape)} vs img_size {self.img_size}"
        x = x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        scores, boxes = self.candidates_of(x)
        t0 = time.perf_counter()
        colour = torch.zeros_like(scores)
        if self.all_cues or self.check.colour:
            colour = candidate_colours(x, boxes, self.ref_hist, self.check.bins)
        t1 = time.perf_counter()
        reid = torch.zeros_like(scores)
        if self.has_reid and (self.all_cues or self.check.reid_weight > 0):
            reid = self.reid_similarity(x, boxes)
        out = tuple(t.float().cpu().numpy() for t in (scores, boxes, colour, reid))
        self.stage_s["candidates"] += t1 - t0
        self.stage_s["reid"] += time.perf_counter() - t1
        return out

    def templates(self) -> list[torch.Tensor]:
        """The references' match templates per scale (1, K, D) (``set_references`` first)."""
        return self.model._cache.templates

    def candidates_of(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames (B, 3, S, S) uint8 -> each frame's candidates: scores (B, K) sigmoid, boxes (B, K, 4) letterbox px."""
        t0 = time.perf_counter()
        with self._autocast():
            out = self.model(x, use_cache=True)
        t1 = time.perf_counter()
        k, iou = self.check.candidates, self.check.nms_iou
        found = top_candidates(out.box_logits, out.scores, out.anchors, out.strides, k=k, iou=iou)
        t2 = time.perf_counter()
        self.stage_s["model"] += t1 - t0
        self.stage_s["candidates"] += t2 - t1
        return found

    def predict_video(
        self,
        video_path: str | Path,
        reference_paths: Sequence[str | Path],
        *,
        video_id: str = "",
        progress: bool = False,
        frames_hint: int = 0,
    ) -> VideoResult:
        """Every frame of ``video_path`` -> VideoResult (per-frame best box in native px, post-processed track).

        ``frames_hint``: the video's frame count for the progress bar (0: a bar without a total), known from the
        layout probe, so the file is not opened a second time to count it.
        """
        video_id = video_id or Path(video_path).parent.name
        memory.stream_frames()  # RSS stays flat however long the video (refdet_core/memory.py says why)
        t0 = time.perf_counter()
        self.set_references(reference_paths)
        keys, parts, total = [], [], 0
        width = height = 0
        batches = frame_batches(video_path, self.img_size, self.batch, every=self.detect_every)
        with tqdm(total=frames_hint or None, desc=video_id, unit="frame", disable=not progress) as bar:
            for fb in prefetch(batches):
                (width, height), done = fb.size, fb.decoded
                if len(fb.frames):
                    s, b, colour, reid = self.detect(fb.frames)
                    b, ok = clip_boxes(fb.letterbox.to_native(b.reshape(-1, 4)), width, height)
                    valid = ok.reshape(s.shape) & (s > 0)
                    parts.append(Candidates(s, b.reshape(s.shape + (4,)), valid, colour, reid))
                    keys.append(fb.index)
                bar.update(done - total)
                total = done
        self.model.clear_cache()
        t_post = time.perf_counter()
        cands, keys = Candidates.concat(parts), np.concatenate(keys)
        scores, boxes, valid = cands.select(self.check, keys)
        key_frames = None
        if self.detect_every > 1:
            scores, boxes, valid = fill_between(keys, scores, boxes, valid, total)
            key_frames = keys
        frames = np.arange(total, dtype=np.int64)
        result = VideoResult(
            video_id, frames, scores, boxes, valid, width, height, 0.0, candidates=cands, key_frames=key_frames
        )
        result = result.retrack(self.post)
        seconds = time.perf_counter() - t0
        self.stage_s["post"] += time.perf_counter() - t_post
        result.seconds = seconds
        n, fps = len(result.frames), result.frames_per_s
        log.info(
            "%s: %d frames in %.1f s (%.1f frames/s), %d in the track", video_id, n, seconds, fps, len(result.track)
        )
        return result


# ---------------------------------------------------------------- checkpoints, layouts, submissions
INFERENCE_FILE = "inference.json"  # in the checkpoint folder: the inference settings chosen for these weights


def save_inference(
    ckpt_dir: str | Path, *, post: PostprocessConfig, check: Selection, precision: str = "fp32", **notes
) -> Path:
    """Write the post-processing, candidate selection and precision chosen for a checkpoint beside its weights
    (``inference.json``), so that ``refdet predict`` applies them. ``notes`` (e.g. what they were chosen on)
    are kept for the reader. A new checkpoint save replaces the folder, and with it these settings."""
    path = Path(ckpt_dir) / INFERENCE_FILE
    atomic_write_json(path, {"postprocess": vars(post), "selection": vars(check), "precision": precision, **notes})
    return path


def inference_settings(ckpt_dir: str | Path, meta: Mapping) -> dict:
    """``{"postprocess": {...}, "selection": {...}, "precision"?: str}`` of a checkpoint folder."""
    path = Path(ckpt_dir) / INFERENCE_FILE
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise VideoError(f"{path}: not valid JSON ({err})") from None
        return {"postprocess": saved.get("postprocess", {}), "selection": saved.get("selection", {}),
                "precision": saved.get("precision", "fp32")}  # fmt: skip
    return {"postprocess": meta.get("postprocess", {}), "selection": meta.get("selection", {})}


def load_predictor(
    ckpt_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    post: PostprocessConfig | None = None,
    batch: int = 8,
    precision: str | None = None,
    channels_last: bool = False,
    check: Selection | None = None,
    detect_every: int = 1,
) -> VideoPredictor:
    """A VideoPredictor over the RefDet of a checkpoint folder (its config.yaml and meta.json give the model).

    ``post``, ``check`` and ``precision`` None: the checkpoint's saved inference settings (``inference_settings``:
    ``inference.json``, else ``meta.json``), else the PostprocessConfig / Selection defaults and fp32.
    Raises CheckpointError (one line) for a missing or incomplete checkpoint.
    """
    model, cfg, meta = model_from_checkpoint(ckpt_dir)
    saved = inference_settings(ckpt_dir, meta)
    post = PostprocessConfig(**saved["postprocess"]) if post is None else post
    check = Selection(**saved["selection"]) if check is None else check
    precision = precision or saved.get("precision", "fp32")
    return VideoPredictor(
        model,
        img_size=cfg.data.img_size,
        support_size=cfg.data.support_size,
        post=post,
        batch=batch,
        device=device,
        k_shot=cfg.data.k_shot,
        precision=precision,
        channels_last=channels_last,
        check=check,
        detect_every=detect_every,
    )


def _predictor(ckpt: str | Path | VideoPredictor, device: str | torch.device) -> VideoPredictor:
    return ckpt if isinstance(ckpt, VideoPredictor) else load_predictor(ckpt, device=device)


def predict_layout(
    root: str | Path,
    ckpt: str | Path | VideoPredictor,
    *,
    video_ids: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    frames_hint: Mapping[str, int] | None = None,
) -> dict[str, VideoResult]:
    """Run a checkpoint (or a ready VideoPredictor) over videos of a challenge layout (annotations not needed).

    ``frames_hint``: frame counts per video for the progress bars (default: the layout's probed counts).

    Returns:
        ``{video_id: VideoResult}`` for ``video_ids`` (default: every video of the layout, sorted).
    """
    layout = read_layout(root, probe_video=False)
    ids = sorted(layout.videos) if video_ids is None else list(video_ids)
    unknown = [v for v in ids if v not in layout.videos]
    if unknown:
        raise LayoutError(f"{root}: unknown video id {unknown[0]!r}")
    predictor = _predictor(ckpt, device)
    out = {}
    for vid in ids:
        rec = layout.videos[vid]
        hint = (frames_hint or {}).get(vid, rec.frames)
        out[vid] = predictor.predict_video(
            rec.video_path, rec.reference_paths, video_id=vid, progress=progress, frames_hint=hint
        )
    return out


def throughput(results: Mapping[str, VideoResult]) -> dict[str, float]:
    """``{"videos", "frames", "seconds", "frames_per_s"}`` of the decode + model loops of ``results``."""
    frames = sum(len(r.frames) for r in results.values())
    seconds = sum(r.seconds for r in results.values())
    return {
        "videos": len(results),
        "frames": frames,
        "seconds": round(seconds, 3),
        "frames_per_s": frames / seconds if seconds > 0 else float("nan"),
    }


def tracks(results: Mapping[str, VideoResult]) -> dict[str, ScoredTrack]:
    """``{video_id: ScoredTrack}`` of the post-processed tracks."""
    return {vid: r.track for vid, r in results.items()}


def raw_tracks(results: Mapping[str, VideoResult]) -> dict[str, ScoredTrack]:
    """Every frame's best box with its score, before post-processing (what a threshold-free mAP ranks)."""
    out = {}
    for vid, r in results.items():
        keep = np.nonzero(r.valid)[0]
        out[vid] = {int(r.frames[i]): (*map(float, r.boxes[i]), float(r.scores[i])) for i in keep}
    return out


def layout_ground_truth(layout, video_ids: Sequence[str]) -> GroundTruth:
    """``{video_id: {frame: [box, ...]}}`` in native px from a Layout's ``boxes_by_frame``."""
    return {
        vid: {f: [tuple(map(float, b)) for b in boxes] for f, boxes in layout.videos[vid].boxes_by_frame.items()}
        for vid in video_ids
    }


def retrack_all(results: Mapping[str, VideoResult], post: PostprocessConfig) -> dict[str, VideoResult]:
    return {vid: r.retrack(post) for vid, r in results.items()}


def reselect_all(
    results: Mapping[str, VideoResult], check: Selection, post: PostprocessConfig
) -> dict[str, VideoResult]:
    return {vid: r.reselect(check, post) for vid, r in results.items()}


def tune_enter(
    results: Mapping[str, VideoResult],
    gt: GroundTruth,
    *,
    post: PostprocessConfig,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    leave_ratios: Sequence[float] = LEAVE_RATIOS,
    refine: float = REFINE,
) -> tuple[PostprocessConfig, dict[float, float]]:
    """The ``enter`` threshold and ``leave`` (= enter * one of ``leave_ratios``) with the best mean ST-IoU over
    ``results``' videos.

    Needs no new inference: the stored per-frame detections are post-processed again. ``thresholds`` are tried
    first, then ``enter`` in steps of ``refine`` between the best one's neighbours (0: no second pass); similarity
    scores crowd into a narrow band, where a step of 0.05 and a leave far below enter keep every frame. Ties go to
    the lower threshold, then the lower ratio. Returns (post with enter/leave set, {enter: best mean ST-IoU over
    the ratios}).
    """
    assert results, "tune_enter needs at least one video"
    sub_gt = {vid: gt.get(vid, {}) for vid in results}
    scored: dict[tuple[float, float], float] = {}

    def score(enters: Sequence[float]) -> tuple[float, float]:
        for enter in enters:
            for ratio in leave_ratios:
                if (enter, ratio) not in scored:
                    cand = replace(post, enter=enter, leave=enter * ratio)
                    scored[enter, ratio] = st_iou(sub_gt, tracks(retrack_all(results, cand)))["mean_st_iou"]
        return max(scored, key=lambda k: (scored[k], -k[0], -k[1]))

    coarse = sorted(float(t) for t in thresholds)
    enter, _ = score(coarse)
    if refine > 0:
        i = coarse.index(enter)
        lo, hi = coarse[max(i - 1, 0)], coarse[min(i + 1, len(coarse) - 1)]
        score([round(float(t), 4) for t in np.arange(lo, hi + refine / 2, refine)])
    best = score([])
    table: dict[float, float] = {}
    for (e, _), v in sorted(scored.items()):
        table[e] = max(table.get(e, -1.0), v)
    log.info("tune_enter: enter %.2f leave %.2f, mean ST-IoU %.4f on %d videos", best[0], best[0] * best[1],
             scored[best], len(results))  # fmt: skip
    return replace(post, enter=best[0], leave=best[0] * best[1]), table


def validation_split(layout, data_cfg, meta: Mapping) -> tuple[list[str], list[str]]:
    """(train_ids, val_ids): the split the checkpoint was trained with (``meta``) when it names one, else
    ``layout.split(data_cfg)``."""
    train, val = list(meta.get("train_videos", [])), list(meta.get("val_videos", []))
    if val and set(train + val) <= set(layout.labelled_ids):
        return train, val
    return layout.split(data_cfg)


def evaluate(results: Mapping[str, VideoResult], gt: GroundTruth) -> dict:
    """Scores of the post-processed tracks against ``gt`` (same videos).

    Returns:
        ``{"videos": {id: st_iou}, "mean_st_iou", "presence": {precision, recall, f1, tp, fp, fn}, "map50"
        (the tracks, with scores), "map50_raw" (every frame's best box, threshold-free)}``.
    """
    sub_gt = {vid: gt.get(vid, {}) for vid in results}
    out = st_iou(sub_gt, tracks(results))
    return {
        **out,
        "presence": presence_prf(sub_gt, tracks(results)),
        "map50": map50(sub_gt, tracks(results)),
        "map50_raw": map50(sub_gt, raw_tracks(results)),
    }


def pick_frames(results: Mapping[str, VideoResult], gt: GroundTruth, n: int, seed: int = 0) -> list[tuple[str, int]]:
    """``n`` (video_id, frame) pairs to show, spread over the videos: half on GT frames, half on predicted ones."""
    rng = np.random.default_rng(seed)
    picks: list[tuple[str, int]] = []
    pools = [
        (vid, sorted(f for f, b in gt.get(vid, {}).items() if len(b)), sorted(r.track)) for vid, r in results.items()
    ]
    for i in range(n):
        vid, gt_frames, pred_frames = pools[i % len(pools)]
        pool = (gt_frames if i % 2 == 0 else pred_frames) or gt_frames or pred_frames or list(results[vid].frames)
        picks.append((vid, int(rng.choice(pool))))
    return sorted(set(picks))
