"""Episodes: sampler, dataset, batch contract (docs/architecture.md) and the loader with workers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from refdet_core.config import config_from_dict
from refdet_core.data.episodes import (
    EpisodeBatch,
    EpisodeDataset,
    EpisodeSampler,
    frame_pools,
    load_fixed_episode,
    make_loader,
    make_sampler,
)
from refdet_core.data.layout import read_layout
from refdet_core.data.store import FrameStore

SIZE, SUPPORT = 96, 64


@pytest.fixture(scope="module")
def layout(demo_root):
    return read_layout(demo_root)


@pytest.fixture(scope="module")
def store(layout, tmp_path_factory):
    return FrameStore.build(
        layout, tmp_path_factory.mktemp("ep") / "fs", img_size=SIZE, bg_share=0.5, cache_mb=8, progress=False
    )


@pytest.fixture(scope="module")
def ids(layout):
    return layout.labelled_ids


def _cfg(**kw):
    base = {
        "img_size": SIZE,
        "support_size": SUPPORT,
        "n_way": 2,
        "n_query": 3,
        "k_shot": 3,
        "bg_share": 0.25,
        "store_bg_share": 0.5,
        "episodes_per_epoch": 6,
    }
    return config_from_dict({**base, **kw})


def _bases(layout, ids):
    return sorted({layout.videos[v].base_class for v in ids})


def test_batch_shapes_and_labels(layout, store, ids):
    cfg = _cfg()
    ds = EpisodeDataset(layout, store, ids, cfg.data, train=True, base_classes=_bases(layout, ids)[:-1])
    for spec in make_sampler(layout, store, ids, cfg, train=True):
        b = ds[spec]
        assert isinstance(b, EpisodeBatch)
        assert b.query.shape == (6, 3, SIZE, SIZE) and b.query.dtype == torch.uint8
        assert b.support.shape == (2, 3, 3, SUPPORT, SUPPORT) and b.support.dtype == torch.uint8
        assert b.letterbox.shape == (6, 3) and b.frame_indices.shape == (6,) and len(b.video_ids) == 6
        for i, (bx, lab, base) in enumerate(zip(b.boxes, b.labels, b.base_labels)):
            assert bool(((lab >= 0) & (lab < 2)).all()), "episode labels must lie in [0, N)"  # seed #18
            assert bool((lab == b.class_ids[i]).all())
            assert bx.shape == (lab.shape[0], 4) and base.shape == lab.shape
            assert bool((base >= -1).all())
        assert b.support_video_ids == [b.video_ids[i] for i in range(0, 6, 3)]
    last = _bases(layout, ids)[-1]
    if any(layout.videos[v].base_class == last for v in ids):  # a type not in base_classes maps to -1
        spec = next(
            s
            for s in make_sampler(layout, store, ids, cfg, train=False, episodes=50)
            if any(layout.videos[v].base_class == last for v in s.videos)
        )
        b = ds[spec]
        assert all(
            bool((bl == -1).all()) for bl, v in zip(b.base_labels, b.video_ids) if layout.videos[v].base_class == last
        )


def test_validation_batches_identical(layout, store, ids):
    cfg = _cfg()
    ds = EpisodeDataset(layout, store, ids, cfg.data, train=False, base_classes=_bases(layout, ids))
    spec = next(iter(make_sampler(layout, store, ids, cfg, train=False)))
    a, b = ds[spec], ds[spec]
    assert torch.equal(a.query, b.query) and torch.equal(a.support, b.support)
    assert all(torch.equal(x, y) for x, y in zip(a.boxes, b.boxes))
    assert all(v == 0 for v in a.support_variant)
    # no augmentation: the query is exactly the stored frame
    img, _ = store.get(a.video_ids[0], int(a.frame_indices[0]))
    assert torch.equal(a.query[0], torch.from_numpy(img).permute(2, 0, 1))
    fixed = load_fixed_episode(layout, store, ids, cfg, base_classes=_bases(layout, ids))
    assert torch.equal(fixed.query, load_fixed_episode(layout, store, ids, cfg, base_classes=_bases(layout, ids)).query)


def test_num_aug_gives_distinct_reproducible_variants(layout, store, ids):
    cfg = _cfg(num_aug=3, episodes_per_epoch=40)
    sampler = make_sampler(layout, store, ids, cfg, train=True)
    specs = list(sampler)
    seen = {(s.videos[c], f, v) for s in specs for c, f, v in zip(s.query_class, s.query_frame, s.query_variant)}
    assert {v for *_, v in seen} == {0, 1, 2}
    # the first frame seen with all three variants
    counts: dict = {}
    for vid, f, v in seen:
        counts.setdefault((vid, f), set()).add(v)
    vid, f = next(k for k, vs in counts.items() if len(vs) == 3)

    def variants():
        ds = EpisodeDataset(layout, store, ids, cfg.data, train=True, base_classes=_bases(layout, ids))
        out = {}
        for s in specs:
            for i, (c, ff, v) in enumerate(zip(s.query_class, s.query_frame, s.query_variant)):
                if s.videos[c] == vid and ff == f and v not in out:
                    out[v] = ds[s].query[i]
        return out

    first, second = variants(), variants()
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[1], first[2])
    assert not torch.equal(first[0], first[2])
    assert all(torch.equal(first[v], second[v]) for v in range(3))


def test_every_frame_variant_pair_used_before_repeats(layout, store, ids):
    pools = frame_pools(layout, store, ids, 0.5)
    vid = ids[0]
    s = EpisodeSampler([vid], 1, 4, 25, seed=3, frames={vid: pools[vid]}, num_aug=2)
    pairs = [(f, v) for sp in s for f, v in zip(sp.query_frame, sp.query_variant)]
    n = len(pools[vid][0]) * 2
    first = pairs[:n]
    assert len(set(first)) == n, "a (frame, variant) pair repeated before all were used"


def test_background_share(layout, store, ids):
    pools = frame_pools(layout, store, ids, 0.5)
    ann = {v: set(pools[v][0]) for v in ids}
    has_both = [v for v in ids if pools[v][0] and pools[v][1]]
    s = EpisodeSampler(has_both, min(2, len(has_both)), 4, 300, seed=0, frames=pools, bg_share=0.25)
    slots = [(sp.videos[c], f) for sp in s for c, f in zip(sp.query_class, sp.query_frame)]
    share = sum(f not in ann[v] for v, f in slots) / len(slots)
    assert abs(share - 0.25) < 0.03
    s0 = EpisodeSampler(has_both, 1, 4, 20, seed=0, frames=pools, bg_share=0.0)
    assert all(f in ann[sp.videos[0]] for sp in s0 for f in sp.query_frame)


def test_sampler_deterministic_per_epoch_and_ddp_disjoint(layout, store, ids):
    pools = frame_pools(layout, store, ids, 0.5)

    def run(epoch, rank=0, world=1):
        s = EpisodeSampler(ids, 2, 3, 9, seed=5, rank=rank, world_size=world, frames=pools, num_aug=2)
        s.set_epoch(epoch)
        return list(s)

    assert run(0) == run(0) and run(0) != run(1)
    r0, r1 = run(0, 0, 2), run(0, 1, 2)
    assert len(r0) == len(r1) == 5
    assert not {s.index for s in r0} & {s.index for s in r1}
    single = {s.index: s for s in run(0)}
    assert all(single[s.index] == s for s in r0 + r1 if s.index in single)


def test_support_variants_follow_support_cache(layout, store, ids):
    on = make_sampler(layout, store, ids, _cfg(support_variants=3, episodes_per_epoch=30), train=True)
    got = {v for s in on for v in s.support_variant}
    assert got <= {0, 1, 2} and len(got) > 1
    off = make_sampler(layout, store, ids, _cfg(support_cache=False), train=True)
    assert {v for s in off for v in s.support_variant} == {-1}
    cfg = _cfg(support_variants=3, episodes_per_epoch=30)
    ds = EpisodeDataset(layout, store, ids, cfg.data, train=True, base_classes=[])
    spec = next(s for s in on if 1 in s.support_variant)
    c = spec.support_variant.index(1)
    other = dataclasses.replace(spec, seed=spec.seed + 1)  # same variant, other episode: same support
    assert torch.equal(ds[spec].support[c], ds[other].support[c])
    assert not torch.equal(ds[spec].support[c], ds.references(spec.videos[c]))


def test_loader_with_two_workers_counts_cache_reads(layout, ids, tmp_path):
    cfg = _cfg(num_workers=2, persistent_workers=True, episodes_per_epoch=8, augment=False)
    fs = FrameStore.build(layout, tmp_path / "fs", img_size=SIZE, bg_share=0.5, cache_mb=8, progress=False)
    loader = make_loader(layout, fs, ids, cfg, train=True, base_classes=_bases(layout, ids))
    epochs = []
    for e in range(2):
        loader.sampler.set_epoch(e)
        epochs.append([b.to("cpu") for b in loader])
    assert [len(x) for x in epochs] == [8, 8]
    s = fs.stats()
    assert s["hits"] + s["misses"] == 2 * 8 * 6 and s["hits"] > 0
    assert not torch.equal(epochs[0][0].query, epochs[1][0].query)


def test_joint_colour_is_tied_to_the_support_variant(demo_root, tmp_path):
    from refdet_core.config import config_from_dict
    from refdet_core.data.episodes import EpisodeDataset, joint_colour_matrix, make_sampler, make_source
    from refdet_core.data.layout import read_layout

    cfg = config_from_dict(
        {
            "data_root": str(demo_root),
            "store_dir": str(tmp_path / "s"),
            "img_size": 96,
            "support_size": 32,
            "n_way": 2,
            "n_query": 1,
            "support_variants": 24,
        }
    )
    layout = read_layout(demo_root)
    ids = [v for v in layout.videos if layout.videos[v].annotated_frames][:2]
    source = make_source(layout, cfg)
    train = EpisodeDataset(layout, source, ids, cfg.data, train=True, base_classes=[])
    val = EpisodeDataset(layout, source, ids, cfg.data, train=False, base_classes=[])
    spec = next(iter(make_sampler(layout, source, ids, cfg, train=True, episodes=1)))
    for c, variant in enumerate(spec.support_variant):
        assert 0 <= variant < cfg.speed.support_variants
        assert torch.equal(train.colour_transform(spec, c), joint_colour_matrix(variant))
        assert val.colour_transform(spec, c) is None
    assert torch.equal(joint_colour_matrix(0), torch.eye(3))  # variant 0 (the clean references) keeps the colours


def test_joint_colour_matrices_keep_grey_and_differ():
    from refdet_core.data.episodes import apply_colour, joint_colour_matrix

    grey = torch.full((3, 4, 4), 120, dtype=torch.uint8)
    red = torch.zeros((3, 4, 4), dtype=torch.uint8)
    red[0], red[1] = 200, 60  # an orange red: no channel swap maps it onto itself
    hues = set()
    for v in range(24):
        m = joint_colour_matrix(v)
        torch.testing.assert_close(m.sum(dim=1), torch.ones(3))  # rows sum to 1: greys stay grey
        assert torch.equal(apply_colour(grey, m), grey) or (apply_colour(grey, m).int() - 120).abs().max() <= 1
        hues.add(tuple(apply_colour(red, m)[:, 0, 0].tolist()))
    assert len(hues) >= 18  # most variants give the red object a colour of its own
    perm = apply_colour(red, joint_colour_matrix(1))
    assert perm.dtype == torch.uint8 and sorted(perm[:, 0, 0].tolist()) == [0, 60, 200]  # permutations stay exact


def test_crop_window_keeps_the_box_whole_and_the_mapping_valid():
    from refdet_core.data.episodes import crop_window
    from refdet_core.data.frames import letterbox_params

    lb = letterbox_params(640, 360, 128)  # scale 0.2, picture rows 28..100 of 128
    img = torch.arange(128).view(1, 1, 128).expand(3, 128, 128).to(torch.uint8).contiguous()  # value = column
    native = torch.tensor([[500.0, 200.0, 560.0, 240.0]])
    boxes = native * lb.scale + torch.tensor([lb.pad_x, lb.pad_y, lb.pad_x, lb.pad_y])
    labels = torch.tensor([[1, 0]])
    seen = set()
    for seed in range(20):
        out, bx, lab, (scale, px, py) = crop_window(img, boxes, labels, lb.as_tuple(), size=64, seed=seed)
        assert out.shape == (3, 64, 64) and len(bx) == 1 and lab.tolist() == [[1, 0]]
        x0 = int(out[0, 0, 0])  # the window's first column tells its offset
        y0 = lb.pad_y - py
        assert x0 == lb.pad_x - px and 28 <= y0 <= 100 - 64  # the window stays on the picture rows
        torch.testing.assert_close(bx, boxes - torch.tensor([x0, y0, x0, y0]))
        assert 0 <= bx[0, 0] and bx[0, 2] <= 64 and 0 <= bx[0, 1] and bx[0, 3] <= 64  # whole inside
        torch.testing.assert_close(native * scale + torch.tensor([px, py, px, py]), bx)  # lb maps into the window
        seen.add(x0)
    assert len(seen) > 3  # the box lands at different places
    # a box cut to less than half its area by any window is dropped with its label; frames not larger pass
    two = torch.cat([boxes, torch.tensor([[0.0, 50.0, 10.0, 60.0]])])
    _, bx, lab, _ = crop_window(img, two, torch.tensor([[1, 0], [1, 0]]), lb.as_tuple(), size=64, seed=0)
    assert len(bx) == len(lab) == 1
    same = crop_window(img, boxes, labels, lb.as_tuple(), size=128, seed=0)
    assert same[0] is img and same[3] == lb.as_tuple()


def test_train_window_batches_have_window_size_and_frame_scale(demo_root, tmp_path):
    from refdet_core.config import ConfigError
    from refdet_core.data.episodes import EpisodeDataset, make_sampler, make_source

    cfg = config_from_dict(
        {"data_root": str(demo_root), "store_dir": str(tmp_path / "s"), "img_size": 128, "train_window": 64,
         "support_size": 32, "n_way": 2, "n_query": 2, "bg_share": 0.0}
    )  # fmt: skip
    assert cfg.data.query_size == 64
    layout = read_layout(demo_root)
    ids = [v for v in layout.videos if layout.videos[v].annotated_frames][:2]
    source = make_source(layout, cfg)
    assert source.img_size == 128  # whole frames stored at img_size
    data = EpisodeDataset(layout, source, ids, cfg.data, train=False, base_classes=[])
    batch = data[next(iter(make_sampler(layout, source, ids, cfg, train=False, episodes=1)))]
    assert batch.query.shape[-2:] == (64, 64)
    for bx, vid, frame, (scale, px, py) in zip(batch.boxes, batch.video_ids, batch.frame_indices, batch.letterbox):
        native = torch.from_numpy(layout.videos[vid].boxes_by_frame[int(frame)])
        expected = native * scale + torch.stack([px, py, px, py])
        torch.testing.assert_close(bx, expected.float())  # the object keeps its 128 px frame scale
    with pytest.raises(ConfigError, match="'train_window' must be 0 or at most img_size 64"):
        config_from_dict({"img_size": 64, "train_window": 128})
    with pytest.raises(ConfigError, match="'train_window' must be a multiple of 32"):
        config_from_dict({"img_size": 128, "train_window": 48})


@pytest.mark.parametrize("num_aug", [1, 3])
def test_num_aug_variants_all_come_up_in_one_epoch(layout, store, ids, num_aug):
    """An epoch that covers every annotated frame at num_aug 1 covers every (frame, variant) pair at num_aug 3:
    the epoch is num_aug times longer, instead of the variants thinning out the frames seen."""
    pools = frame_pools(layout, store, ids, 0.5)
    n_query = 3
    episodes = max(-(-len(pools[v][0]) // n_query) for v in ids)  # enough for each video's annotated frames
    cfg = _cfg(num_aug=num_aug, n_way=len(ids), n_query=n_query, bg_share=0.0, episodes_per_epoch=episodes)
    specs = list(make_sampler(layout, store, ids, cfg, train=True))
    assert len(specs) == episodes * num_aug
    seen = {(s.videos[c], f, v) for s in specs for c, f, v in zip(s.query_class, s.query_frame, s.query_variant)}
    wanted = {(vid, f, v) for vid in ids for f in pools[vid][0] for v in range(num_aug)}
    assert wanted <= seen, f"{len(wanted - seen)} of {len(wanted)} (frame, variant) pairs never drawn"


def test_paste_object_copies_the_box_and_fades_its_margin():
    from refdet_core.data.augment import paste_object

    img = torch.zeros((3, 64, 64), dtype=torch.uint8)
    donor = torch.full((3, 80, 80), 200, dtype=torch.uint8)
    boxes, labels = torch.tensor([[0.0, 0.0, 20.0, 20.0]]), torch.tensor([[0, 3]])
    box = torch.tensor([40.0, 40.0, 56.0, 52.0])
    for seed in range(10):
        out, bx, lab = paste_object(img, boxes, labels, donor, box, torch.tensor([1, 5]), np.random.default_rng(seed))
        assert lab.tolist() == [[0, 3], [1, 5]] and bx.shape == (2, 4)
        x1, y1, x2, y2 = (int(v) for v in bx[1])
        assert (x2 - x1, y2 - y1) == (16, 12)  # the donor box, moved
        assert bool((out[:, y1:y2, x1:x2] == 200).all())  # copied as it is inside the box
        assert int(out[:, :20, :20].max()) == 0  # the host's box is left clear
        assert x1 >= 20 or y1 >= 20
        ring = out[0, max(y1 - 3, 0) : y2 + 3, max(x1 - 3, 0) : x2 + 3]
        assert bool(((ring > 0) & (ring < 200)).any())  # the margin fades into the host
        assert int(out.sum()) < 200 * 3 * (16 + 8) * (12 + 8)  # nothing beyond the grown patch
    full = torch.tensor([[0.0, 0.0, 64.0, 64.0]])  # no room anywhere: unchanged
    same = paste_object(img, full, labels, donor, box, torch.tensor([1, 5]), np.random.default_rng(0))
    assert same[0] is img and len(same[1]) == 1


def test_paste_share_shows_another_episode_videos_target_with_its_label(layout, store, ids):
    from refdet_core.data.augment import QueryAugConfig

    still = QueryAugConfig(hflip=0, vflip=0, affine=0, color=0, blur=0, noise=0)
    cfg = _cfg(paste_share=1.0, joint_colour=False, bg_share=0.0)
    ds = EpisodeDataset(layout, store, ids, cfg.data, train=True, base_classes=[], query_aug=still)
    plain = EpisodeDataset(layout, store, ids, _cfg(joint_colour=False).data, train=True, base_classes=[])
    pasted = 0
    for spec in make_sampler(layout, store, ids, cfg, train=True):
        b = ds[spec]
        assert all(bool((lab == b.class_ids[i]).all()) for i, lab in enumerate(plain[spec].labels))
        for i, (bx, lab) in enumerate(zip(b.boxes, b.labels)):
            others = (lab != b.class_ids[i]).nonzero().flatten().tolist()
            assert len(others) <= 1 and all(k == len(lab) - 1 for k in others)  # pasted last, one at most
            for k in others:
                vid = b.support_video_ids[int(lab[k])]
                x1, y1, x2, y2 = bx[k].tolist()
                inside = b.query[i, :, int(np.ceil(y1)) : int(np.floor(y2)), int(np.ceil(x1)) : int(np.floor(x2))]
                found = False
                for f in layout.videos[vid].annotated_frames:
                    frame = torch.from_numpy(store.get(vid, f)[0]).permute(2, 0, 1)
                    dx1, dy1, _, _ = store.letterbox(vid).to_letterbox(layout.videos[vid].boxes_by_frame[f])[0].tolist()
                    sx, sy = int(np.ceil(dx1)), int(np.ceil(dy1))
                    if round(dx1 - x1, 3) % 1 or round(dy1 - y1, 3) % 1:
                        continue
                    crop = frame[:, sy : sy + inside.shape[1], sx : sx + inside.shape[2]]
                    found |= crop.shape == inside.shape and bool((crop == inside).all())
                assert found, f"query {i}: the pasted box is no target crop of {vid}"
                pasted += 1
    assert pasted >= 3  # most queries get one where there is room
