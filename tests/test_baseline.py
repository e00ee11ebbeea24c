"""Template-matching baseline on tiny synthetic videos written with cv2.VideoWriter."""

import json

import cv2
import numpy as np
import pytest

from refdet_core.eval.baseline import (
    BaselineConfig,
    crop_centre,
    estimate_object_size,
    fit_baseline,
    make_templates,
    run_baseline,
    template_match_video,
)
from refdet_core.eval.metrics import st_iou
from refdet_core.eval.postprocess import PostprocessConfig
from refdet_core.eval.submission import read_annotations

W, H, OBJ = 320, 240, 24


def _object() -> np.ndarray:
    """A distinctive 24 x 24 BGR patch: coloured quadrants and a white cross."""
    obj = np.zeros((OBJ, OBJ, 3), np.uint8)
    obj[:12, :12], obj[:12, 12:], obj[12:, :12], obj[12:, 12:] = (0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 255, 255)
    obj[10:14, :], obj[:, 10:14] = 255, 255
    return obj


def _write_video(path, n_frames, visible, seed):
    """A textured background with the object pasted at a moving position on the ``visible`` frames."""
    rng = np.random.default_rng(seed)
    background = cv2.GaussianBlur(rng.integers(60, 200, (H, W, 3), dtype=np.uint8), (0, 0), 3)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (W, H))
    assert writer.isOpened()
    boxes = {}
    for f in range(n_frames):
        frame = background.copy()
        if f in visible:
            x, y = 40 + 6 * f, 60 + 3 * f
            frame[y : y + OBJ, x : x + OBJ] = _object()
            boxes[f] = (float(x), float(y), float(x + OBJ), float(y + OBJ))
        writer.write(frame)
    writer.release()
    return boxes


def _write_sample(root, vid, n_frames, visible, seed):
    folder = root / "samples" / vid
    (folder / "object_images").mkdir(parents=True)
    boxes = _write_video(folder / "drone_video.mp4", n_frames, visible, seed)
    ref = cv2.resize(_object(), (96, 96), interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(folder / "object_images" / "img_1.png"), ref)
    return boxes


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.parametrize(("max_side", "grey"), [(320, True), (200, False)])
def test_template_match_finds_pasted_object(tmp_path, max_side, grey):
    boxes = _write_sample(tmp_path, "Obj_0", 20, set(range(20)), seed=0)
    video = tmp_path / "samples" / "Obj_0" / "drone_video.mp4"
    refs = [tmp_path / "samples" / "Obj_0" / "object_images" / "img_1.png"]
    frames, scores, pred = template_match_video(
        video, refs, scales=(0.8, 1.0, 1.25), object_size=OBJ, max_side=max_side, grey=grey, ref_crop=1.0
    )
    assert frames.tolist() == list(range(20)) and pred.shape == (20, 4)
    ious = [_iou(pred[i], boxes[f]) for i, f in enumerate(frames)]
    assert np.mean(np.array(ious) > 0.5) >= 0.9
    assert scores.min() > 0.5


def test_frame_stride_and_scores_drop_without_object(tmp_path):
    boxes = _write_sample(tmp_path, "Obj_0", 16, set(range(8)), seed=1)
    video = tmp_path / "samples" / "Obj_0" / "drone_video.mp4"
    refs = sorted((tmp_path / "samples" / "Obj_0" / "object_images").glob("*.png"))
    det = template_match_video(video, refs, scales=(1.0,), object_size=OBJ, frame_stride=2, ref_crop=1.0)
    assert det.frames.tolist() == list(range(0, 16, 2))
    assert all(_iou(det.boxes[i], boxes[f]) > 0.5 for i, f in enumerate(det.frames) if f in boxes)
    assert det.scores[:4].min() > det.scores[4:].max() + 0.2


def test_make_templates_sizes():
    ref = np.zeros((50, 100), np.uint8)
    sizes = [t.shape for t in make_templates([ref], [20, 20, 40, 1])]
    assert sizes == [(10, 20), (20, 40), (4, 4)]
    assert crop_centre(np.zeros((100, 50)), 0.6).shape == (60, 30)
    assert crop_centre(ref, 1.0).shape == ref.shape


def test_fit_on_train_then_run_on_val(tmp_path):
    gt_boxes = {
        "Obj_0": _write_sample(tmp_path, "Obj_0", 24, set(range(4, 18)), seed=2),
        "Obj_1": _write_sample(tmp_path, "Obj_1", 24, set(range(8, 20)), seed=3),
    }
    annotations = [
        {
            "video_id": vid,
            "annotations": [
                {"bboxes": [{"frame": f, **dict(zip(("x1", "y1", "x2", "y2"), b))} for f, b in boxes.items()]}
            ],
        }
        for vid, boxes in gt_boxes.items()
    ]
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "annotations.json").write_text(json.dumps(annotations))
    gt = read_annotations(tmp_path / "annotations" / "annotations.json")
    assert estimate_object_size(gt, ["Obj_0"]) == pytest.approx(OBJ)

    cfg = BaselineConfig(scales=(0.8, 1.0, 1.25), object_size=80.0, ref_crop=1.0, post=PostprocessConfig(min_len=2))
    tuned = fit_baseline(tmp_path, ["Obj_0"], gt, cfg=cfg)
    assert tuned.cfg.object_size == pytest.approx(OBJ)
    assert tuned.mean_st_iou == max(tuned.table.values()) > 0.5
    assert tuned.cfg.post.enter == tuned.enter and tuned.cfg.post.leave == pytest.approx(tuned.leave)

    pred = run_baseline(tmp_path, ["Obj_1"], cfg=tuned.cfg)
    assert all(len(v) == 5 for v in pred["Obj_1"].values())  # ScoredTrack
    assert st_iou({"Obj_1": gt["Obj_1"]}, pred)["mean_st_iou"] > 0.5


def test_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing drone_video.mp4"):
        run_baseline(tmp_path, ["Nope_0"], cfg=BaselineConfig())
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    ref = tmp_path / "r.png"
    cv2.imwrite(str(ref), _object())
    with pytest.raises(ValueError, match="bad.mp4"):
        template_match_video(bad, [ref], scales=(1.0,))
