"""Read and validate the challenge layout.

```
<root>/samples/<video_id>/object_images/*.jpg|*.png   reference photos (sorted by name)
<root>/samples/<video_id>/drone_video.mp4
<root>/annotations/annotations.json                    absent on a test split
```

Every bad input raises :class:`LayoutError` with one line that names the file and the problem. Reading
never writes anything under ``root``.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from refdet_core.config import DataConfig

log = logging.getLogger(__name__)

VIDEO_NAME = "drone_video.mp4"
REFERENCE_DIR = "object_images"
ANNOTATIONS = Path("annotations") / "annotations.json"
SPLITS = "splits.json"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
FRAME_COUNT_SLACK = 3  # container frame counts may overstate the decodable frames by a few

Box = tuple[int, float, float, float, float]  # (frame, x1, y1, x2, y2) in native px


class LayoutError(ValueError):
    """A problem with the data layout; the message is one line naming the file and the problem."""


@dataclass
class VideoRecord:
    """One sample folder: a drone video, its reference images and (when labelled) its boxes.

    ``frames``/``fps``/``width``/``height`` are 0 when the layout was read with ``probe_video=False``.
    ``labelled`` is False for a sample that has no entry in annotations.json (a test sample).
    """

    video_id: str
    video_path: Path
    reference_paths: list[Path]
    frames: int = 0
    fps: float = 0.0
    width: int = 0
    height: int = 0
    intervals: list[list[Box]] = field(default_factory=list)  # one list per visible interval, sorted by frame
    boxes_by_frame: dict[int, np.ndarray] = field(default_factory=dict)  # frame -> (n, 4) float32 xyxy
    labelled: bool = True

    @property
    def base_class(self) -> str:
        """The object type: the id prefix before the last ``_`` (``Backpack_0`` -> ``Backpack``)."""
        return self.video_id.rsplit("_", 1)[0] if "_" in self.video_id else self.video_id

    @property
    def annotated_frames(self) -> list[int]:
        return sorted(self.boxes_by_frame)

    @property
    def num_boxes(self) -> int:
        return sum(len(b) for b in self.boxes_by_frame.values())


@dataclass
class Layout:
    root: Path
    videos: dict[str, VideoRecord]
    has_annotations: bool

    @property
    def labelled_ids(self) -> list[str]:
        return sorted(v for v, rec in self.videos.items() if rec.labelled)

    def split(self, data_cfg: DataConfig) -> tuple[list[str], list[str]]:
        """Split the labelled videos by video: ``val_videos``, else ``<root>/splits.json``, else seeded; the
        training side cut to its first ``max_train_videos`` where that is set."""
        train, val = self._split(data_cfg)
        return (train[: data_cfg.max_train_videos] if data_cfg.max_train_videos else train), val

    def _split(self, data_cfg: DataConfig) -> tuple[list[str], list[str]]:
        ids = self.labelled_ids
        if not ids:
            raise LayoutError(f"{self.root / ANNOTATIONS}: no labelled videos to split (a test layout)")
        if data_cfg.val_videos:
            unknown = [v for v in data_cfg.val_videos if v not in ids]
            if unknown:
                raise LayoutError(f"data.val_videos: unknown video id '{unknown[0]}' (labelled: {', '.join(ids)})")
            val = sorted(set(data_cfg.val_videos))
            return [v for v in ids if v not in val], val
        splits = self.root / SPLITS
        if splits.is_file():
            return _read_splits(splits, ids)
        shuffled = list(ids)
        random.Random(data_cfg.split_seed).shuffle(shuffled)
        n_val = min(round(len(ids) * data_cfg.val_fraction), len(ids) - 1)
        n_val = max(n_val, 1 if data_cfg.val_fraction > 0 and len(ids) > 1 else 0)
        val = sorted(shuffled[:n_val])
        return [v for v in ids if v not in val], val


def read_tune_ids(root: str | Path, ids: list[str]) -> list[str]:
    """``<root>/splits.json``'s optional ``"tune"`` list: labelled videos in neither split, on which inference
    settings are chosen (notebook 06); [] without one."""
    path = Path(root) / SPLITS
    if not path.is_file():
        return []
    data = _load_json(path)
    tune = data.get("tune", []) if isinstance(data, dict) else []
    if not isinstance(tune, list):
        raise LayoutError(f'{path}: "tune" must be a list of video ids')
    for vid in tune:
        if vid not in ids:
            raise LayoutError(f"{path}: 'tune' names unknown video id {vid!r}")
        if vid in data.get("train", []) or vid in data.get("val", []):
            raise LayoutError(f"{path}: video {vid!r} is in 'tune' and in another split")
    return [v for v in ids if v in tune]


def _read_splits(path: Path, ids: list[str]) -> tuple[list[str], list[str]]:
    data = _load_json(path)
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("train", "val")):
        raise LayoutError(f'{path}: expected {{"train": [...], "val": [...]}}')
    for key in ("train", "val"):
        for vid in data[key]:
            if vid not in ids:
                raise LayoutError(f"{path}: '{key}' names unknown video id {vid!r}")
    both = set(data["train"]) & set(data["val"])
    if both:
        raise LayoutError(f"{path}: video {sorted(both)[0]!r} is in both train and val")
    return [v for v in ids if v in data["train"]], [v for v in ids if v in data["val"]]


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise LayoutError(f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise LayoutError(f"{path}: cannot be read ({err})") from None


# ---------------------------------------------------------------------------------------------- files


def _reference_paths(folder: Path) -> list[Path]:
    ref_dir = folder / REFERENCE_DIR
    paths = sorted(p for p in ref_dir.glob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise LayoutError(f"{ref_dir}: no reference images (*.jpg, *.png)")
    for path in paths:
        _check_image(path)
    return paths


def _check_image(path: Path) -> None:
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise LayoutError(f"{path}: reference image cannot be read ({err.strerror})") from None
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None or img.size == 0:
        raise LayoutError(f"{path}: reference image is unreadable (corrupt, truncated or not an image)")


def probe_video_file(path: Path, *, truncated_ok: bool = False) -> tuple[int, float, int, int]:
    """(frames, fps, width, height) of a video; LayoutError when it is missing, corrupt or truncated.

    ``truncated_ok``: a video whose last frames do not decode is a warning and ``frames`` is 0 (unknown).
    """
    if not path.is_file():
        raise LayoutError(f"{path}: missing ({VIDEO_NAME} is required in every sample folder)")
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise LayoutError(f"{path}: video cannot be opened (corrupt or truncated)")
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = float(cap.get(cv2.CAP_PROP_FPS))
        if count <= 0:
            raise LayoutError(f"{path}: video has no frames (corrupt or truncated)")
        ok, frame = cap.read()
        if not ok or frame is None:
            raise LayoutError(f"{path}: first frame cannot be decoded (corrupt video)")
        height, width = frame.shape[:2]
        frames = _last_readable(cap, count)
        if frames == 0:
            message = f"{path}: video is truncated (frame {count - 1} of {count} cannot be decoded)"
            if not truncated_ok:
                raise LayoutError(message)
            log.warning("%s; using the frames that decode", message)
        if frames < count:
            log.warning("%s: container reports %d frames, %d decode; using %d", path, count, frames, frames)
    finally:
        cap.release()
    return frames, fps, width, height


def _last_readable(cap: cv2.VideoCapture, count: int) -> int:
    """The frame count that really decodes (0 when none of the last few frames decode)."""
    if count == 1:
        return 1
    for last in range(count - 1, max(count - 1 - FRAME_COUNT_SLACK, 0) - 1, -1):
        cap.set(cv2.CAP_PROP_POS_FRAMES, last)
        ok, _ = cap.read()
        if ok:
            return last + 1
    return 0


# ---------------------------------------------------------------------------------------------- annotations


def _parse_annotations(path: Path) -> dict[str, list[list[Box]]]:
    """annotations.json -> {video_id: [interval: [(frame, x1, y1, x2, y2), ...]]}, schema-checked."""
    data = _load_json(path)
    if not isinstance(data, list):
        raise LayoutError(f"{path}: expected a list of videos at the top level, got {type(data).__name__}")
    out: dict[str, list[list[Box]]] = {}
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise LayoutError(f"{path}: entry {i} is a {type(entry).__name__}, expected an object")
        vid = entry.get("video_id")
        if not isinstance(vid, str) or not vid:
            raise LayoutError(f"{path}: entry {i} has no 'video_id' string")
        if vid in out:
            raise LayoutError(f"{path}: entry {i}: video_id '{vid}' appears twice")
        groups = entry.get("annotations", None)
        if not isinstance(groups, list):
            raise LayoutError(f"{path}: entry {i} ('{vid}') has no 'annotations' list")
        out[vid] = [_parse_group(path, vid, j, g) for j, g in enumerate(groups)]
    return out


def _parse_group(path: Path, vid: str, j: int, group: Any) -> list[Box]:
    where = f"{path}: '{vid}' annotations[{j}]"
    if not isinstance(group, dict) or not isinstance(group.get("bboxes"), list):
        raise LayoutError(f"{where} has no 'bboxes' list")
    boxes = [_parse_box(f"{where} bboxes[{k}]", b) for k, b in enumerate(group["bboxes"])]
    return sorted(boxes, key=lambda b: b[0])


def _parse_box(where: str, box: Any) -> Box:
    if not isinstance(box, dict):
        raise LayoutError(f"{where} is a {type(box).__name__}, expected an object")
    for key in ("frame", "x1", "y1", "x2", "y2"):
        value = box.get(key)
        if value is None:
            raise LayoutError(f"{where} has no '{key}'")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            raise LayoutError(f"{where}: '{key}' must be a number, got {value!r}")
    frame = box["frame"]
    if isinstance(frame, float) and not frame.is_integer():
        raise LayoutError(f"{where}: 'frame' must be an integer, got {frame!r}")
    frame = int(frame)
    if frame < 0:
        raise LayoutError(f"{where}: frame {frame} is negative")
    x1, y1, x2, y2 = (float(box[k]) for k in ("x1", "y1", "x2", "y2"))
    if x2 <= x1:
        raise LayoutError(f"{where} (frame {frame}): x2 <= x1 ({x2:g} <= {x1:g})")
    if y2 <= y1:
        raise LayoutError(f"{where} (frame {frame}): y2 <= y1 ({y2:g} <= {y1:g})")
    return (frame, x1, y1, x2, y2)


def _attach_boxes(rec: VideoRecord, groups: list[list[Box]], ann_path: Path) -> None:
    """Check the boxes against the video (frame range, frame size), clip, and fill intervals/boxes_by_frame."""
    by_frame: dict[int, list[tuple[float, float, float, float]]] = {}
    clipped = repeated = 0
    for j, group in enumerate(groups):
        if not group:
            log.warning("%s: '%s' annotations[%d] has no boxes; skipped", ann_path, rec.video_id, j)
            continue
        kept: list[Box] = []
        for frame, x1, y1, x2, y2 in group:
            if rec.frames and frame >= rec.frames:
                raise LayoutError(
                    f"{ann_path}: '{rec.video_id}' frame {frame} is past the end of the video "
                    f"({rec.frames} frames in {rec.video_path.name})"
                )
            box = (x1, y1, x2, y2)
            if rec.width and rec.height:
                box = (max(x1, 0.0), max(y1, 0.0), min(x2, float(rec.width)), min(y2, float(rec.height)))
                if box[2] <= box[0] or box[3] <= box[1]:
                    raise LayoutError(
                        f"{ann_path}: '{rec.video_id}' frame {frame}: box ({x1:g}, {y1:g}, {x2:g}, "
                        f"{y2:g}) lies outside the {rec.width}x{rec.height} frame"
                    )
                clipped += box != (x1, y1, x2, y2)
            kept.append((frame, *box))
            same_frame = by_frame.setdefault(frame, [])
            if box in same_frame:  # one object annotated twice (overlapping intervals) counts once
                repeated += 1
            else:
                same_frame.append(box)
        rec.intervals.append(kept)
    if repeated:
        log.warning("%s: '%s' has %d boxes repeated on their frame; counted once", ann_path, rec.video_id, repeated)
    if clipped:
        log.warning("%s: '%s' has %d boxes reaching outside the frame; clipped", ann_path, rec.video_id, clipped)
    rec.boxes_by_frame = {f: np.asarray(b, dtype=np.float32).reshape(-1, 4) for f, b in sorted(by_frame.items())}


# ---------------------------------------------------------------------------------------------- entry points


def read_layout(root: str | Path, *, probe_video: bool = True) -> Layout:
    """Read and validate ``root``; ``probe_video=False`` skips opening the videos (no frame-range check)."""
    root = Path(root)
    samples = root / "samples"
    if not samples.is_dir():
        raise LayoutError(f"{samples}: no such folder (expected <root>/samples/<video_id>/...)")
    folders = {p.name: p for p in sorted(samples.iterdir()) if p.is_dir() and not p.name.startswith(".")}
    ann_path = root / ANNOTATIONS
    if ann_path.exists() and not ann_path.is_file():
        raise LayoutError(f"{ann_path}: is not a file (a folder?); a test layout has no annotations.json at all")
    groups = _parse_annotations(ann_path) if ann_path.is_file() else None
    if groups is not None:
        missing = [v for v in groups if v not in folders]
        if missing:
            raise LayoutError(f"{ann_path}: video_id '{missing[0]}' has no folder {samples / missing[0]}")
        extra = [v for v in folders if v not in groups]
        if extra:
            log.warning(
                "%s: %d sample folders have no annotations (test samples): %s", root, len(extra), ", ".join(extra)
            )
    if not folders:
        raise LayoutError(f"{samples}: no sample folders")
    videos = {}
    for vid, folder in folders.items():
        rec = _read_sample(folder, probe=probe_video)
        if groups is not None and vid in groups:
            _attach_boxes(rec, groups[vid], ann_path)
        else:
            rec.labelled = False
        videos[vid] = rec
    return Layout(root=root, videos=videos, has_annotations=groups is not None)


def _read_sample(folder: Path, *, probe: bool) -> VideoRecord:
    video_path = folder / VIDEO_NAME
    if not video_path.is_file():
        raise LayoutError(f"{video_path}: missing ({VIDEO_NAME} is required in every sample folder)")
    refs = _reference_paths(folder)
    rec = VideoRecord(video_id=folder.name, video_path=video_path, reference_paths=refs)
    if probe:
        rec.frames, rec.fps, rec.width, rec.height = probe_video_file(video_path)
    return rec


def check_layout(root: str | Path) -> dict[str, Any]:
    """Validate ``root`` and summarise it: the object ``refdet data check --json`` prints."""
    layout = read_layout(root)
    videos = {
        vid: {
            "frames": rec.frames,
            "fps": rec.fps,
            "width": rec.width,
            "height": rec.height,
            "annotated_frames": len(rec.boxes_by_frame),
            "boxes": rec.num_boxes,
            "references": len(rec.reference_paths),
            "intervals": len(rec.intervals),
            "labelled": rec.labelled,
        }
        for vid, rec in layout.videos.items()
    }
    totals = {k: sum(v[k] for v in videos.values()) for k in ("frames", "annotated_frames", "boxes", "references")}
    out: dict[str, Any] = {"videos": videos, "totals": {"videos": len(videos), **totals}}
    out["has_annotations"] = layout.has_annotations
    if layout.labelled_ids:
        train, val = layout.split(DataConfig())
        out["split"] = {"train": train, "val": val}
    return out
