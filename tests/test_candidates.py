"""Per-frame candidates and the reference colour check (``eval.candidates``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from refdet_core.eval.candidates import Candidates, Selection, candidate_colours, reference_histograms
from refdet_core.eval.postprocess import PostprocessConfig
from refdet_core.eval.video import VideoResult

RED, BLUE, GREEN = (220, 30, 30), (30, 40, 210), (60, 140, 50)


def _cands(scores, colour, valid=None, reid=None) -> Candidates:
    scores = np.asarray(scores, np.float32)
    t, k = scores.shape
    boxes = np.stack([np.tile([[10.0 * j, 0.0, 10.0 * j + 8, 8.0]], (t, 1)) for j in range(k)], axis=1)
    valid = np.ones((t, k), bool) if valid is None else np.asarray(valid)
    reid = np.zeros((t, k), np.float32) if reid is None else np.asarray(reid, np.float32)
    return Candidates(scores, boxes.astype(np.float32), valid, np.asarray(colour, np.float32), reid)


def test_without_the_check_the_detector_score_picks() -> None:
    c = _cands([[0.9, 0.2], [0.3, 0.6]], [[0.1, 1.0], [1.0, 0.1]])
    scores, boxes, valid = c.select(Selection())
    np.testing.assert_allclose(scores, [0.9, 0.6])
    np.testing.assert_allclose(boxes[:, 0], [0.0, 10.0])
    assert valid.all()


def test_the_check_prefers_the_matching_colours() -> None:
    c = _cands([[0.9, 0.2]], [[0.5, 0.95]])
    check = Selection(colour=True, power=4.0, model_weight=0.25)
    scores, boxes, _ = c.select(check)
    assert boxes[0, 0] == 10.0  # the second box: its colours match
    assert scores[0] == pytest.approx(0.75 * 0.95**4 + 0.25 * 0.2, abs=1e-6)
    np.testing.assert_allclose(
        c.combined(check), [[0.75 * 0.5**4 + 0.25 * 0.9, 0.75 * 0.95**4 + 0.25 * 0.2]], rtol=1e-6
    )


def test_invalid_candidates_are_never_picked() -> None:
    c = _cands([[0.9, 0.2], [0.8, 0.7]], [[1.0, 0.2], [1.0, 1.0]], valid=[[False, True], [False, False]])
    scores, boxes, valid = c.select(Selection(colour=True))
    assert valid.tolist() == [True, False]
    assert boxes[0, 0] == 10.0 and scores[1] == 0.0


def test_bad_settings_are_one_clear_error() -> None:
    for bad in ({"candidates": 0}, {"bins": 1}, {"power": 0.0}, {"model_weight": 1.5}, {"nms_iou": 0.0}):
        with pytest.raises(ValueError, match="got"):
            Selection(**bad)


def _image(colour, size=64) -> torch.Tensor:
    return torch.tensor(colour, dtype=torch.uint8)[:, None, None].expand(3, size, size).clone()


def test_colour_match_finds_the_box_with_the_reference_colours() -> None:
    frame = _image(GREEN, 96)
    frame[:, 10:40, 10:40] = _image(RED, 30)
    frame[:, 50:80, 50:80] = _image(BLUE, 30)
    ref = _image(GREEN, 64)  # a reference photo: the red object on a green background
    ref[:, 16:48, 16:48] = _image(RED, 32)
    boxes = torch.tensor([[[10.0, 10.0, 40.0, 40.0], [50.0, 50.0, 80.0, 80.0], [0.0, 50.0, 30.0, 80.0]]])
    coef = candidate_colours(frame[None], boxes, reference_histograms(ref[None], 4), 4)
    assert coef.shape == (1, 3)
    red, blue, grass = coef[0].tolist()
    assert red > 0.75 and red > blue + 0.4 and red > grass + 0.1, (red, blue, grass)  # the ref is part grass
    assert all(0.0 <= v <= 1.0 for v in (red, blue, grass))


def test_reselect_switches_the_picked_box_and_the_track() -> None:
    n = 6
    scores = np.tile([[0.8, 0.3]], (n, 1))
    colour = np.tile([[0.2, 1.0]], (n, 1))
    res = VideoResult(
        "v", np.arange(n), np.zeros(0), np.zeros(0), np.zeros(0), 100, 100, 1.0, candidates=_cands(scores, colour)
    )
    post = PostprocessConfig(enter=0.5, leave=0.3, use_smoothing=False)
    det = res.reselect(Selection(), post)
    col = res.reselect(Selection(colour=True), post)
    assert {tuple(b) for b in det.boxes} == {(0.0, 0.0, 8.0, 8.0)}
    assert {tuple(b) for b in col.boxes} == {(10.0, 0.0, 18.0, 8.0)}
    assert sorted(col.track) == list(range(n)) and col.track[0][:4] == (10.0, 0.0, 18.0, 8.0)


def test_batched_nms_per_frame_equals_a_loop_over_frames():
    """One batched NMS call keeps, per frame, the same boxes in the same order as NMS frame by frame."""
    from torchvision.ops import nms

    from refdet_core.eval.candidates import nms_per_frame

    g = torch.Generator().manual_seed(0)
    b, p, k = 5, 60, 7
    xy = torch.rand(b, p, 2, generator=g) * 80
    boxes = torch.cat([xy, xy + 5 + torch.rand(b, p, 2, generator=g) * 30], dim=-1)
    scores = torch.rand(b, p, generator=g)
    scores[3] = 0.0  # a frame whose boxes all tie
    got_s, got_b = nms_per_frame(scores, boxes, k=k, iou=0.5)
    for i in range(b):
        keep = nms(boxes[i], scores[i], 0.5)[:k]
        assert torch.equal(got_s[i, : len(keep)], scores[i, keep]) and torch.equal(
            got_b[i, : len(keep)], boxes[i, keep]
        )
        assert (got_s[i, len(keep) :] == 0).all()
