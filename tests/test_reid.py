"""The crop re-ID network (models/reid.py) and its training on mined crops (train/reid.py)."""

from __future__ import annotations

import numpy as np
import torch

from refdet_core.models.reid import CropReid, crop_squares, square_boxes
from refdet_core.train.reid import CropSet, _frame_crops, crop_similarities, rank_share, train_reid


def test_square_boxes_keep_the_centre_and_take_the_long_side() -> None:
    sq = square_boxes(torch.tensor([[10.0, 20.0, 30.0, 30.0]]), context=2.0)
    assert torch.allclose(sq, torch.tensor([[0.0, 5.0, 40.0, 45.0]]))


def test_crop_of_a_box_sees_what_is_in_it() -> None:
    frame = torch.zeros(1, 3, 64, 64)
    frame[0, 0, 20:30, 20:30] = 1.0  # a red square
    crops = crop_squares(frame, [torch.tensor([[20.0, 20.0, 30.0, 30.0], [40.0, 40.0, 50.0, 50.0]])], 16)
    assert crops.shape == (2, 3, 16, 16)
    assert crops[0, 0, 8, 8] > 0.9 and crops[1, 0].max() < 0.05


def test_embeddings_are_unit_vectors_and_similarity_takes_the_best_reference() -> None:
    net = CropReid(size=32, width=4, dim=8).eval()
    e = net(torch.rand(5, 3, 32, 32))
    assert e.shape == (5, 8) and torch.allclose(e.norm(dim=1), torch.ones(5), atol=1e-5)
    refs = torch.stack([e[:2], e[2:4]])  # two sets of two references
    sim = net.similarity(e[:1], refs)
    assert torch.allclose(sim[0, 0], torch.tensor(1.0), atol=1e-5) and sim[0, 1] < 1.0


def test_frame_crops_label_targets_and_negatives_by_overlap() -> None:
    frame = torch.rand(3, 64, 64)
    boxes = torch.tensor(
        [[10.0, 10.0, 20.0, 20.0], [11.0, 10.0, 21.0, 20.0], [14.0, 10.0, 24.0, 20.0], [40, 40, 50, 50]]
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    gt = torch.tensor([[10.0, 10.0, 20.0, 20.0]])
    crops, target, score, proposal = _frame_crops(frame, boxes, scores, gt, size=16, negatives=5, with_gt=True)
    # the annotated box, two proposals on it, the far one; the one at IoU 0.43 is neither
    assert target.tolist() == [True, True, True, False] and proposal.tolist() == [False, True, True, True]
    assert (
        torch.allclose(score, torch.tensor([0.0, 0.9, 0.8, 0.6])) and crops.dtype == torch.uint8 and crops.shape[0] == 4
    )


def _toy_set(instances: int, frames: int, seed: int) -> CropSet:
    """Instances are a square of one colour in a frame of another; each frame holds the target and two
    look-alikes: one with the colours swapped (the same colours, another layout: no quarter turn or mirror
    makes one of the other) and one sharing one colour only."""
    g = np.random.default_rng(seed)

    def img(outer, inner, side=32, jitter=0.0):
        x = np.zeros((3, side, side), np.float32)
        lo, mid, hi = side // 5, 2 * side // 5, 3 * side // 5
        x[:, lo : side - lo, lo : side - lo] = np.asarray(outer)[:, None, None]
        x[:, mid:hi, mid:hi] = np.asarray(inner)[:, None, None]
        return np.clip(x + g.normal(0, jitter, x.shape), 0, 1)

    refs, crops, video, group, target = [], [], [], [], []
    gid = 0
    for v in range(instances):
        a, b = g.uniform(0, 1, 3), g.uniform(0, 1, 3)
        refs.append(np.stack([img(a, b, 64, 0.02) for _ in range(3)]))
        for _ in range(frames):
            for c, is_target in ((img(a, b, jitter=0.05), True), (img(b, a, jitter=0.05), False),
                                 (img(a, g.uniform(0, 1, 3), jitter=0.05), False)):  # fmt: skip
                crops.append(c), video.append(v), group.append(gid), target.append(is_target)
            gid += 1
    u8 = lambda x: torch.as_tensor(np.round(np.asarray(x) * 255)).to(torch.uint8)  # noqa: E731
    n = len(crops)
    return CropSet(u8(refs), u8(crops), torch.tensor(video), torch.tensor(group), torch.tensor(target),
                   torch.rand(n), torch.ones(n, dtype=torch.bool), [str(v) for v in range(instances)])  # fmt: skip


def test_training_teaches_the_network_to_pick_the_target_among_look_alikes() -> None:
    torch.manual_seed(0)
    train, unseen = _toy_set(24, 3, seed=0), _toy_set(8, 4, seed=1)
    net = CropReid(size=32, width=8, dim=32)
    before = rank_share(unseen, crop_similarities(net, unseen))["first"]
    losses = train_reid(net, train, steps=150, videos_per_step=8, negatives=2, progress=False)
    after = rank_share(unseen, crop_similarities(net, unseen))
    assert after["frames"] == 32
    assert np.mean(losses[-20:]) < np.mean(losses[:20])
    assert after["first"] >= 0.8 and after["first"] > before, (before, after)


def test_rank_share_counts_frames_with_a_proposal_on_the_target() -> None:
    n = 6
    cs = CropSet(torch.zeros(1, 3, 3, 8, 8, dtype=torch.uint8), torch.zeros(n, 3, 8, 8, dtype=torch.uint8),
                 torch.zeros(n, dtype=torch.long), torch.tensor([0, 0, 1, 1, 2, 2]),
                 torch.tensor([True, False, False, True, False, False]), torch.zeros(n),
                 torch.tensor([True, True, True, True, True, True]), ["v"])  # fmt: skip
    # frame 0: target first; frame 1: a negative first; frame 2: no target (not counted)
    assert rank_share(cs, torch.tensor([0.9, 0.1, 0.8, 0.2, 0.5, 0.5])) == {"frames": 2, "first": 0.5}


def test_a_training_run_trains_the_reid_network_after_the_detector_and_inference_uses_it(demo_root, tmp_path) -> None:
    from refdet_core.checkpoint import read_checkpoint
    from refdet_core.config import config_from_dict
    from refdet_core.data.layout import read_layout
    from refdet_core.eval.candidates import Selection
    from refdet_core.eval.video import frame_batches, load_predictor
    from refdet_core.train.run import build_training

    tiny = {"img_size": 128, "support_size": 64, "n_way": 2, "n_query": 2, "episodes_per_epoch": 2, "epochs": 1,
            "encoder": "vit_tiny_patch16_dinov3_qkvb", "proto_dims": [16, 16, 32, 32], "width": 0.125,
            "encoder_kwargs": {"depth": 2, "embed_dim": 64, "num_heads": 2, "img_size": 64}, "precision": "fp32",
            "warmup_steps": 1, "crop_reid": True, "crop_reid_size": 32, "crop_reid_width": 4, "reid_steps": 3,
            "data_root": str(demo_root), "store_dir": str(tmp_path / "store")}  # fmt: skip
    setup = build_training(config_from_dict(tiny), out_dir=tmp_path / "run", progress=False)
    before = {k: v.clone() for k, v in setup.model.reid.state_dict().items()}
    setup.trainer.fit()
    assert setup.trainer.state.reid_trained
    weights, _, meta = read_checkpoint(tmp_path / "run" / "checkpoint")
    assert meta["crop_reid"]["steps"] == 3 and meta["crop_reid"]["crops"] > 0
    assert any(not torch.equal(before[k], weights["reid." + k]) for k in before), "the re-ID network did not train"

    predictor = load_predictor(tmp_path / "run" / "checkpoint", batch=4, check=Selection(reid_weight=0.5))
    assert predictor.reid is not None and predictor.has_reid
    rec = read_layout(demo_root).videos[setup.train_ids[0]]
    predictor.set_references(rec.reference_paths)
    frames = next(iter(frame_batches(rec.video_path, 128, 4))).frames
    scores, boxes, _, reid = predictor.detect(frames)
    x = torch.as_tensor(frames).permute(0, 3, 1, 2)
    with torch.inference_mode():
        expected = predictor.reid.crop_similarity(x.float() / 255.0, torch.as_tensor(boxes), predictor.reid_refs)
    assert np.allclose(reid, expected.numpy(), atol=1e-5) and reid.shape == scores.shape
