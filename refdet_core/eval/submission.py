"""The challenge JSON formats: ground-truth ``annotations.json`` and the submission, read, written and scored.

Both are a list of ``{"video_id": str, KEY: [{"bboxes": [{"frame", "x1", "y1", "x2", "y2"}, ...]}, ...]}`` with
KEY = ``"annotations"`` (ground truth) or ``"detections"`` (submission); each group is one interval. Frames are
0-based ints, boxes absolute pixels of the original frame with x2 > x1 and y2 > y1.

Written submissions keep coordinates as floats rounded to 2 decimals (integers are valid input too); one
``detections`` group per run of consecutive frames; every requested video present, ``[]`` when nothing is found.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from refdet_core.destination import DestinationError
from refdet_core.io import atomic_write_json

if TYPE_CHECKING:  # metrics imports torch: scoring loads it, reading and checking files does not
    from refdet_core.eval.metrics import GroundTruth, Track

log = logging.getLogger(__name__)

_COORDS = ("x1", "y1", "x2", "y2")
_DECIMALS = 2


class SubmissionError(ValueError):
    """A malformed submission file; the message is one line naming the file, the video and the problem."""


class AnnotationError(ValueError):
    """A malformed annotations.json; the message is one line naming the file, the video and the problem."""


class Submission(dict):
    """``{video_id: Track}`` as read from a submission, plus ``dropped``: extra boxes ignored per video."""

    def __init__(self, tracks: Mapping[str, Track], dropped: Mapping[str, int]) -> None:
        super().__init__(tracks)
        self.dropped: dict[str, int] = dict(dropped)

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())


def _load_json(path: Path, error: type[ValueError]) -> object:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder, expected a JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path}: not valid JSON ({e})") from None


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _parse_box(raw: object, where: str, error: type[ValueError]) -> tuple[int, tuple[float, float, float, float]]:
    """One ``{"frame", "x1", "y1", "x2", "y2"}`` dict -> (frame, box); ``where`` prefixes the error."""
    if not isinstance(raw, dict):
        raise error(f"{where}: a bbox is not an object: {raw!r:.60}")
    missing = [k for k in ("frame", *_COORDS) if k not in raw]
    if missing:
        raise error(f"{where}: a bbox misses key(s) {missing}")
    frame = raw["frame"]
    if not isinstance(frame, int) or isinstance(frame, bool) or frame < 0:
        raise error(f"{where}: frame is not a non-negative int: {frame!r}")
    if not all(_is_number(raw[k]) for k in _COORDS):
        raise error(f"{where}: frame {frame}: coordinates are not finite numbers: {[raw[k] for k in _COORDS]}")
    x1, y1, x2, y2 = (float(raw[k]) for k in _COORDS)
    if x2 <= x1 or y2 <= y1:
        raise error(f"{where}: frame {frame}: box has x2 <= x1 or y2 <= y1: {(x1, y1, x2, y2)}")
    return frame, (x1, y1, x2, y2)


def _parse_groups(
    path: Path, data: object, key: str, error: type[ValueError]
) -> dict[str, list[tuple[int, tuple[float, float, float, float]]]]:
    """The shared schema -> ``{video_id: [(frame, box), ...]}`` in file order."""
    if not isinstance(data, list):
        raise error(f"{path}: top level is {type(data).__name__}, expected a list of videos")
    out: dict[str, list[tuple[int, tuple[float, float, float, float]]]] = {}
    for i, entry in enumerate(data):
        if not isinstance(entry, dict) or "video_id" not in entry or key not in entry:
            raise error(f"{path}: entry {i}: expected an object with keys 'video_id' and '{key}'")
        vid = entry["video_id"]
        if not isinstance(vid, str) or not vid:
            raise error(f"{path}: entry {i}: video_id is not a non-empty string: {vid!r}")
        if vid in out:
            raise error(f"{path}: video {vid}: listed more than once")
        groups = entry[key]
        if not isinstance(groups, list):
            raise error(f"{path}: video {vid}: '{key}' is not a list")
        boxes: list[tuple[int, tuple[float, float, float, float]]] = []
        for group in groups:
            if not isinstance(group, dict) or not isinstance(group.get("bboxes"), list):
                raise error(f"{path}: video {vid}: an entry of '{key}' is not an object with a 'bboxes' list")
            boxes.extend(_parse_box(b, f"{path}: video {vid}", error) for b in group["bboxes"])
        out[vid] = boxes
    return out


def read_annotations(path: str | Path) -> GroundTruth:
    """Read a challenge ``annotations.json`` -> ``{video_id: {frame: [box, ...]}}`` (several boxes per frame kept).

    Raises AnnotationError (one line: file, video, problem) when the file does not follow the schema.
    """
    path = Path(path)
    parsed = _parse_groups(path, _load_json(path, AnnotationError), "annotations", AnnotationError)
    gt: GroundTruth = {}
    repeated = 0
    for vid, boxes in parsed.items():
        frames: dict[int, list] = {}
        for frame, box in boxes:
            same = frames.setdefault(frame, [])
            if box in same:  # the same box twice on a frame (overlapping intervals) is one object
                repeated += 1
                continue
            same.append(box)
        gt[vid] = frames
    if repeated:
        log.warning("%s: %d boxes repeated on the same frame were counted once", path, repeated)
    return gt


def read_submission(path: str | Path, *, known_videos: Collection[str] | None = None) -> Submission:
    """Read a submission -> ``{video_id: Track}``; where a frame has several boxes the first counts.

    The ignored extra boxes are counted in ``result.dropped`` (and logged). With ``known_videos`` a video id
    outside it is an error. Raises SubmissionError (one line: file, video, problem) on a malformed file.
    """
    path = Path(path)
    parsed = _parse_groups(path, _load_json(path, SubmissionError), "detections", SubmissionError)
    if known_videos is not None:
        known = set(known_videos)
        for vid in parsed:
            if vid not in known:
                raise SubmissionError(f"{path}: video {vid}: unknown video id")
    tracks: dict[str, Track] = {}
    dropped: dict[str, int] = {}
    for vid, boxes in parsed.items():
        track: Track = {}
        for frame, box in boxes:
            if frame in track:
                dropped[vid] = dropped.get(vid, 0) + 1
            else:
                track[frame] = box
        tracks[vid] = track
    if dropped:
        log.warning("%s: %d extra boxes on frames that already had one were ignored", path, sum(dropped.values()))
    return Submission(tracks, dropped)


def contiguous_runs(frames: Sequence[int]) -> list[list[int]]:
    """Sorted frames split into runs of consecutive frames: [1, 2, 3, 7, 8] -> [[1, 2, 3], [7, 8]]."""
    runs: list[list[int]] = []
    for f in sorted(frames):
        if runs and f == runs[-1][-1] + 1:
            runs[-1].append(f)
        else:
            runs.append([f])
    return runs


def _bbox_entry(vid: str, frame: object, box: Sequence[float]) -> dict:
    if not isinstance(frame, int) or isinstance(frame, bool) or frame < 0:
        raise ValueError(f"video {vid}: frame is not a non-negative int: {frame!r}")
    x1, y1, x2, y2 = (round(float(v), _DECIMALS) for v in box[:4])
    if not (x2 > x1 and y2 > y1 and all(map(math.isfinite, (x1, y1, x2, y2)))):
        raise ValueError(f"video {vid}: frame {frame}: box is not finite with x2 > x1 and y2 > y1: {tuple(box[:4])}")
    return {"frame": frame, "x1": x1, "y1": y1, "x2": x2, "y2": y2}


def submission_json(pred: Mapping[str, Mapping[int, Sequence[float]]], video_ids: Sequence[str]) -> list[dict]:
    """The submission object: every id of ``video_ids`` in that order, one detections group per run of frames."""
    extra = sorted(set(pred) - set(video_ids))
    if extra:
        raise ValueError(f"predictions for video ids not in video_ids: {extra[:5]}")
    out = []
    for vid in video_ids:
        track = pred.get(vid, {})
        groups = [{"bboxes": [_bbox_entry(vid, f, track[f]) for f in run]} for run in contiguous_runs(list(track))]
        out.append({"video_id": vid, "detections": groups})
    return out


def write_submission(
    path: str | Path, pred: Mapping[str, Mapping[int, Sequence[float]]], video_ids: Sequence[str]
) -> None:
    """Write ``pred`` (Tracks or ScoredTracks; scores are not written) as a challenge submission, atomically."""
    atomic_write_json(path, submission_json(pred, video_ids))


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def check_submission_path(path: str | Path, *, force: bool = False) -> None:
    """Before inference: ``path`` can take a submission (a new file, or an older submission unless ``force``)."""
    path = Path(path)
    if path.is_dir():
        raise DestinationError(f"{path}: is a folder; --out names the submission JSON file to write")
    parent = path.parent if str(path.parent) else Path(".")
    existing = next((p for p in (parent, *parent.parents) if p.exists()), Path("."))
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise DestinationError(f"{existing}: cannot write the submission here (not a writable folder)")
    if not path.exists() or force:
        return
    try:
        data = json.loads(path.read_text())
        ours = isinstance(data, list) and all(isinstance(e, dict) and "detections" in e for e in data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        ours = False
    if not ours:
        raise DestinationError(f"{path}: exists and is not a submission; refusing to replace it (pass --force)")


def score_files(gt_path: str | Path, pred_path: str | Path, *, allow_missing: bool = False) -> dict:
    """Score a submission file against an annotations file (what ``refdet score --json`` prints).

    A ground-truth video missing from the submission is an error naming it, or with ``allow_missing`` a warning
    (it scores as a video with no predictions).

    Returns:
        ``{"videos": {id: st_iou}, "mean_st_iou": x, "presence": {"precision", "recall", "f1", "tp", "fp", "fn"},
        "map50": x or None, "dropped_boxes": n}``. mAP uses score 1.0 for every box (submissions carry none).
    """
    gt = read_annotations(gt_path)
    pred = read_submission(pred_path, known_videos=gt)
    missing = [vid for vid in gt if vid not in pred]
    if missing:
        what = f"{pred_path}: {len(missing)} of {len(gt)} videos missing ({', '.join(missing[:5])})"
        if not allow_missing:
            raise SubmissionError(f"{what}; pass --allow-missing to score them as no predictions")
        log.warning("%s: scored as no predictions", what)
    from refdet_core.eval.metrics import map50, presence_prf, st_iou  # torch loads only once the files are good

    result = st_iou(gt, pred)
    return {
        "videos": result["videos"],
        "mean_st_iou": result["mean_st_iou"],
        "presence": presence_prf(gt, pred),
        "map50": _finite_or_none(map50(gt, pred)),
        "dropped_boxes": pred.n_dropped,
    }
