"""read_layout / check_layout / Layout.split on the tiny demo set, and one test per bad-input case."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from refdet_core.config import ConfigError, DataConfig, config_from_dict
from refdet_core.data.layout import LayoutError, check_layout, read_layout

VIDEO_KEYS = {"frames", "fps", "width", "height", "annotated_frames", "boxes", "references"}
TOTAL_KEYS = {"videos", "frames", "annotated_frames", "boxes", "references"}


def _ann_path(root: Path) -> Path:
    return root / "annotations" / "annotations.json"


def _load(root: Path) -> list[dict[str, Any]]:
    return json.loads(_ann_path(root).read_text())


def _save(root: Path, data: Any) -> None:
    _ann_path(root).write_text(json.dumps(data))


def _first_box(data: list[dict[str, Any]]) -> dict[str, Any]:
    return next(e for e in data if e["annotations"])["annotations"][0]["bboxes"][0]


def _raises(root: Path, *fragments: str) -> str:
    with pytest.raises(LayoutError) as info:
        read_layout(root)
    msg = str(info.value)
    assert "\n" not in msg, f"message is not one line: {msg!r}"
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    return msg


# ---------------------------------------------------------------------------------------------- good input


def test_check_layout_counts(demo_root: Path) -> None:
    summary = check_layout(demo_root)
    ann = {e["video_id"]: e["annotations"] for e in _load(demo_root)}
    assert set(summary["videos"]) == set(ann)
    for vid, info in summary["videos"].items():
        assert VIDEO_KEYS <= set(info)
        boxes = [b for g in ann[vid] for b in g["bboxes"]]
        assert (info["frames"], info["width"], info["height"], info["fps"]) == (40, 320, 192, 25.0)
        assert info["boxes"] == len(boxes)
        assert info["annotated_frames"] == len({b["frame"] for b in boxes})
        assert info["references"] == 3
        assert info["intervals"] == len(ann[vid])
    totals = summary["totals"]
    assert set(totals) == TOTAL_KEYS
    assert totals["videos"] == 4 and totals["frames"] == 160 and totals["references"] == 12
    assert totals["boxes"] == sum(v["boxes"] for v in summary["videos"].values()) > 0
    assert summary["has_annotations"] is True
    json.dumps(summary)  # the --json object is plain JSON


def test_records(demo_root: Path) -> None:
    layout = read_layout(demo_root)
    assert layout.has_annotations and layout.root == demo_root
    for vid, rec in layout.videos.items():
        assert rec.video_id == vid and rec.video_path.name == "drone_video.mp4"
        assert [p.name for p in rec.reference_paths] == ["img_1.jpg", "img_2.jpg", "img_3.jpg"]
        assert rec.base_class == vid.rsplit("_", 1)[0]
        assert rec.annotated_frames == sorted(rec.boxes_by_frame)
        for frame, boxes in rec.boxes_by_frame.items():
            assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4, boxes.shape
            assert 0 <= frame < rec.frames
        flat = [b for group in rec.intervals for b in group]
        assert len(flat) == rec.num_boxes and all(len(b) == 5 for b in flat)


def test_several_intervals_and_a_video_without_groups(demo_root: Path) -> None:
    layout = read_layout(demo_root)
    multi = [rec for rec in layout.videos.values() if len(rec.intervals) >= 2]
    assert multi, "no video with several intervals"
    for rec in multi:
        ends = [(g[0][0], g[-1][0]) for g in rec.intervals]
        assert all(a[1] + 1 < b[0] for a, b in zip(ends, ends[1:])), f"intervals touch or overlap: {ends}"
    empty = [rec for rec in layout.videos.values() if not rec.intervals]
    assert empty and all(rec.labelled and rec.boxes_by_frame == {} and rec.frames > 0 for rec in empty)


def test_base_class_of_plain_id() -> None:
    from refdet_core.data.layout import VideoRecord

    assert VideoRecord("Person1_12", Path("x"), []).base_class == "Person1"
    assert VideoRecord("Big_Box_3", Path("x"), []).base_class == "Big_Box"
    assert VideoRecord("thing", Path("x"), []).base_class == "thing"


def test_reading_writes_nothing(demo_root: Path) -> None:
    def snapshot() -> dict[str, tuple[int, int]]:
        return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in demo_root.rglob("*")}

    before = snapshot()
    read_layout(demo_root)
    check_layout(demo_root)
    assert snapshot() == before


def test_probe_video_false_skips_videos(demo_copy: Path) -> None:
    (demo_copy / "samples" / "Jacket_0" / "drone_video.mp4").write_bytes(b"not a video")
    layout = read_layout(demo_copy, probe_video=False)
    assert layout.videos["Jacket_0"].frames == 0
    assert len(layout.videos) == 4


def test_test_split_without_annotations(demo_copy: Path) -> None:
    shutil.rmtree(demo_copy / "annotations")
    layout = read_layout(demo_copy)
    assert not layout.has_annotations
    assert len(layout.videos) == 4 and not any(rec.labelled for rec in layout.videos.values())
    summary = check_layout(demo_copy)
    assert summary["has_annotations"] is False and summary["totals"]["boxes"] == 0
    with pytest.raises(LayoutError, match="no labelled videos"):
        layout.split(DataConfig())


def test_extra_folder_is_a_test_sample(demo_copy: Path, caplog: pytest.LogCaptureFixture) -> None:
    shutil.copytree(demo_copy / "samples" / "Jacket_0", demo_copy / "samples" / "Mystery_0")
    with caplog.at_level(logging.WARNING, logger="refdet_core.data.layout"):
        layout = read_layout(demo_copy)
    assert "Mystery_0" in caplog.text
    assert not layout.videos["Mystery_0"].labelled and "Mystery_0" not in layout.labelled_ids
    train, val = layout.split(DataConfig())
    assert "Mystery_0" not in train + val


# ---------------------------------------------------------------------------------------------- split


def test_split_from_splits_json(demo_root: Path) -> None:
    layout = read_layout(demo_root, probe_video=False)
    splits = json.loads((demo_root / "splits.json").read_text())
    train, val = layout.split(DataConfig())
    assert (sorted(train), sorted(val)) == (sorted(splits["train"]), sorted(splits["val"]))
    assert not set(train) & set(val) and set(train) | set(val) == set(layout.videos)


def test_split_explicit_val_videos(demo_root: Path) -> None:
    layout = read_layout(demo_root, probe_video=False)
    train, val = layout.split(DataConfig(val_videos=("Laptop_0",)))
    assert val == ["Laptop_0"] and "Laptop_0" not in train and len(train) == 3
    with pytest.raises(LayoutError, match="unknown video id 'Nope_0'"):
        layout.split(DataConfig(val_videos=("Nope_0",)))


def test_max_train_videos_keeps_the_splits_first_training_videos(demo_root: Path) -> None:
    layout = read_layout(demo_root, probe_video=False)
    train, val = layout.split(DataConfig())
    assert layout.split(DataConfig(max_train_videos=2)) == (train[:2], val)
    assert layout.split(DataConfig(max_train_videos=len(train) + 5)) == (train, val)
    with pytest.raises(ConfigError, match="key 'max_train_videos' must be >= 0"):
        config_from_dict({"max_train_videos": -1}, source="p.yaml")


def test_split_seeded_fraction(demo_copy: Path) -> None:
    (demo_copy / "splits.json").unlink()
    layout = read_layout(demo_copy, probe_video=False)
    a = layout.split(DataConfig(val_fraction=0.5, split_seed=1))
    assert a == layout.split(DataConfig(val_fraction=0.5, split_seed=1))
    train, val = a
    assert len(val) == 2 and not set(train) & set(val) and set(train) | set(val) == set(layout.videos)
    seeds = {tuple(layout.split(DataConfig(val_fraction=0.5, split_seed=s))[1]) for s in range(10)}
    assert len(seeds) > 1, "the split seed changes nothing"


def test_bad_splits_json(demo_copy: Path) -> None:
    layout = read_layout(demo_copy, probe_video=False)
    (demo_copy / "splits.json").write_text(json.dumps({"train": ["Ghost_0"], "val": []}))
    with pytest.raises(LayoutError, match=r"splits\.json: 'train' names unknown video id 'Ghost_0'"):
        layout.split(DataConfig())
    (demo_copy / "splits.json").write_text("[1, 2]")
    with pytest.raises(LayoutError, match=r"splits\.json: expected"):
        layout.split(DataConfig())


# ---------------------------------------------------------------------------------------------- bad input


def test_missing_samples_folder(tmp_path: Path) -> None:
    _raises(tmp_path, "samples", "no such folder")


def test_missing_video(demo_copy: Path) -> None:
    (demo_copy / "samples" / "Laptop_0" / "drone_video.mp4").unlink()
    _raises(demo_copy, str(Path("Laptop_0") / "drone_video.mp4"), "missing")


def test_no_reference_images(demo_copy: Path) -> None:
    for p in (demo_copy / "samples" / "Jacket_0" / "object_images").iterdir():
        p.unlink()
    _raises(demo_copy, str(Path("Jacket_0") / "object_images"), "no reference images")


def test_unreadable_image(demo_copy: Path) -> None:
    (demo_copy / "samples" / "Jacket_0" / "object_images" / "img_2.jpg").write_bytes(b"\x00garbage" * 10)
    _raises(demo_copy, "img_2.jpg", "unreadable")


def test_truncated_image(demo_copy: Path) -> None:
    path = demo_copy / "samples" / "Backpack_0" / "object_images" / "img_3.jpg"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    _raises(demo_copy, "img_3.jpg", "unreadable")


def test_json_not_valid(demo_copy: Path) -> None:
    _ann_path(demo_copy).write_text('[{"video_id": "Backpack_0", ')
    _raises(demo_copy, "annotations.json", "not valid JSON")


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda d: {"videos": d}, "expected a list of videos"),
        (lambda d: d + ["Backpack_0"], "entry 4 is a str"),
        (lambda d: d[:3] + [{"annotations": []}], "entry 3 has no 'video_id'"),
        (lambda d: d + [dict(d[0])], "appears twice"),
        (lambda d: [{**d[0], "annotations": {}}] + d[1:], "entry 0 ('Backpack_0') has no 'annotations' list"),
        (lambda d: [{**d[0], "annotations": [{"boxes": []}]}] + d[1:], "annotations[0] has no 'bboxes' list"),
    ],
)
def test_json_not_schema(demo_copy: Path, mutate: Any, problem: str) -> None:
    _save(demo_copy, mutate(_load(demo_copy)))
    _raises(demo_copy, "annotations.json", problem)


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("x2", None, "has no 'x2'"),
        ("frame", "3", "'frame' must be a number"),
        ("frame", 2.5, "'frame' must be an integer"),
        ("frame", -1, "frame -1 is negative"),
        ("y1", True, "'y1' must be a number"),
    ],
)
def test_bad_box_fields(demo_copy: Path, key: str, value: Any, problem: str) -> None:
    data = _load(demo_copy)
    box = _first_box(data)
    if value is None:
        del box[key]
    else:
        box[key] = value
    _save(demo_copy, data)
    _raises(demo_copy, "annotations.json", "bboxes[0]", problem)


@pytest.mark.parametrize(("lo", "hi"), [("x1", "x2"), ("y1", "y2")])
def test_box_with_non_positive_size(demo_copy: Path, lo: str, hi: str) -> None:
    data = _load(demo_copy)
    box = _first_box(data)
    box[hi] = box[lo]
    _save(demo_copy, data)
    _raises(demo_copy, "annotations.json", f"{hi} <= {lo}")


def test_frame_past_end(demo_copy: Path) -> None:
    data = _load(demo_copy)
    _first_box(data)["frame"] = 40
    _save(demo_copy, data)
    _raises(demo_copy, "annotations.json", "frame 40 is past the end of the video", "40 frames")


def test_box_outside_frame(demo_copy: Path) -> None:
    data = _load(demo_copy)
    _first_box(data).update(x1=400, x2=420)
    _save(demo_copy, data)
    _raises(demo_copy, "annotations.json", "lies outside the 320x192 frame")


def test_box_partly_outside_is_clipped(demo_copy: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = _load(demo_copy)
    box = _first_box(data)
    box.update(x1=300, x2=330)
    _save(demo_copy, data)
    with caplog.at_level(logging.WARNING, logger="refdet_core.data.layout"):
        layout = read_layout(demo_copy)
    assert "clipped" in caplog.text
    vid = next(e for e in data if e["annotations"])["video_id"]
    assert layout.videos[vid].boxes_by_frame[box["frame"]][0, 2] == 320.0


def test_video_id_without_folder(demo_copy: Path) -> None:
    _save(demo_copy, _load(demo_copy) + [{"video_id": "Ghost_0", "annotations": []}])
    _raises(demo_copy, "annotations.json", "video_id 'Ghost_0' has no folder")


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b[: len(b) // 2], id="truncated"),
        pytest.param(lambda b: b"\x00" * 64 + b[64:], id="header-zeroed"),
        pytest.param(lambda b: b"", id="empty"),
        pytest.param(lambda b: bytes(range(256)) * 40, id="garbage"),
    ],
)
def test_corrupt_or_truncated_video(demo_copy: Path, damage: Any) -> None:
    path = demo_copy / "samples" / "Laptop_0" / "drone_video.mp4"
    path.write_bytes(damage(path.read_bytes()))
    msg = _raises(demo_copy, str(Path("Laptop_0") / "drone_video.mp4"))
    assert "corrupt" in msg or "truncated" in msg, msg
