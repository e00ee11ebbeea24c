"""Temporal post-processing: hysteresis, gap filling, minimum length, smoothing, and their switches."""

import numpy as np
import pytest

from refdet_core.eval.postprocess import (
    PostprocessConfig,
    fill_gaps,
    hysteresis,
    postprocess,
    postprocess_scored,
    smooth_boxes,
    split_intervals,
)

OFF = {"use_hysteresis": False, "use_gap_fill": False, "use_smoothing": False, "use_min_len": False}


def _boxes(n, jitter=0.0, seed=0):
    rng = np.random.default_rng(seed)
    base = np.array([100.0, 50.0, 140.0, 80.0]) + np.arange(n)[:, None] * 2.0  # moving right and down
    return base + rng.normal(0, jitter, size=(n, 4)) if jitter else base


def test_hysteresis_keeps_a_dip_between_leave_and_enter():
    scores = np.array([0.1, 0.6, 0.4, 0.35, 0.7, 0.2, 0.4, 0.45, 0.1])
    keep = hysteresis(scores, enter=0.5, leave=0.3)
    # 0.4 / 0.35 dip stays; the 0.4, 0.45 run never reaches enter and goes.
    assert keep.tolist() == [False, True, True, True, True, False, False, False, False]
    # A run that rises slowly is kept from its start (offline hysteresis runs both ways).
    assert hysteresis(np.array([0.32, 0.4, 0.55, 0.2]), 0.5, 0.3).tolist() == [True, True, True, False]
    assert hysteresis(np.array([]), 0.5, 0.3).tolist() == []


def test_hysteresis_off_is_a_plain_threshold():
    scores = np.array([0.6, 0.4, 0.7, 0.2, 0.55])
    track = postprocess(range(5), scores, _boxes(5), PostprocessConfig(**OFF))
    assert sorted(track) == [0, 2, 4]


def test_split_intervals():
    frames = np.array([0, 1, 2, 5, 6, 20])
    assert [x.tolist() for x in split_intervals(frames, 2)] == [[0, 1, 2, 3, 4], [5]]
    assert [x.tolist() for x in split_intervals(frames, 0)] == [[0, 1, 2], [3, 4], [5]]
    assert split_intervals(np.array([], dtype=int), 3) == []


def test_gap_fill_interpolates_linearly():
    frames, scores = np.array([10, 11, 14]), np.array([0.9, 0.9, 0.6])
    boxes = np.array([[0, 0, 10, 10], [3, 0, 13, 10], [12, 9, 22, 19]], dtype=float)
    full, s, b = fill_gaps(frames, scores, boxes)
    assert full.tolist() == [10, 11, 12, 13, 14]
    np.testing.assert_allclose(b[2], [6, 3, 16, 13])
    np.testing.assert_allclose(b[3], [9, 6, 19, 16])
    np.testing.assert_allclose(s, [0.9, 0.9, 0.8, 0.7, 0.6])


def test_gap_fill_in_the_pipeline_bridges_dips_up_to_max_gap():
    scores = np.array([0.9] * 5 + [0.0] * 3 + [0.9] * 5 + [0.0] * 6 + [0.9] * 5)
    cfg = PostprocessConfig(max_gap=4, use_smoothing=False)
    track = postprocess(range(len(scores)), scores, _boxes(len(scores)), cfg)
    assert sorted(track) == [*range(0, 13), *range(19, 24)]  # the 3-frame gap filled, the 6-frame gap not
    np.testing.assert_allclose(track[6], _boxes(24)[6])  # linear motion is interpolated exactly
    off = postprocess(range(len(scores)), scores, _boxes(len(scores)), PostprocessConfig(**{**OFF, "enter": 0.5}))
    assert sorted(off) == [*range(0, 5), *range(8, 13), *range(19, 24)]


def test_strided_frames_are_bridged():
    frames = np.arange(0, 30, 3)
    track = postprocess(frames, np.full(10, 0.9), _boxes(30)[frames], PostprocessConfig(max_gap=2, smooth=1))
    assert sorted(track) == list(range(28))
    np.testing.assert_allclose(track[4], _boxes(30)[4])


def test_min_len_drops_short_intervals_and_off_keeps_them():
    scores = np.array([0.9, 0.9, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.9, 0.9, 0.9, 0.9])
    cfg = PostprocessConfig(min_len=3, max_gap=2)
    assert sorted(postprocess(range(12), scores, _boxes(12), cfg)) == [8, 9, 10, 11]
    kept = postprocess(range(12), scores, _boxes(12), PostprocessConfig(min_len=3, max_gap=2, use_min_len=False))
    assert sorted(kept) == [0, 1, 8, 9, 10, 11]


def test_smoothing_reduces_jitter_and_keeps_linear_motion():
    clean = _boxes(60)
    noisy = _boxes(60, jitter=3.0, seed=1)
    smoothed = smooth_boxes(noisy, 5)
    assert np.abs(smoothed - clean).mean() < 0.7 * np.abs(noisy - clean).mean()
    np.testing.assert_allclose(smooth_boxes(clean, 5), clean)  # symmetric windows keep linear motion exactly
    np.testing.assert_allclose(smooth_boxes(noisy, 1), noisy)
    np.testing.assert_allclose(smooth_boxes(noisy, 5)[1], noisy[:3].mean(axis=0))  # window shrinks at the ends
    np.testing.assert_allclose(smooth_boxes(noisy, 5)[0], noisy[0])
    np.testing.assert_allclose(smooth_boxes(noisy, 4)[10], noisy[8:13].mean(axis=0))  # even rounds up


def test_smoothing_switch_in_the_pipeline():
    noisy = _boxes(20, jitter=3.0)
    on = postprocess(range(20), np.full(20, 0.9), noisy, PostprocessConfig(smooth=5))
    off = postprocess(range(20), np.full(20, 0.9), noisy, PostprocessConfig(smooth=5, use_smoothing=False))
    np.testing.assert_allclose(np.array([off[f] for f in range(20)]), noisy)
    assert not np.allclose(np.array([on[f] for f in range(20)]), noisy)


def test_everything_off_is_identity_above_enter():
    frames = np.array([0, 2, 3, 9])
    boxes = _boxes(4, jitter=2.0)
    track = postprocess_scored(frames, np.array([0.9, 0.8, 0.7, 0.6]), boxes, PostprocessConfig(**OFF))
    assert sorted(track) == frames.tolist()
    for f, box, s in zip(frames, boxes, [0.9, 0.8, 0.7, 0.6]):
        assert track[int(f)] == pytest.approx((*box, s))


def test_empty_input_and_config_checks():
    assert postprocess([], np.zeros(0), np.zeros((0, 4)), PostprocessConfig()) == {}
    with pytest.raises(ValueError, match="leave"):
        PostprocessConfig(enter=0.3, leave=0.5)
    with pytest.raises(AssertionError, match="strictly increasing"):
        postprocess([3, 2], np.ones(2), np.ones((2, 4)), PostprocessConfig())
