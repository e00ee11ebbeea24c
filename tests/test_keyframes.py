"""Detecting on every k-th frame (``eval/keyframes.py``) and computing re-ID / colour only where they are used."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from test_video import TINY as VIDEO_TINY

from refdet_core.cli import main
from refdet_core.config import config_from_dict
from refdet_core.data.layout import read_layout
from refdet_core.eval.candidates import Selection
from refdet_core.eval.keyframes import fill_between
from refdet_core.eval.video import frame_batches, load_predictor
from refdet_core.models.refdet import RefDet
from refdet_core.train.checkpoint import save_checkpoint

TINY = {**VIDEO_TINY, "ref_match": True, "match_size": 32}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained RefDet with the re-ID match path, post-processing that keeps every frame."""
    cfg = config_from_dict(TINY, source="test")
    torch.manual_seed(0)
    model = RefDet(cfg.model, num_base_classes=2)
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint"
    meta = {"base_classes": ["a", "b"], "postprocess": {"enter": 0.0, "leave": 0.0}}
    return save_checkpoint(path, model=model, cfg=cfg, meta=meta)


def test_boxes_between_overlapping_key_frames_move_linearly() -> None:
    keys = np.array([0, 4])
    boxes = np.array([[0, 0, 10, 10], [4, 0, 14, 10]], dtype=np.float32)
    scores, out, valid = fill_between(keys, np.array([0.9, 0.5]), boxes, np.array([True, True]), 6)
    np.testing.assert_allclose(out[:5, 0], [0, 1, 2, 3, 4])
    np.testing.assert_allclose(scores[:5], [0.9, 0.5, 0.5, 0.5, 0.5])
    assert valid.all()
    np.testing.assert_array_equal(out[5], boxes[1])  # after the last key frame: its detection
    assert scores[5] == pytest.approx(0.5)


def test_frames_between_unrelated_key_frames_take_the_nearer_one() -> None:
    keys = np.array([0, 4, 8])
    boxes = np.array([[0, 0, 10, 10], [50, 50, 60, 60], [52, 50, 62, 60]], dtype=np.float32)
    valid = np.array([True, True, False])
    scores, out, ok = fill_between(keys, np.array([0.9, 0.8, 0.0]), boxes, valid, 9)
    np.testing.assert_array_equal(out[1], boxes[0])  # no overlap between keys 0 and 4: nearest, ties to the earlier
    np.testing.assert_array_equal(out[2], boxes[0])
    np.testing.assert_array_equal(out[3], boxes[1])
    assert ok[:7].all() and not ok[7:].any()  # frames nearer the invalid key 8 are invalid
    assert scores[3] == pytest.approx(0.8) and scores[7] == 0.0


def test_every_kth_frame_is_read_and_every_frame_counted(demo_root: Path) -> None:
    video = read_layout(demo_root).videos["Backpack_0"].video_path
    full = list(frame_batches(video, 64, 4))
    every = list(frame_batches(video, 64, 4, every=3))
    frames = np.concatenate([b.frames for b in full])
    keys = np.concatenate([b.index for b in every])
    np.testing.assert_array_equal(keys, np.arange(0, len(frames), 3))
    np.testing.assert_array_equal(np.concatenate([b.frames for b in every]), frames[keys])
    assert every[-1].decoded == full[-1].decoded == len(frames)


def test_detecting_every_second_frame_keeps_the_key_frames_detections(demo_root: Path, ckpt: Path) -> None:
    rec = read_layout(demo_root).videos["Jacket_0"]
    predictor = load_predictor(ckpt, batch=4)
    full = predictor.predict_video(rec.video_path, rec.reference_paths)
    predictor.detect_every = 2
    half = predictor.predict_video(rec.video_path, rec.reference_paths)
    np.testing.assert_array_equal(half.frames, full.frames)
    np.testing.assert_array_equal(half.key_frames, full.frames[::2])
    np.testing.assert_allclose(half.scores[::2], full.scores[::2], atol=1e-6)
    np.testing.assert_allclose(half.boxes[::2], full.boxes[::2], atol=1e-4)
    assert len(half.candidates.scores) == len(half.key_frames)
    again = half.reselect(Selection(tracks=True), predictor.post)  # 06's arms re-select on the key frames
    assert len(again.scores) == len(half.frames)


def test_reid_and_colour_only_where_the_selection_uses_them(demo_root: Path, ckpt: Path) -> None:
    rec = read_layout(demo_root).videos["Jacket_0"]
    plain = load_predictor(ckpt, batch=4, check=Selection())
    assert plain.match is not None
    skipped = plain.predict_video(rec.video_path, rec.reference_paths).candidates
    assert not skipped.reid.any() and not skipped.colour.any()
    plain.all_cues = True
    everything = plain.predict_video(rec.video_path, rec.reference_paths).candidates
    assert everything.reid.any() and everything.colour.any()
    used = load_predictor(ckpt, batch=4, check=replace(Selection(), reid_weight=0.5, colour=True))
    cands = used.predict_video(rec.video_path, rec.reference_paths).candidates
    np.testing.assert_allclose(cands.reid, everything.reid, atol=1e-6)
    np.testing.assert_allclose(cands.colour, everything.colour, atol=1e-6)


def test_predict_detect_every_flag(demo_root: Path, ckpt: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "sub.json"
    assert main(["predict", "--data", str(demo_root), "--ckpt", str(ckpt), "--out", str(out), "-q",
                 "--detect-every", "3"]) == 0  # fmt: skip
    assert out.is_file()
    with pytest.raises(SystemExit):
        main(["predict", "--data", str(demo_root), "--ckpt", str(ckpt), "--out", str(out), "--detect-every", "0"])
    assert "--detect-every" in capsys.readouterr().err
