"""Whole-video inference: frames, box mapping, reference caching, submissions and the ``refdet predict`` CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from refdet_core.checkpoint import CheckpointError
from refdet_core.cli import main
from refdet_core.config import config_from_dict
from refdet_core.data.frames import VideoError, letterbox, read_image_rgb
from refdet_core.data.layout import read_layout
from refdet_core.eval.candidates import Selection, top_candidates
from refdet_core.eval.postprocess import PostprocessConfig
from refdet_core.eval.predict import predict_to_submission
from refdet_core.eval.submission import read_submission
from refdet_core.eval.video import (
    VideoResult,
    clip_boxes,
    frame_batches,
    layout_ground_truth,
    letterbox_bgr,
    load_predictor,
    predict_layout,
    prefetch,
    tune_enter,
)
from refdet_core.models.head import dfl_decode
from refdet_core.models.refdet import RefDet
from refdet_core.train.checkpoint import save_checkpoint

TINY = {
    "img_size": 64,
    "support_size": 64,
    "k_shot": 3,
    "encoder_kwargs": {"depth": 2, "embed_dim": 64, "num_heads": 2, "img_size": 64},
    "width": 0.125,
    "proto_dims": [8, 16, 24, 32],
}
ALL_FRAMES = {"enter": 0.0, "leave": 0.0}  # post-processing that keeps every frame: submissions are never empty


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of a tiny untrained RefDet whose meta keeps every frame in post-processing."""
    cfg = config_from_dict(TINY, source="test")
    torch.manual_seed(0)
    model = RefDet(cfg.model, num_base_classes=2)
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint"
    return save_checkpoint(path, model=model, cfg=cfg, meta={"base_classes": ["a", "b"], "postprocess": ALL_FRAMES})


def decoded_count(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.grab():
        n += 1
    cap.release()
    return n


def test_letterbox_mapping_round_trip() -> None:
    """A box placed in letterbox px maps back to the native box (1280x720 -> 640: scale 0.5, pad_y 140)."""
    img = np.zeros((720, 1280, 3), np.uint8)
    _, lb = letterbox(img, 640)
    assert (lb.scale, lb.pad_x, lb.pad_y) == (0.5, 0.0, 140.0)
    native = lb.to_native(np.array([[100.0, 150.0, 120.0, 170.0]]))
    np.testing.assert_allclose(native, [[200.0, 20.0, 240.0, 60.0]])
    np.testing.assert_allclose(lb.to_letterbox(native), [[100.0, 150.0, 120.0, 170.0]])


def test_letterbox_bgr_equals_training_letterbox() -> None:
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (192, 320, 3), dtype=np.uint8)
    ours, lb = letterbox_bgr(bgr, 64)
    ref, lb_ref = letterbox(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), 64)
    np.testing.assert_array_equal(ours, ref)
    assert lb == lb_ref


def test_clip_boxes_marks_empty_boxes() -> None:
    boxes = np.array([[-5, -5, 50, 40], [10, 10, 400, 300], [-20, 5, -1, 30]], np.float32)
    clipped, valid = clip_boxes(boxes, 320, 192)
    np.testing.assert_allclose(clipped[:2], [[0, 0, 50, 40], [10, 10, 320, 192]])
    assert valid.tolist() == [True, True, False]


def test_top_candidates_start_with_the_top_anchor_and_do_not_overlap() -> None:
    g = torch.Generator().manual_seed(0)
    b, a, reg = 3, 50, 16
    logits = torch.randn(b, a, 4 * reg, generator=g)
    scores = torch.randn(b, a, 1, generator=g)
    anchors, strides = torch.rand(a, 2, generator=g) * 64, torch.full((a,), 8.0)
    cand_s, cand_b = top_candidates(logits, scores, anchors, strides, k=5, iou=0.5)
    assert cand_s.shape == (b, 5) and cand_b.shape == (b, 5, 4)
    idx = scores[..., 0].argmax(dim=1)
    full = dfl_decode(logits, anchors, strides)  # (B, A, 4)
    torch.testing.assert_close(cand_b[:, 0], full[torch.arange(b), idx])
    torch.testing.assert_close(cand_s[:, 0], scores[torch.arange(b), idx, 0].sigmoid())
    assert bool((cand_s[:, :-1] >= cand_s[:, 1:]).all())  # best first
    for i in range(b):
        kept = cand_b[i][cand_s[i] > 0]
        iou = box_iou(kept, kept).fill_diagonal_(0)
        assert float(iou.max()) <= 0.5


def test_top_candidates_pad_when_few_boxes_survive() -> None:
    logits = torch.zeros(1, 3, 64)  # every anchor decodes to the same box around one point: NMS keeps one
    scores = torch.tensor([[[0.0], [1.0], [-1.0]]])
    anchors, strides = torch.full((3, 2), 20.0), torch.full((3,), 8.0)
    cand_s, cand_b = top_candidates(logits, scores, anchors, strides, k=4, iou=0.5)
    assert cand_s[0, 0] == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item())
    assert cand_s[0, 1:].tolist() == [0.0, 0.0, 0.0] and not cand_b[0, 1:].any()


def test_prefetch_passes_items_and_errors() -> None:
    assert list(prefetch(iter(range(7)), depth=2)) == list(range(7))

    def broken():
        yield 1
        raise VideoError("boom")

    with pytest.raises(VideoError, match="boom"):
        list(prefetch(broken()))


def test_unreadable_video_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "drone_video.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(VideoError, match="drone_video.mp4"):
        list(frame_batches(bad, 64, 4))


def test_predict_video_one_box_per_decoded_frame(demo_root: Path, ckpt: Path) -> None:
    predictor = load_predictor(ckpt, batch=3)
    rec = read_layout(demo_root).videos["Backpack_0"]
    res = predictor.predict_video(rec.video_path, rec.reference_paths)
    n = decoded_count(rec.video_path)
    assert res.video_id == "Backpack_0" and (res.width, res.height) == (rec.width, rec.height)
    np.testing.assert_array_equal(res.frames, np.arange(n))
    assert res.scores.shape == (n,) and res.boxes.shape == (n, 4) and res.valid.shape == (n,)
    assert ((res.scores >= 0) & (res.scores <= 1)).all()
    b = res.boxes
    assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= res.width).all()
    assert (b[:, 3] <= res.height).all()
    assert set(res.track) <= set(res.frames.tolist())  # a dict: at most one box per frame
    assert len(res.track) == int(res.valid.sum())  # enter 0: every frame with a box is kept
    assert res.frames_per_s > 0


def test_references_encoded_once_per_video(demo_root: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    predictor = load_predictor(ckpt, batch=4)
    calls = {"set": 0, "encoder": 0}
    real_set, real_enc = predictor.model.set_reference_images, predictor.model.encode_support

    def counting_set(support):
        calls["set"] += 1
        assert tuple(support.shape) == (1, 3, 3, 64, 64)  # N = 1 video, K = 3 references
        return real_set(support)

    def counting_encode(support):
        calls["encoder"] += 1
        return real_enc(support)

    monkeypatch.setattr(predictor.model, "set_reference_images", counting_set)
    monkeypatch.setattr(predictor.model, "encode_support", counting_encode)
    results = predict_layout(demo_root, predictor, progress=False)
    assert len(results) == 4
    assert calls == {"set": 4, "encoder": 4}  # 40 frames per video in batches of 4: still once per video


def test_cached_inference_equals_direct(demo_root: Path, ckpt: Path) -> None:
    """Batched, cached whole-video inference gives what one direct forward per frame with the support gives."""
    predictor = load_predictor(ckpt, batch=7, check=Selection())
    rec = read_layout(demo_root).videos["Jacket_0"]
    res = predictor.predict_video(rec.video_path, rec.reference_paths)
    support = predictor.reference_tensor(rec.reference_paths)
    cap = cv2.VideoCapture(str(rec.video_path))
    for f in range(12):
        ok, bgr = cap.read()
        assert ok
        img, lb = letterbox(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), 64)
        with torch.no_grad():
            out = predictor.model(torch.from_numpy(img).permute(2, 0, 1)[None], support)
        score, box = top_candidates(out.box_logits, out.scores, out.anchors, out.strides, k=1, iou=0.5)
        native, _ = clip_boxes(lb.to_native(box[:, 0].numpy()), rec.width, rec.height)
        assert abs(float(score[0]) - float(res.scores[f])) < 1e-5
        np.testing.assert_allclose(native[0], res.boxes[f], atol=1e-3)
    cap.release()


def test_submission_on_test_split_has_every_video(demo_copy: Path, ckpt: Path, tmp_path: Path) -> None:
    shutil.rmtree(demo_copy / "annotations")
    out = tmp_path / "submission.json"
    summary = predict_to_submission(demo_copy, ckpt, out, device="cpu")
    assert summary["videos"] == 4 and summary["frames"] == 160 and summary["frames_per_s"] > 0
    sub = read_submission(out)
    assert sorted(sub) == sorted(read_layout(demo_copy).videos)
    assert all(len(track) > 0 for track in sub.values())  # enter 0 keeps every frame
    assert sub.n_dropped == 0


def test_empty_predictions_are_listed(demo_root: Path, ckpt: Path, tmp_path: Path) -> None:
    predictor = load_predictor(ckpt, post=PostprocessConfig(enter=1.01, leave=1.01))
    from refdet_core.eval.submission import write_submission
    from refdet_core.eval.video import tracks

    results = predict_layout(demo_root, predictor, video_ids=["Laptop_0"], progress=False)
    write_submission(tmp_path / "s.json", tracks(results), list(results))
    assert read_submission(tmp_path / "s.json") == {"Laptop_0": {}}


def test_cli_predict_writes_submission(demo_root: Path, ckpt: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "sub.json"
    assert main(["predict", "--data", str(demo_root), "--ckpt", str(ckpt), "--out", str(out)]) == 0
    assert '"frames_per_s"' in capsys.readouterr().out
    assert len(read_submission(out)) == 4


def test_cli_predict_missing_checkpoint_is_one_line(demo_root: Path, tmp_path: Path, capsys) -> None:
    rc = main(["predict", "--data", str(demo_root), "--ckpt", str(tmp_path / "nope"), "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "nope" in err
    assert not (tmp_path / "s").exists()
    with pytest.raises(CheckpointError):
        load_predictor(tmp_path / "nope")


def _result(scores: list[float]) -> VideoResult:
    n = len(scores)
    boxes = np.tile(np.array([[10, 10, 30, 30]], np.float32), (n, 1))
    return VideoResult("v", np.arange(n), np.array(scores, np.float32), boxes, np.ones(n, bool), 100, 100, 1.0)


def test_tune_enter_finds_the_separating_threshold() -> None:
    scores = [0.1] * 10 + [0.42] * 10 + [0.1] * 10  # uncalibrated: the object scores only 0.42
    gt = {"v": {f: [(10.0, 10.0, 30.0, 30.0)] for f in range(10, 20)}}
    post = PostprocessConfig(use_smoothing=False)
    tuned, table = tune_enter({"v": _result(scores)}, gt, post=post)
    assert table[tuned.enter] == pytest.approx(1.0) and 0.1 < tuned.enter <= 0.42
    assert table[0.5] == 0.0  # the default enter would miss the object entirely
    res = _result(scores).retrack(tuned)
    assert sorted(res.track) == list(range(10, 20))


def test_tune_enter_refines_enter_and_chooses_leave_in_a_narrow_band() -> None:
    scores = [0.8] * 10 + [0.87] * 10 + [0.8] * 10  # a similarity: the look-alike's frames score 0.8 too
    gt = {"v": {f: [(10.0, 10.0, 30.0, 30.0)] for f in range(10, 20)}}
    post = PostprocessConfig(use_smoothing=False)
    tuned, table = tune_enter({"v": _result(scores)}, gt, post=post)
    assert 0.8 < tuned.leave <= tuned.enter <= 0.87 and table[tuned.enter] == pytest.approx(1.0)
    assert sorted(_result(scores).retrack(tuned).track) == list(range(10, 20))
    coarse, _ = tune_enter({"v": _result(scores)}, gt, post=post, leave_ratios=(0.6,), refine=0)
    assert len(_result(scores).retrack(coarse).track) == 30  # leave = 0.6 enter keeps the look-alike's frames


def test_layout_ground_truth_matches_boxes(demo_root: Path) -> None:
    layout = read_layout(demo_root)
    vid = next(v for v in layout.labelled_ids if layout.videos[v].annotated_frames)
    gt = layout_ground_truth(layout, [vid])
    rec = layout.videos[vid]
    assert set(gt[vid]) == set(rec.boxes_by_frame)
    f = rec.annotated_frames[0]
    np.testing.assert_allclose(np.array(gt[vid][f]), rec.boxes_by_frame[f])


def test_reference_tensor_matches_episode_letterbox(demo_root: Path, ckpt: Path) -> None:
    predictor = load_predictor(ckpt)
    paths = read_layout(demo_root).videos["Backpack_0"].reference_paths
    t = predictor.reference_tensor(paths[:2])  # fewer than k_shot: repeated, as the episode dataset does
    assert t.dtype == torch.uint8 and tuple(t.shape) == (1, 3, 3, 64, 64)
    expect = letterbox(read_image_rgb(paths[0]), 64)[0]
    np.testing.assert_array_equal(t[0, 2].permute(1, 2, 0).numpy(), expect)
