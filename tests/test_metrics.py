"""ST-IoU, presence and mAP@0.5 against hand cases and an independent straightforward implementation."""

import math
import random

import numpy as np
import pytest

from refdet_core.eval.metrics import map50, presence_prf, st_iou, st_iou_video

GT_BOX = (0.0, 0.0, 100.0, 100.0)


def _iou_ref(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _st_iou_ref(gt_frames, pred) -> float:
    gt_set = {f for f, boxes in gt_frames.items() if boxes}
    union = gt_set | set(pred)
    if not union:
        return 1.0
    total = 0.0
    for f in gt_set & set(pred):
        total += max(_iou_ref(g, pred[f]) for g in gt_frames[f])
    return total / len(union)


def _random_box(rng: random.Random):
    x, y = rng.uniform(0, 200), rng.uniform(0, 200)
    return (x, y, x + rng.uniform(1, 60), y + rng.uniform(1, 60))


def _jitter(rng: random.Random, box):
    d = [rng.uniform(-8, 8) for _ in range(4)]
    x1, y1 = box[0] + d[0], box[1] + d[1]
    return (x1, y1, max(x1 + 0.5, box[2] + d[2]), max(y1 + 0.5, box[3] + d[3]))


def _random_video(rng: random.Random):
    gt, pred = {}, {}
    for f in range(rng.randint(0, 40)):
        if rng.random() < 0.5:
            gt[f] = [_random_box(rng) for _ in range(rng.choice([1, 1, 1, 2, 3]))]
        elif rng.random() < 0.1:
            gt[f] = []  # a frame listed without boxes carries none
        if rng.random() < 0.5:
            pred[f] = _jitter(rng, rng.choice(gt[f])) if gt.get(f) and rng.random() < 0.8 else _random_box(rng)
    return gt, pred


def test_hand_case_from_the_challenge_docs():
    gt = {100: [GT_BOX], 101: [GT_BOX], 102: [GT_BOX]}
    pred = {101: (0.0, 0.0, 100.0, 91.9), 102: (0.0, 0.0, 100.0, 89.0), 103: GT_BOX}
    assert st_iou_video(gt, pred) == pytest.approx((0.919 + 0.890) / 4, abs=1e-9)


def test_perfect_prediction_scores_one():
    gt = {f: [(10.0 + f, 20.0, 40.0 + f, 55.0)] for f in range(50)}
    pred = {f: boxes[0] for f, boxes in gt.items()}
    assert st_iou_video(gt, pred) == pytest.approx(1.0, abs=1e-12)
    assert st_iou({"v": gt}, {"v": pred})["mean_st_iou"] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_random_videos_match_reference_implementation(seed):
    rng = random.Random(seed)
    cases = [_random_video(rng) for _ in range(200)]
    for gt, pred in cases:
        assert st_iou_video(gt, pred) == pytest.approx(_st_iou_ref(gt, pred), abs=1e-6)
    gt_all = {f"v{i}": gt for i, (gt, _) in enumerate(cases)}
    pred_all = {f"v{i}": pred for i, (_, pred) in enumerate(cases) if i % 7}  # some videos missing
    expected = [_st_iou_ref(gt, pred_all.get(vid, {})) for vid, gt in gt_all.items()]
    result = st_iou(gt_all, pred_all)
    assert result["mean_st_iou"] == pytest.approx(sum(expected) / len(expected), abs=1e-6)
    assert list(result["videos"]) == list(gt_all)


def test_every_extra_false_alarm_frame_lowers_the_score():
    gt = {f: [GT_BOX] for f in range(10)}
    pred = {f: (2.0, 1.0, 98.0, 97.0) for f in range(10)}
    last = st_iou_video(gt, pred)
    for f in range(10, 30):
        pred[f] = GT_BOX
        score = st_iou_video(gt, pred)
        assert score < last
        last = score


def test_every_missed_frame_lowers_the_score():
    gt = {f: [GT_BOX] for f in range(10)}
    pred = {f: GT_BOX for f in range(10)}
    last = st_iou_video(gt, pred)
    for f in range(10):
        del pred[f]
        score = st_iou_video(gt, pred)
        assert score < last
        last = score


def test_empty_videos():
    assert st_iou_video({}, {}) == 1.0
    assert st_iou_video({5: []}, {}) == 1.0
    assert st_iou_video({}, {3: GT_BOX}) == 0.0
    assert st_iou_video({3: [GT_BOX]}, {}) == 0.0


def test_video_missing_from_predictions_scores_zero():
    gt = {"a": {0: [GT_BOX]}, "b": {0: [GT_BOX]}, "c": {}}
    result = st_iou(gt, {"a": {0: GT_BOX}})
    assert result["videos"] == {"a": 1.0, "b": 0.0, "c": 1.0}
    assert result["mean_st_iou"] == pytest.approx(2 / 3)


def test_unknown_prediction_video_is_an_error():
    with pytest.raises(ValueError, match="unknown video"):
        st_iou({"a": {}}, {"zzz": {0: GT_BOX}})


def test_several_gt_boxes_score_against_best_overlap():
    other = (300.0, 300.0, 350.0, 350.0)
    pred = {0: (0.0, 0.0, 100.0, 91.9)}
    assert st_iou_video({0: [other, GT_BOX]}, pred) == pytest.approx(0.919)
    assert st_iou_video({0: [GT_BOX, other]}, pred) == pytest.approx(0.919)
    assert st_iou_video({0: np.array([other, GT_BOX])}, pred) == pytest.approx(0.919)


def test_scored_tracks_are_accepted():
    assert st_iou_video({0: [GT_BOX]}, {0: (*GT_BOX, 0.3)}) == pytest.approx(1.0)


def test_degenerate_predicted_box_is_an_error():
    with pytest.raises(ValueError, match="x2 <= x1"):
        st_iou_video({0: [GT_BOX]}, {0: (10.0, 0.0, 10.0, 5.0)})


def test_presence_counts():
    gt = {"a": {0: [GT_BOX], 1: [GT_BOX], 2: [GT_BOX], 3: []}, "b": {}}
    pred = {"a": {1: GT_BOX, 2: (500.0, 500.0, 510.0, 510.0), 3: GT_BOX, 4: GT_BOX}}
    r = presence_prf(gt, pred)
    assert (r["tp"], r["fp"], r["fn"]) == (2, 2, 1)
    assert r["precision"] == pytest.approx(0.5) and r["recall"] == pytest.approx(2 / 3)
    assert r["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    empty = presence_prf({"a": {}}, {})
    assert (empty["precision"], empty["recall"]) == (1.0, 1.0)


def test_map50_perfect_partial_and_undefined():
    gt = {"a": {f: [GT_BOX] for f in range(4)}}
    assert map50(gt, {"a": {f: GT_BOX for f in range(4)}}) == pytest.approx(1.0)
    # Half the frames found, the rest missed: AP = recall reached at full precision = 0.5.
    assert map50(gt, {"a": {0: GT_BOX, 1: GT_BOX}}) == pytest.approx(0.5, abs=0.02)
    # A confident false alarm ranked above the true detections lowers AP; ranked below it does not.
    far = (400.0, 400.0, 450.0, 450.0)
    low = {"a": {**{f: (*GT_BOX, 0.9) for f in range(4)}, 9: (*far, 0.1)}}
    high = {"a": {**{f: (*GT_BOX, 0.1) for f in range(4)}, 9: (*far, 0.9)}}
    assert map50(gt, low) == pytest.approx(1.0)
    assert map50(gt, high) < 0.9
    assert math.isnan(map50({"a": {}}, {"a": {0: GT_BOX}}))
