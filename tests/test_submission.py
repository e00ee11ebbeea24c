"""Challenge JSON: reading, validation errors, writing, round trip, and scoring files."""

import json

import pytest

from refdet_core.eval.submission import (
    AnnotationError,
    SubmissionError,
    contiguous_runs,
    read_annotations,
    read_submission,
    score_files,
    write_submission,
)


def _bbox(frame, x1=10, y1=20, x2=40, y2=50):
    return {"frame": frame, "x1": x1, "y1": y1, "x2": x2, "y2": y2}


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path


def _video(vid, *groups, key="detections"):
    return {"video_id": vid, key: [{"bboxes": list(g)} for g in groups]}


def test_read_annotations_keeps_several_boxes_per_frame(tmp_path):
    path = _write(
        tmp_path / "a.json",
        [
            _video("A_0", [_bbox(3), _bbox(3, 100, 100, 120, 130)], [_bbox(9)], key="annotations"),
            _video("B_0", key="annotations"),
        ],
    )
    gt = read_annotations(path)
    assert gt["B_0"] == {}
    assert gt["A_0"] == {3: [(10.0, 20.0, 40.0, 50.0), (100.0, 100.0, 120.0, 130.0)], 9: [(10.0, 20.0, 40.0, 50.0)]}


def test_bad_annotations_raise_annotation_error(tmp_path):
    path = _write(tmp_path / "a.json", [_video("A_0", [_bbox(1, x2=5)], key="annotations")])
    with pytest.raises(AnnotationError, match=r"a\.json: video A_0: frame 1: box has x2 <= x1"):
        read_annotations(path)


def test_first_box_of_a_frame_counts_and_extras_are_counted(tmp_path):
    path = _write(tmp_path / "s.json", [_video("A_0", [_bbox(1), _bbox(1, 0, 0, 5, 5)], [_bbox(1, 1, 1, 2, 2)])])
    sub = read_submission(path)
    assert sub["A_0"] == {1: (10.0, 20.0, 40.0, 50.0)}
    assert sub.dropped == {"A_0": 2} and sub.n_dropped == 2


MALFORMED = {
    "not_a_list": ({"video_id": "A_0", "detections": []}, "expected a list"),
    "missing_video_id": ([{"detections": []}], "entry 0: expected an object with keys"),
    "missing_detections": ([{"video_id": "A_0"}], "entry 0: expected an object with keys"),
    "detections_not_list": ([{"video_id": "A_0", "detections": {}}], "video A_0: 'detections' is not a list"),
    "group_without_bboxes": ([{"video_id": "A_0", "detections": [{}]}], "video A_0: an entry of 'detections'"),
    "missing_coord": ([_video("A_0", [{"frame": 1, "x1": 1, "y1": 1, "x2": 3}])], r"video A_0: .*misses key"),
    "x2_le_x1": ([_video("A_0", [_bbox(4, x1=40, x2=40)])], "video A_0: frame 4: box has x2 <= x1"),
    "y2_le_y1": ([_video("A_0", [_bbox(4, y1=60, y2=50)])], "video A_0: frame 4: box has x2 <= x1 or y2 <= y1"),
    "negative_frame": ([_video("A_0", [_bbox(-1)])], "video A_0: frame is not a non-negative int"),
    "float_frame": ([_video("A_0", [_bbox(1.5)])], "video A_0: frame is not a non-negative int"),
    "bool_frame": ([_video("A_0", [_bbox(True)])], "video A_0: frame is not a non-negative int"),
    "string_coord": ([_video("A_0", [_bbox(2, x1="3")])], "video A_0: frame 2: coordinates are not finite"),
    "unknown_video": ([_video("Z_9", [_bbox(2)])], "video Z_9: unknown video id"),
    "duplicate_video": ([_video("A_0"), _video("A_0")], "video A_0: listed more than once"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_submission_raises_one_clear_line(tmp_path, case):
    obj, message = MALFORMED[case]
    path = _write(tmp_path / "sub.json", obj)
    with pytest.raises(SubmissionError, match=message) as info:
        read_submission(path, known_videos={"A_0"})
    text = str(info.value)
    assert "\n" not in text and str(path) in text


def test_unreadable_submission_files(tmp_path):
    with pytest.raises(SubmissionError, match="file not found"):
        read_submission(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(SubmissionError, match="not valid JSON"):
        read_submission(tmp_path / "bad.json")


def test_contiguous_runs():
    assert contiguous_runs([8, 1, 2, 3, 7]) == [[1, 2, 3], [7, 8]]
    assert contiguous_runs([]) == []


def test_write_read_round_trip(tmp_path):
    pred = {
        "A_0": {f: (1.0 + f, 2.123, 30.5 + f, 40.0, 0.9) for f in [*range(5, 9), *range(12, 15), 20]},
        "B_0": {0: (0, 0, 3, 3)},
    }
    path = tmp_path / "out" / "submission.json"
    write_submission(path, pred, ["A_0", "B_0", "C_0"])
    obj = json.loads(path.read_text())
    assert [v["video_id"] for v in obj] == ["A_0", "B_0", "C_0"]
    assert [[b["frame"] for b in g["bboxes"]] for g in obj[0]["detections"]] == [[5, 6, 7, 8], [12, 13, 14], [20]]
    assert obj[2]["detections"] == []
    assert obj[0]["detections"][0]["bboxes"][0] == {"frame": 5, "x1": 6.0, "y1": 2.12, "x2": 35.5, "y2": 40.0}
    back = read_submission(path, known_videos=["A_0", "B_0", "C_0"])
    assert back["C_0"] == {}
    assert set(back["A_0"]) == set(pred["A_0"])
    for f, box in pred["A_0"].items():
        assert back["A_0"][f] == pytest.approx(box[:4], abs=0.005)
    assert not list(tmp_path.glob("out/.*.tmp"))


def test_write_rejects_bad_predictions(tmp_path):
    with pytest.raises(ValueError, match="not in video_ids"):
        write_submission(tmp_path / "s.json", {"X": {}}, ["A_0"])
    with pytest.raises(ValueError, match="frame 3: box"):
        write_submission(tmp_path / "s.json", {"A_0": {3: (5, 5, 5, 9)}}, ["A_0"])
    assert not (tmp_path / "s.json").exists()


def test_score_files(tmp_path):
    box = {"x1": 0, "y1": 0, "x2": 100, "y2": 100}
    gt = [
        {"video_id": "A_0", "annotations": [{"bboxes": [{"frame": f, **box} for f in (100, 101, 102)]}]},
        {"video_id": "B_0", "annotations": []},
    ]
    gt_path = _write(tmp_path / "annotations.json", gt)
    sub = [
        _video("A_0", [_bbox(101, 0, 0, 100, 91.9), _bbox(102, 0, 0, 100, 89), _bbox(103, 0, 0, 100, 100)]),
        _video("B_0"),
    ]
    result = score_files(gt_path, _write(tmp_path / "sub.json", sub))
    assert result["videos"]["A_0"] == pytest.approx((0.919 + 0.890) / 4)
    assert result["videos"]["B_0"] == 1.0
    assert result["mean_st_iou"] == pytest.approx(((0.919 + 0.890) / 4 + 1.0) / 2)
    assert (result["presence"]["tp"], result["presence"]["fp"], result["presence"]["fn"]) == (2, 1, 1)
    assert 0.0 <= result["map50"] <= 1.0
    assert result["dropped_boxes"] == 0
    json.dumps(result, allow_nan=False)
