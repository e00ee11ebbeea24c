"""Frame store, letterbox, seek reader and the shared LRU (DESIGN.md §3, the frame store)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from refdet_core.config import config_from_dict
from refdet_core.data import store as store_mod
from refdet_core.data.frames import Letterbox, SeekReader, letterbox, time_reads
from refdet_core.data.layout import read_layout
from refdet_core.data.lru import SharedFrameLRU
from refdet_core.data.store import FrameStore, build_store, select_frames

SIZE = 96  # small store frames keep the tests fast


@pytest.fixture(scope="module")
def root(request, tmp_path_factory):
    """The shared demo set (conftest's ``demo_root``), copied so tests may touch files."""
    src = request.getfixturevalue("demo_root")
    dst = tmp_path_factory.mktemp("frames") / "demo"
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module")
def layout(root):
    return read_layout(root)


@pytest.fixture(scope="module")
def store(layout, tmp_path_factory):
    return FrameStore.build(
        layout, tmp_path_factory.mktemp("store") / "fs", img_size=SIZE, bg_share=0.3, cache_mb=1, progress=False
    )


@pytest.mark.parametrize("hw", [(360, 640), (576, 1024), (50, 30), (64, 64)])
def test_letterbox_round_trip(hw):
    img = np.random.default_rng(0).integers(0, 255, (*hw, 3), dtype=np.uint8)
    out, lb = letterbox(img, 128)
    assert out.shape == (128, 128, 3) and out.dtype == np.uint8
    boxes = np.array([[0, 0, hw[1], hw[0]], [3.5, 4.25, 10, 20]], dtype=np.float32)
    lbox = lb.to_letterbox(boxes)
    assert np.allclose(lb.to_native(lbox), boxes, atol=1e-3)
    # the full-image box maps onto the content area; the rest is pad 114
    x0, y0, x1, y1 = np.round(lbox[0]).astype(int)
    assert x0 >= 0 and y0 >= 0 and x1 <= 128 and y1 <= 128 and (x1 - x0 == 128 or y1 - y0 == 128)
    if y0 > 0:
        assert (out[: y0 - 1] == 114).all()
    if x0 > 0:
        assert (out[:, : x0 - 1] == 114).all()


def test_letterbox_params_centred():
    lb = letterbox(np.zeros((360, 640, 3), np.uint8), 640)[1]
    assert lb == Letterbox(scale=1.0, pad_x=0.0, pad_y=140.0)


def test_store_keeps_annotated_and_bg_share(layout, store):
    for vid, rec in layout.videos.items():
        ann = store.annotated(vid)
        bg = store.background(vid)
        assert ann == sorted(rec.boxes_by_frame)
        n_bg_all = rec.frames - len(ann)
        assert len(bg) == round(0.3 * n_bg_all)
        assert not set(bg) & set(ann) and len(set(bg)) == len(bg)
        rest = [f for f in range(rec.frames) if f not in set(ann)]
        if len(bg) > 2:  # evenly spread over the background frames: positions step by nearly equal amounts
            steps = np.diff([rest.index(f) for f in bg])
            assert steps.max() - steps.min() <= 1
    s = store.stats()
    assert s["frames"] == s["annotated"] + s["background"] and s["bytes"] > s["frames"] * SIZE * SIZE * 3


def test_store_matches_seek_reader(layout, store):
    seek = SeekReader(layout, SIZE)
    for vid in list(layout.videos)[:3]:
        frames = store.frames(vid)
        for f in (frames[0], frames[len(frames) // 2], frames[-1]):
            a, lba = store.get(vid, f)
            b, lbb = seek.get(vid, f)
            assert lba == lbb
            assert np.array_equal(a, b), f"{vid} frame {f}: store and seek reader differ"


def test_store_reuse_and_rebuild(layout, root, tmp_path):
    out = tmp_path / "fs"
    first = FrameStore.build(layout, out, img_size=SIZE, bg_share=0.1, progress=False)
    mtime = (out / "index.json").stat().st_mtime_ns
    again = FrameStore.build(layout, out, img_size=SIZE, bg_share=0.1, progress=False)
    assert again.reused and not first.reused
    assert (out / "index.json").stat().st_mtime_ns == mtime
    bigger = FrameStore.build(layout, out, img_size=SIZE + 32, bg_share=0.1, progress=False)
    assert not bigger.reused and bigger.get(layout.labelled_ids[0], bigger.frames(layout.labelled_ids[0])[0])[
        0
    ].shape == (SIZE + 32, SIZE + 32, 3)
    # change one box in the annotations: the key changes, the store is rebuilt
    changed = tmp_path / "demo"
    shutil.copytree(root, changed)
    ann_path = changed / "annotations" / "annotations.json"
    data = json.loads(ann_path.read_text())
    box = next(b for v in data for g in v["annotations"] for b in g["bboxes"])
    box["x2"] += 1
    ann_path.write_text(json.dumps(data))
    layout2 = read_layout(changed)
    s1 = FrameStore.build(layout2, out, img_size=SIZE + 32, bg_share=0.1, progress=False)
    assert not s1.reused
    assert FrameStore.build(layout2, out, img_size=SIZE + 32, bg_share=0.1, progress=False).reused


def test_failed_build_keeps_previous_store(layout, tmp_path, monkeypatch):
    out = tmp_path / "fs"
    good = FrameStore.build(layout, out, img_size=SIZE, bg_share=0.1, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls = {"n": 0}
    real = store_mod._write_video

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk full (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(store_mod, "_write_video", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        FrameStore.build(layout, out, img_size=SIZE + 16, bg_share=0.1, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".fs.")], "temporary folder left behind"
    reopened = FrameStore.open(out)
    vid = layout.labelled_ids[0]
    assert np.array_equal(reopened.get(vid, good.frames(vid)[0])[0], good.get(vid, good.frames(vid)[0])[0])


def test_jpeg_store_close_to_npy(layout, store, tmp_path):
    jpg = FrameStore.build(layout, tmp_path / "jpg", img_size=SIZE, bg_share=0.3, fmt="jpeg", progress=False)
    vid = layout.labelled_ids[0]
    f = store.annotated(vid)[0]
    diff = np.abs(jpg.get(vid, f)[0].astype(int) - store.get(vid, f)[0].astype(int))
    assert diff.mean() < 4


def test_missing_frame_is_a_clear_error(store, layout):
    vid = layout.labelled_ids[0]
    missing = next(f for f in range(10**6) if f not in set(store.frames(vid)))
    with pytest.raises(store_mod.StoreError, match="not kept"):
        store.get(vid, missing)


def test_lru_byte_bound_and_eviction():
    shape = (8, 8, 3)
    lru = SharedFrameLRU(shape, capacity_bytes=3 * 192 + 100)  # room for 3 frames
    frames = {i: np.full(shape, i, np.uint8) for i in range(5)}
    for i in range(3):
        assert lru.get(0, i) is None
        lru.put(0, i, frames[i])
    assert np.array_equal(lru.get(0, 0), frames[0])  # 0 is now the most recent
    lru.put(0, 3, frames[3])  # evicts 1, the least recently used
    assert lru.get(0, 1) is None and lru.get(0, 2) is not None and lru.get(0, 3) is not None
    s = lru.stats()
    assert s["cache_bytes"] <= s["cache_capacity_bytes"] <= 3 * 192 + 100
    assert s["cache_frames"] == 3 and s["hits"] == 3 and s["misses"] == 4


class _Reads(Dataset):
    def __init__(self, store, samples):
        self.store, self.samples = store, samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        img, _ = self.store.get(*self.samples[i])
        return torch.from_numpy(img).float().mean()


def test_hits_and_misses_true_across_workers(layout, tmp_path):
    fs = FrameStore.build(layout, tmp_path / "fs", img_size=SIZE, bg_share=0.0, cache_mb=64, progress=False)
    vid = layout.labelled_ids[0]
    distinct = [(vid, f) for f in fs.annotated(vid)[:6]]
    samples = distinct * 4  # each frame read 4 times, from 2 workers
    loader = DataLoader(_Reads(fs, samples), batch_size=None, num_workers=2)
    assert len(list(loader)) == len(samples)
    s = fs.stats()
    assert s["hits"] + s["misses"] == len(samples)
    # a worker may miss a frame the other is loading at that moment, but never more than once per worker
    assert len(distinct) <= s["misses"] <= 2 * len(distinct)
    assert s["cache_frames"] == len(distinct)
    assert s["cache_bytes"] <= 64 * 2**20


def test_lru_capacity_bound_in_store(layout, tmp_path):
    frame_bytes = SIZE * SIZE * 3
    fs = FrameStore.build(layout, tmp_path / "fs", img_size=SIZE, bg_share=0.0, progress=False, cache_mb=0.1)
    vid = layout.labelled_ids[0]
    for f in fs.annotated(vid):
        fs.get(vid, f)
    s = fs.stats()
    assert s["cache_bytes"] <= 0.1 * 2**20 and s["cache_frames"] == int(0.1 * 2**20) // frame_bytes


def test_time_reads_and_build_store(layout, root, tmp_path, store):
    vid = layout.labelled_ids[0]
    samples = [(vid, f) for f in store.annotated(vid)[:3]]
    t = time_reads(store, samples, repeat=2)
    assert t["n"] == 6 and t["median_ms"] > 0 and len(t["per_sample_ms"]) == 6
    cfg = config_from_dict({"img_size": 64, "store_bg_share": 0.1})
    stats = build_store(root, tmp_path / "cli", cfg, progress=False)
    assert stats["videos"] == len(layout.videos) and stats["reused"] is False
    assert stats["frames"] == stats["annotated"] + stats["background"] and stats["bytes"] > 0
    assert build_store(root, tmp_path / "cli", cfg, progress=False)["reused"] is True
    json.dumps(stats)


def test_select_frames_edges(layout):
    rec = next(iter(layout.videos.values()))
    ann, bg = select_frames(rec, 1.0)
    assert len(ann) + len(bg) == rec.frames
    assert select_frames(rec, 0.0)[1] == []


def test_default_store_dirs_differ_by_img_size(tmp_path):
    """Stores of different whole-frame sizes never share a folder (one would rebuild over the other)."""
    small = config_from_dict({"img_size": 320})
    large = config_from_dict({"img_size": 640})
    window = config_from_dict({"img_size": 640, "train_window": 320})
    dirs = {name: store_mod.default_store_dir(cfg, tmp_path) for name, cfg in
            {"small": small, "large": large, "window": window}.items()}  # fmt: skip
    assert dirs["small"] != dirs["large"], "a 640 px training must not rebuild 01's 320 px store"
    assert dirs["window"] == dirs["large"], "320 px windows are cut from the same 640 px frames"
    named = config_from_dict({"img_size": 320, "store_dir": str(tmp_path / "mine")})
    assert store_mod.default_store_dir(named, tmp_path) == tmp_path / "mine"
