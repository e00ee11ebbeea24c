"""Task-aligned assigner: candidates, top-k, conflicts, tiny and background images."""

import torch

from refdet_core.losses.assigner import TaskAlignedAssigner
from refdet_core.models.head import make_anchors


def anchors_for(img: int, strides: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor centres (A, 2) px and strides (A,) of a square image, as the head lays them out."""
    return make_anchors([(img // s, img // s) for s in strides], strides)


def boxes_around_anchors(anchors: torch.Tensor, strides: torch.Tensor, b: int) -> torch.Tensor:
    """Predicted boxes of half-width 1.5 strides around each anchor, (B, A, 4)."""
    half = 1.5 * strides[:, None]
    return torch.cat([anchors - half, anchors + half], -1).expand(b, -1, -1).clone()


def assign(gt: list[list[float]], *, img: int = 128, strides=(8, 16, 32), n: int = 2, labels=None):
    anchors, s = anchors_for(img, strides)
    pred_boxes = boxes_around_anchors(anchors, s, 1)
    scores = torch.full((1, anchors.shape[0], n), 0.5)
    gt_boxes = torch.tensor(gt, dtype=torch.float32).reshape(1, -1, 4)
    g = gt_boxes.shape[1]
    gt_labels = torch.tensor(labels if labels is not None else [0] * g).reshape(1, g)
    mask = torch.ones(1, g, dtype=torch.bool)
    return TaskAlignedAssigner()(scores, pred_boxes, anchors, gt_boxes, gt_labels, mask), anchors


def test_each_box_gets_between_one_and_topk_positives():
    result, _ = assign([[10, 10, 60, 50], [70, 70, 120, 126], [100, 4, 114, 20]], labels=[0, 1, 1])
    for g in range(3):
        count = int((result.fg & (result.gt_index == g)).sum())
        assert 1 <= count <= 10, f"box {g} has {count} positives"
    assert set(result.labels[result.fg].tolist()) == {0, 1}


def test_anchors_outside_boxes_are_never_positive():
    gt = [[10, 10, 60, 50], [64, 64, 128, 128]]
    result, anchors = assign(gt)
    pos = anchors[result.fg[0]]
    boxes = result.boxes[0][result.fg[0]]
    inside = ((pos > boxes[:, :2]) & (pos < boxes[:, 2:])).all(-1)
    assert result.fg.sum() > 0
    assert bool(inside.all())


def test_tiny_box_smaller_than_every_stride_still_gets_a_positive():
    # 4 x 4 px box between the stride-8 anchor centres (4, 12, 20, ...): no anchor centre inside it
    result, anchors = assign([[13, 13, 17, 17]])
    fg = result.fg[0]
    assert 1 <= int(fg.sum()) <= 3
    dist = (anchors[fg] - 15).abs().amax(-1)
    assert bool((dist < 8).all()), "fallback positives are the nearest anchors"


def test_tiny_box_on_p2_uses_the_anchor_inside():
    result, anchors = assign([[8, 8, 12, 12]], strides=(4, 8, 16, 32))
    fg = result.fg[0]
    assert int(fg.sum()) == 1
    assert anchors[fg].tolist() == [[10.0, 10.0]]


def test_zero_size_box_is_finite_and_assigned():
    result, _ = assign([[50, 50, 50, 50]])
    assert 1 <= int(result.fg.sum()) <= 3
    assert torch.isfinite(result.target_scores).all()


def test_background_image_has_no_positives():
    anchors, s = anchors_for(64, (8, 16, 32))
    a = anchors.shape[0]
    scores = torch.rand(2, a, 3)
    preds = boxes_around_anchors(anchors, s, 2)
    gt = torch.zeros(2, 1, 4)
    gt[0, 0] = torch.tensor([8.0, 8.0, 40.0, 40.0])
    mask = torch.tensor([[True], [False]])  # image 1: padded, no box
    result = TaskAlignedAssigner()(scores, preds, anchors, gt, torch.zeros(2, 1, dtype=torch.long), mask)
    assert result.fg[0].any() and not result.fg[1].any()
    assert float(result.target_scores[1].abs().sum()) == 0.0
    empty = TaskAlignedAssigner()(scores, preds, anchors, torch.zeros(2, 0, 4), torch.zeros(2, 0).long(), mask[:, :0])
    assert not empty.fg.any() and empty.target_scores.shape == (2, a)


def test_shared_anchor_goes_to_the_box_it_overlaps_most():
    anchors = torch.tensor([[20.0, 20.0], [60.0, 20.0]])
    preds = torch.tensor([[[10.0, 10.0, 30.0, 30.0], [50.0, 10.0, 70.0, 30.0]]])
    gt = torch.tensor([[[0.0, 0.0, 40.0, 40.0], [12.0, 12.0, 31.0, 31.0]]])  # both contain anchor 0
    scores = torch.full((1, 2, 1), 0.5)
    result = TaskAlignedAssigner()(scores, preds, anchors, gt, torch.zeros(1, 2).long(), torch.ones(1, 2).bool())
    assert result.fg[0].tolist() == [True, False]
    assert int(result.gt_index[0, 0]) == 1  # IoU 0.90 with box 1 vs 0.25 with box 0


def test_target_scores_are_alignment_normalised_to_the_best_iou():
    result, anchors = assign([[16, 16, 48, 48]])
    t = result.target_scores[0][result.fg[0]]
    # the predicted boxes are 24 x 24 (P3) / 48 x 48 (P4); best IoU with the 32 x 32 box is 24^2 / 32^2
    assert torch.isclose(t.max(), torch.tensor(24.0**2 / 32.0**2), atol=1e-5)
    assert bool((t > 0).all()) and bool((t <= t.max()).all())
    assert float(result.target_scores[0][~result.fg[0]].abs().sum()) == 0.0


def test_topk_prefers_high_alignment():
    anchors, s = anchors_for(128, (8,))
    preds = boxes_around_anchors(anchors, s, 1)
    gt = torch.tensor([[[0.0, 0.0, 128.0, 128.0]]])  # all 256 anchors are candidates
    scores = torch.full((1, anchors.shape[0], 1), 0.01)
    best = 5 * 16 + 3 + torch.arange(10)  # row 5, columns 3..12: predicted boxes fully inside the box
    scores[0, best, 0] = 0.9
    result = TaskAlignedAssigner(topk=10)(scores, preds, anchors, gt, torch.zeros(1, 1).long(), torch.ones(1, 1).bool())
    assert sorted(result.fg[0].nonzero().flatten().tolist()) == best.tolist()
