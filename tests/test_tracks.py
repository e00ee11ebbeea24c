"""Tracks over candidates (eval/tracks.py) and the selection arms of the validation protocol (eval/validate.py)."""

from __future__ import annotations

import numpy as np
import pytest

from refdet_core.eval.candidates import Candidates, Selection
from refdet_core.eval.postprocess import PostprocessConfig
from refdet_core.eval.tracks import TrackConfig, box_iou, link, track_scores
from refdet_core.eval.validate import ARMS, arm_grid, choose, fixed_choice, swap_pairs, with_target
from refdet_core.eval.video import VideoResult


def _two_objects(n: int = 12) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two static objects; object A scores 0.6 in every frame, look-alike B 0.9 in two frames and 0.1 else."""
    a, b = [10.0, 10.0, 20.0, 20.0], [60.0, 60.0, 70.0, 70.0]
    boxes = np.tile(np.array([a, b], np.float32), (n, 1, 1))
    scores = np.tile(np.array([0.6, 0.1], np.float32), (n, 1))
    scores[[3, 7], 1] = 0.9
    return boxes, scores, np.ones((n, 2), bool)


def test_link_follows_each_object_and_starts_new_tracks_after_a_gap() -> None:
    boxes, scores, valid = _two_objects()
    ids = link(boxes, scores, valid, TrackConfig())
    assert len(set(ids[:, 0])) == 1 and len(set(ids[:, 1])) == 1 and ids[0, 0] != ids[0, 1]
    valid[2:9, 0] = False  # object A unseen for 7 frames > max_age 5: a new track
    ids = link(boxes, scores, valid, TrackConfig(max_age=5))
    assert ids[0, 0] != ids[10, 0] and (ids[2:9, 0] == -1).all()


def _moving_box(frames: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 10 px box moving ``step`` px per frame to the right, seen at ``frames`` -> boxes (M, 1, 4), scores,
    valid."""
    x = frames.astype(np.float32) * step
    boxes = np.stack([x, np.full_like(x, 50.0), x + 10.0, np.full_like(x, 60.0)], axis=1)[:, None, :]
    return boxes.astype(np.float32), np.full((len(frames), 1), 0.8, np.float32), np.ones((len(frames), 1), bool)


def test_the_buffered_iou_keeps_a_small_moving_box_on_its_track() -> None:
    """Every 3rd frame a 10 px box moving 2 px per frame overlaps its last box by IoU 0.25 (< 0.3); grown by a
    quarter on each side, by 0.43."""
    keys = np.arange(0, 30, 3)
    boxes, scores, valid = _moving_box(keys, 2.0)
    assert box_iou(boxes[0], boxes[1])[0, 0] == pytest.approx(0.25)
    assert len(set(link(boxes, scores, valid, TrackConfig(motion=False), keys)[:, 0])) == 1
    plain = link(boxes, scores, valid, TrackConfig(buffer=0.0, motion=False), keys)
    assert len(set(plain[:, 0])) == len(keys)


def test_a_tracks_velocity_carries_it_across_frames_not_detected() -> None:
    """A 10 px box moving 4 px per frame, seen at frames 0, 1, then every 3rd: 12 px between key frames leaves
    even the grown boxes apart (IoU 0.11), but the velocity learnt from frames 0 and 1 predicts where it is."""
    keys = np.array([0, 1, 4, 7, 10, 13, 16])
    boxes, scores, valid = _moving_box(keys, 4.0)
    assert len(set(link(boxes, scores, valid, TrackConfig(), keys)[:, 0])) == 1
    still = link(boxes, scores, valid, TrackConfig(motion=False), keys)
    assert still[1, 0] == still[0, 0] and len(set(still[:, 0])) == len(keys) - 1


def test_track_ages_count_frames_not_rows() -> None:
    """With key frames 0, 3, 6, ..., a track unseen for one key frame has been unseen 6 frames (> max_age 5)."""
    keys = np.arange(0, 30, 3)
    boxes = np.tile(np.array([[[10, 10, 20, 20]]], np.float32), (len(keys), 1, 1))
    scores, valid = np.full((len(keys), 1), 0.8, np.float32), np.ones((len(keys), 1), bool)
    valid[4] = False
    assert len(set(link(boxes, scores, valid, TrackConfig(max_age=5))[valid])) == 1  # rows: 2 apart
    ids = link(boxes, scores, valid, TrackConfig(max_age=5), keys)
    assert ids[3, 0] != ids[5, 0]  # frames 9 and 15: 6 apart


def test_per_track_decision_ignores_a_flickering_look_alike() -> None:
    boxes, scores, valid = _two_objects()
    per_frame = Candidates(scores, boxes, valid, np.zeros_like(scores), np.zeros_like(scores))
    _, frame_boxes, _ = per_frame.select(Selection())
    assert frame_boxes[3, 0] == 60.0  # frame by frame, the look-alike wins where it flickers up
    s, track_boxes, ok = per_frame.select(Selection(tracks=True))
    assert (track_boxes[:, 0] == 10.0).all() and ok.all()
    assert s == pytest.approx(np.full(12, 0.6), abs=1e-6)  # the track's mean score


def test_track_scores_weigh_short_tracks_down() -> None:
    ids = np.array([[0, 1], [0, -1], [0, -1]])
    scores = np.array([[0.5, 0.9], [0.5, 0.0], [0.5, 0.0]], np.float32)
    np.testing.assert_allclose(track_scores(ids, scores, min_hits=3), [0.5, 0.3], rtol=1e-6)


def test_box_iou() -> None:
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    np.testing.assert_allclose(box_iou(a, b), [[1.0, 1 / 3, 0.0]], rtol=1e-6)


def test_reid_weight_reranks_by_the_reference_match() -> None:
    scores = np.array([[0.9, 0.6]], np.float32)
    reid = np.array([[0.1, 0.9]], np.float32)
    c = Candidates(
        scores,
        np.zeros((1, 2, 4), np.float32) + [[[0, 0, 1, 1]], [[5, 5, 6, 6]]][0],
        np.ones((1, 2), bool),
        np.zeros_like(scores),
        reid,
    )
    np.testing.assert_allclose(c.combined(Selection(reid_weight=0.5)), [[0.5, 0.75]], rtol=1e-6)
    np.testing.assert_allclose(c.combined(Selection()), scores)
    with pytest.raises(ValueError, match="reid_weight"):
        Selection(reid_weight=1.5)


def test_bad_track_settings_are_one_clear_error() -> None:
    with pytest.raises(ValueError, match="got"):
        TrackConfig(iou=0.0)
    with pytest.raises(ValueError, match="buffer"):
        TrackConfig(buffer=-0.1)


def _result(vid: str, scores: np.ndarray, reid: np.ndarray, boxes: np.ndarray) -> VideoResult:
    t, k = scores.shape
    cands = Candidates(scores, boxes, np.ones((t, k), bool), np.zeros_like(scores), reid)
    return VideoResult(vid, np.arange(t), np.zeros(0), np.zeros(0), np.zeros(0), 100, 100, 1.0, candidates=cands)


def test_choose_picks_the_reid_weight_that_wins_on_the_tuning_videos() -> None:
    """The detector prefers a look-alike; re-ID prefers the target; `choose` finds that on the tuning videos."""
    n = 20
    boxes = np.tile(np.array([[10, 10, 20, 20], [60, 60, 70, 70]], np.float32), (n, 1, 1))
    scores = np.tile(np.array([0.6, 0.8], np.float32), (n, 1))
    reid = np.tile(np.array([0.95, 0.1], np.float32), (n, 1))
    gt = {"v": {f: [(10.0, 10.0, 20.0, 20.0)] for f in range(n)}}
    chosen = choose(
        {"v": _result("v", scores, reid, boxes)}, gt, base=Selection(), post=PostprocessConfig(), has_reid=True
    )
    assert set(chosen) == set(ARMS)
    assert chosen["reid"].selection.reid_weight > 0 and chosen["reid"].tune_st_iou > 0.9
    assert chosen["detector_only"].tune_st_iou < 0.1  # it picks the look-alike every frame
    assert chosen["full"].selection.tracks


def _narrow_band(vid: str, level: float) -> tuple[VideoResult, dict]:
    """A video whose target (frames 10..19) scores ``level`` and whose look-alike, there in every frame, scores
    ``level - 0.1``: the order holds in every video, the level does not."""
    n = 30
    boxes = np.tile(np.array([[10, 10, 20, 20], [60, 60, 70, 70]], np.float32), (n, 1, 1))
    scores = np.tile(np.array([0.0, level - 0.1], np.float32), (n, 1))
    scores[10:20, 0] = level
    valid = np.ones((n, 2), bool)
    valid[:10, 0] = valid[20:, 0] = False  # the target is out of view there
    cands = Candidates(scores, boxes, valid, np.zeros_like(scores), np.zeros_like(scores))
    res = VideoResult(vid, np.arange(n), np.zeros(0), np.zeros(0), np.zeros(0), 100, 100, 1.0, candidates=cands)
    return res, {f: [(10.0, 10.0, 20.0, 20.0)] for f in range(10, 20)}


def test_relative_scores_are_margins_below_the_videos_best() -> None:
    (a, gt_a), (b, gt_b) = _narrow_band("a", 0.9), _narrow_band("b", 0.6)
    scores, _, valid = a.candidates.select(Selection(relative=True))
    np.testing.assert_allclose(scores[valid], np.where(np.arange(30) // 10 == 1, 1.0, 0.9)[valid], rtol=1e-6)
    assert a.candidates.select(Selection(relative=True, tracks=True))[0].max() == pytest.approx(1.0)
    # one absolute threshold cannot keep b's target and drop a's look-alike (0.8 > 0.6); a relative one can
    chosen = choose({"a": a, "b": b}, {"a": gt_a, "b": gt_b}, base=Selection(), post=PostprocessConfig(),
                    has_reid=False, arms=["detector_only"])  # fmt: skip
    best = chosen["detector_only"]
    assert best.selection.relative and best.tune_st_iou == pytest.approx(1.0)
    assert 0.9 < best.post.leave <= best.post.enter <= 1.0  # leave above the look-alike's 0.9, not enter * 0.6


def test_arm_grid_and_fixed_choice_without_reid() -> None:
    grid = arm_grid("full", Selection(), has_reid=False)
    assert all(s.reid_weight == 0.0 for s in grid) and {s.relative for s in grid} == {False, True}
    fixed = fixed_choice(Selection(colour=True), PostprocessConfig(), has_reid=False)
    assert not any(c.selection.colour for c in fixed.values()) and fixed["full"].selection.tracks
    with pytest.raises(ValueError, match="unknown arm"):
        arm_grid("colour", Selection(), has_reid=True)


def test_swap_pairs_never_keep_their_own_references() -> None:
    pairs = swap_pairs(["a", "b", "c"])
    assert pairs == {"a": "b", "b": "c", "c": "a"} and swap_pairs(["a"]) == {}
    assert with_target(["a", "b"], {"a": {3: [(0, 0, 1, 1)]}, "b": {}}) == ["a"]
