"""write_demo: determinism, valid boxes, the by-video split, references, and appearance consistency."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from refdet_core.data.layout import read_layout
from refdet_core.demo import DemoError, Look, read_demo_marker, write_demo
from refdet_core.demo import write as demo_write
from refdet_core.demo.looks import colour_distance, colour_twin, random_look, shape_twin

TINY = {"videos": 2, "frames": 16, "width": 160, "height": 96}


def _ann_bytes(root: Path) -> bytes:
    return (root / "annotations" / "annotations.json").read_bytes()


def test_deterministic_per_seed(tmp_path: Path) -> None:
    a, b, c = (write_demo(tmp_path / name, seed=seed, **TINY) for name, seed in (("a", 3), ("b", 3), ("c", 4)))
    assert a["videos"] == b["videos"]
    assert _ann_bytes(tmp_path / "a") == _ann_bytes(tmp_path / "b")
    ref = Path("samples") / a["train"][0] / "object_images" / "img_1.jpg"
    assert (tmp_path / "a" / ref).read_bytes() == (tmp_path / "b" / ref).read_bytes()
    assert _ann_bytes(tmp_path / "a") != _ann_bytes(tmp_path / "c")
    assert (tmp_path / "a" / ref).read_bytes() != (tmp_path / "c" / ref).read_bytes()
    assert c["train"] + c["val"]  # the other seed is a full set too


def test_same_set_in_several_processes(tmp_path: Path) -> None:
    args = {"videos": 4, "frames": 12, "width": 128, "height": 96, "seed": 5}
    one, two = write_demo(tmp_path / "one", workers=1, **args), write_demo(tmp_path / "two", workers=2, **args)
    assert one["videos"] == two["videos"]
    assert _ann_bytes(tmp_path / "one") == _ann_bytes(tmp_path / "two")
    assert read_demo_marker(tmp_path / "one") == read_demo_marker(tmp_path / "two")
    for vid in one["videos"]:
        refs = Path("samples") / vid / "object_images" / "img_2.jpg"
        assert (tmp_path / "one" / refs).read_bytes() == (tmp_path / "two" / refs).read_bytes()


def test_boxes_inside_frame(demo_root: Path) -> None:
    n = 0
    for entry in json.loads(_ann_bytes(demo_root)):
        for group in entry["annotations"]:
            frames = [b["frame"] for b in group["bboxes"]]
            assert frames == list(range(frames[0], frames[0] + len(frames))), "a group is not one interval"
            for b in group["bboxes"]:
                assert all(isinstance(b[k], int) for k in ("frame", "x1", "y1", "x2", "y2")), b
                assert 0 <= b["x1"] < b["x2"] <= 320 and 0 <= b["y1"] < b["y2"] <= 192, b
                assert 0 <= b["frame"] < 40
                long_side = max(b["x2"] - b["x1"], b["y2"] - b["y1"])
                assert 4 <= long_side <= 45 * 320 / 640 + 2, b  # small targets, scaled with the frame
                n += 1
    assert n > 20


def test_split_by_video_with_unseen_val_instances(demo_root: Path) -> None:
    splits = json.loads((demo_root / "splits.json").read_text())
    ids = {p.name for p in (demo_root / "samples").iterdir()}
    assert not set(splits["train"]) & set(splits["val"]) and set(splits["train"]) | set(splits["val"]) == ids
    assert len(splits["val"]) == 1 and len(splits["train"]) == 3
    looks = {v: Look.from_json(d) for v, d in read_demo_marker(demo_root)["looks"].items()}
    train_instances = {looks[v] for v in splits["train"]}
    assert all(looks[v] not in train_instances for v in splits["val"])


def test_references(demo_root: Path) -> None:
    for folder in (demo_root / "samples").iterdir():
        refs = sorted((folder / "object_images").iterdir())
        assert [p.name for p in refs] == ["img_1.jpg", "img_2.jpg", "img_3.jpg"]
        imgs = [cv2.imread(str(p)) for p in refs]
        assert all(img is not None and img.shape == (256, 256, 3) for img in imgs)
        assert not np.array_equal(imgs[0], imgs[1]), "the views are identical"


def test_empty_videos() -> None:
    _, _, val, _, empty = demo_write._assign(8, 0)
    assert len(empty) == 2 and empty[1] in val and empty[0] not in val
    _, _, val, _, empty = demo_write._assign(4, 0)
    assert len(empty) == 1 and empty[0] not in val
    _, _, val, tune, empty = demo_write._assign(20, 0, val_videos=4, tune_videos=4)
    assert len(empty) == 3 and empty[1] in val and empty[2] in tune


def test_target_colour_in_box_and_references(demo_root: Path) -> None:
    """What the references show is what the box holds: the target's colours, in both."""
    looks = read_demo_marker(demo_root)["looks"]
    layout = read_layout(demo_root)
    for vid, rec in layout.videos.items():
        if not rec.boxes_by_frame:
            continue
        colour = np.array(looks[vid]["primary"], np.float32)
        second = np.array(looks[vid]["secondary"], np.float32)
        frame_idx = rec.annotated_frames[len(rec.annotated_frames) // 2]
        cap = cv2.VideoCapture(str(rec.video_path))
        cap.set(cv2.CAP_PROP_POS_FRAMES, frame_idx)
        ok, bgr = cap.read()
        cap.release()
        assert ok
        x1, y1, x2, y2 = rec.boxes_by_frame[frame_idx][0].astype(int)
        crop = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)[y1:y2, x1:x2].astype(np.float32)
        near = (np.linalg.norm(crop - colour, axis=-1) < 70) | (np.linalg.norm(crop - second, axis=-1) < 70)
        assert near.mean() > 0.15, f"{vid}: target colours cover {near.mean():.0%} of its box"
        ref = cv2.cvtColor(cv2.imread(str(rec.reference_paths[0])), cv2.COLOR_BGR2RGB).astype(np.float32)
        in_ref = (np.linalg.norm(ref - colour, axis=-1) < 90) | (np.linalg.norm(ref - second, axis=-1) < 90)
        assert in_ref.mean() > 0.05, f"{vid}: target colours not in reference"


def test_refuses_foreign_folder(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(DemoError, match="not a demo set.*refusing"):
        write_demo(out, **TINY)
    assert (out / "notes.txt").read_text() == "keep me"


def test_replaces_previous_demo_and_fails_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "set"
    write_demo(out, seed=1, **TINY)
    before = _ann_bytes(out)
    write_demo(out, seed=2, **TINY)
    assert _ann_bytes(out) != before and read_demo_marker(out)["params"]["seed"] == 2

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(demo_write, "render_video", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        write_demo(out, seed=3, **TINY)
    assert read_demo_marker(out)["params"]["seed"] == 2, "a failed run damaged the previous set"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"], "a failed run left a half set behind"
    with pytest.raises(RuntimeError):
        write_demo(tmp_path / "fresh", **TINY)
    assert not (tmp_path / "fresh").exists()


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(DemoError, match="frames >= 12"):
        write_demo(tmp_path / "x", videos=1, frames=3)
    with pytest.raises(DemoError, match="val_videos"):
        write_demo(tmp_path / "x", videos=4, val_videos=4)
    with pytest.raises(DemoError, match="tune_videos"):
        write_demo(tmp_path / "x", videos=4, val_videos=2, tune_videos=2)
    assert not (tmp_path / "x").exists()


def test_decoys_are_other_training_targets(tmp_path: Path) -> None:
    # a target instance also appears as a distractor in other videos, so "is one of the set's targets" is no cue;
    # validation instances never appear in a training video, and a decoy never wears the target's main colour
    write_demo(tmp_path / "d", videos=8, frames=40, width=320, height=192)
    marker = read_demo_marker(tmp_path / "d")
    splits = json.loads((tmp_path / "d" / "splits.json").read_text())
    looks, decoys = marker["looks"], marker["decoys"]
    assert set(decoys) == set(looks)
    assert sum(len(d) for d in decoys.values()) >= 4, decoys
    for vid, placed in decoys.items():
        for other in placed:
            assert other in splits["train"] and other != vid, (vid, other)
            near = min(colour_distance(looks[vid]["primary"], looks[other][c]) for c in ("primary", "secondary"))
            assert near > 60, (vid, other)
    shown = {other for placed in decoys.values() for other in placed}
    assert not shown & set(splits["val"])


def test_every_video_has_colour_twins_shape_twins_and_unrelated_distractors(tmp_path: Path) -> None:
    """Neither colour alone nor shape alone finds the target: each video holds both kinds of look-alike."""
    write_demo(tmp_path / "d", videos=6, frames=40, width=320, height=192)
    marker = read_demo_marker(tmp_path / "d")
    for vid, counts in marker["distractors"].items():
        assert counts["colour"] >= 1 and counts["shape"] >= 1 and counts["other"] >= 1, (vid, counts)


def test_twins_share_one_cue_with_the_target_and_not_the_other() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        target = random_look(rng, "Backpack")
        c, s = colour_twin(rng, target), shape_twin(rng, target)
        assert c.kind != target.kind and colour_distance(c.primary, target.primary) < 25
        assert s.kind == target.kind and s.aspect == target.aspect
        assert colour_distance(s.primary, target.primary) > 40 and colour_distance(s.primary, target.secondary) > 40


def test_many_distinct_instances_with_a_tune_split(tmp_path: Path) -> None:
    out = write_demo(
        tmp_path / "d", videos=30, frames=24, train_frames=12, val_videos=3, tune_videos=3, width=160, height=96
    )
    marker = read_demo_marker(tmp_path / "d")
    looks = {Look.from_json(d) for d in marker["looks"].values()}
    assert len(looks) == 30, "instances repeat"
    assert len({(lk.kind, lk.pattern, lk.aspect) for lk in looks}) >= 20, "instances vary in shape and texture"
    splits = json.loads((tmp_path / "d" / "splits.json").read_text())
    assert len(splits["tune"]) == 3 and not set(splits["tune"]) & (set(splits["train"]) | set(splits["val"]))
    layout = read_layout(tmp_path / "d")
    assert {layout.videos[v].frames for v in splits["train"]} == {12}
    assert {layout.videos[v].frames for v in splits["val"] + splits["tune"]} == {24}
    assert out["tune"] == splits["tune"]
