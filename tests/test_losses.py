"""Box, DFL, contrastive and combined losses: hand-computed values, degenerate inputs, gradients, schedule."""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou, complete_box_iou_loss

from refdet_core.config import LossConfig
from refdet_core.losses import (
    CombinedLoss,
    WIoULoss,
    bbox_iou,
    ciou_loss,
    cpe_loss,
    dfl_loss,
    supcon_loss,
    triplet_loss,
)
from refdet_core.losses.combined import pad_targets
from refdet_core.losses.iou import build_box_loss
from refdet_core.models.head import HeadOutput, bbox_to_dist, dfl_decode, make_anchors

LOW_PRECISION = [torch.float16, torch.bfloat16]


def fake_output(b=2, n=2, c=3, img=64, strides=(8, 16, 32), dims=(8, 16, 32), reg_max=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(img // s, img // s) for s in strides]
    anchors, per_anchor = make_anchors(shapes, strides)
    a = anchors.shape[0]

    def leaf(*shape):
        return torch.randn(*shape, generator=g).to(dtype).requires_grad_()

    return HeadOutput(
        box_logits=leaf(b, a, 4 * reg_max),
        scores=leaf(b, a, n),
        cls_logits=leaf(b, a, c),
        embeddings=[leaf(b, h * w, d) for (h, w), d in zip(shapes, dims)],
        prototypes=[leaf(n, d) for d in dims],
        anchors=anchors,
        strides=per_anchor,
        level_shapes=shapes,
    )


def targets_two_images():
    boxes = [
        torch.tensor([[10.0, 12.0, 30.0, 40.0], [40.0, 36.0, 60.0, 58.0]]),
        torch.tensor([[20.0, 20.0, 34.0, 30.0]]),
    ]
    return boxes, [torch.tensor([0, 1]), torch.tensor([1])], [torch.tensor([2, -1]), torch.tensor([0])]


def leaves(out):
    return {
        "box_logits": out.box_logits,
        "scores": out.scores,
        "cls_logits": out.cls_logits,
        "embeddings": out.embeddings[0],
        "prototypes": out.prototypes[0],
    }


# --- IoU, CIoU, WIoU --------------------------------------------------------------------------------------

A_BOX, B_BOX = torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([[1.0, 1.0, 3.0, 3.0]])
# by hand: intersection 1, union 4 + 4 - 1 = 7; enclosing box 3 x 3 so c^2 = 18; centres (1, 1), (2, 2) so rho^2 = 2
IOU_AB, RHO2_C2 = 1 / 7, 2 / 18


def test_iou_and_ciou_by_hand():
    assert bbox_iou(A_BOX, B_BOX).item() == pytest.approx(IOU_AB, rel=1e-5)
    assert ciou_loss(A_BOX, B_BOX).item() == pytest.approx(1 - IOU_AB + RHO2_C2, rel=1e-5)  # same aspect: v = 0


def test_iou_and_ciou_match_torchvision_on_regular_boxes():
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(50, 2, generator=g) * 100
    p = torch.cat([xy, xy + 1 + torch.rand(50, 2, generator=g) * 50], -1)
    xy = torch.rand(50, 2, generator=g) * 100
    t = torch.cat([xy, xy + 1 + torch.rand(50, 2, generator=g) * 50], -1)
    assert torch.allclose(bbox_iou(p[:, None], t[None]), box_iou(p, t), atol=1e-6)
    assert torch.allclose(ciou_loss(p, t), complete_box_iou_loss(p, t), atol=1e-5)


def test_wiou_v1_by_hand():
    assert WIoULoss(version="v1")(A_BOX, B_BOX).item() == pytest.approx(math.exp(RHO2_C2) * (1 - IOU_AB), rel=1e-5)


def test_wiou_v2_v3_focusing_and_running_mean():
    v1 = math.exp(RHO2_C2) * (1 - IOU_AB)
    v2, v3 = WIoULoss(version="v2").eval(), WIoULoss(version="v3").eval()
    for loss in (v2, v3):
        loss.iou_loss_mean.fill_(0.5)
    beta = (1 - IOU_AB) / 0.5
    assert v2(A_BOX, B_BOX).item() == pytest.approx(beta**0.5 * v1, rel=1e-5)
    assert v3(A_BOX, B_BOX).item() == pytest.approx(beta / (3.0 * 1.9 ** (beta - 3.0)) * v1, rel=1e-5)
    assert v3.iou_loss_mean.item() == 0.5, "eval mode keeps the running mean"
    v3.train()
    v3(A_BOX, B_BOX)
    assert v3.iou_loss_mean.item() == pytest.approx(0.99 * 0.5 + 0.01 * (1 - IOU_AB), rel=1e-6)
    v3.eval()
    v3.iou_loss_mean.fill_((1 - IOU_AB) / 3.0)  # beta = delta gives r = 1
    assert v3(A_BOX, B_BOX).item() == pytest.approx(v1, rel=1e-5)
    assert "iou_loss_mean" in v3.state_dict()


DEGENERATE_BOXES = {
    "identical": (torch.tensor([[5.0, 5.0, 20.0, 30.0]]), torch.tensor([[5.0, 5.0, 20.0, 30.0]])),
    "zero_size": (torch.tensor([[5.0, 5.0, 5.0, 5.0]]), torch.tensor([[5.0, 5.0, 5.0, 9.0]])),
    "huge": (torch.tensor([[0.0, 0.0, 1e4, 1e4]]), torch.tensor([[-1e4, 10.0, 9e3, 1.2e4]])),
    "apart": (torch.tensor([[0.0, 0.0, 1.0, 50.0]]), torch.tensor([[900.0, 900.0, 960.0, 901.0]])),
}


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("name", ["wiou_v1", "wiou_v2", "wiou_v3", "ciou"])
@pytest.mark.parametrize("case", list(DEGENERATE_BOXES))
def test_box_losses_finite_on_degenerate_boxes(name, case, dtype):
    pred, target = (x.to(dtype) for x in DEGENERATE_BOXES[case])
    pred.requires_grad_()
    loss = build_box_loss(name)(pred, target)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(pred.grad).all()
    if case in ("zero_size", "apart"):
        assert pred.grad.abs().sum() > 0, "a box that can improve gets a gradient"


# --- DFL ------------------------------------------------------------------------------------------------------


def test_dfl_uniform_logits_give_log_reg_max_per_side():
    loss = dfl_loss(torch.zeros(3, 64), torch.tensor([[0.0, 3.3, 7.5, 14.0]]).repeat(3, 1))
    assert loss.shape == (3, 4)
    assert torch.allclose(loss, torch.full((3, 4), math.log(16)))
    assert loss.sum(-1)[0].item() == pytest.approx(4 * math.log(16))


def test_dfl_interpolates_the_two_neighbouring_bins():
    logits = torch.randn(1, 4, 16)
    loss = dfl_loss(logits, torch.full((1, 4), 3.3))
    logp = logits.log_softmax(-1)
    expected = -(0.7 * logp[..., 3] + 0.3 * logp[..., 4])
    assert torch.allclose(loss, expected, atol=1e-5)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_dfl_clamps_targets_and_stays_finite(dtype):
    logits = (torch.randn(2, 64) * 30).to(dtype).requires_grad_()
    loss = dfl_loss(logits, torch.tensor([[-2.0, 0.0, 15.0, 40.0], [1e4, 14.99, 0.5, 3.0]]))
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_box_coding_round_trip():
    anchors, strides = torch.tensor([[20.0, 20.0], [36.0, 44.0]]), torch.tensor([8.0, 16.0])
    boxes = torch.tensor([[10.0, 12.0, 30.0, 40.0], [30.0, 30.0, 50.0, 60.0]])
    dist = bbox_to_dist(boxes, anchors, strides, 16)  # (2, 4) in stride units
    logits = torch.full((1, 2, 4, 16), -1e4)
    left = dist.floor().long()
    frac = dist - left
    logits.scatter_(-1, left[None, ..., None], (1 - frac).log()[None, ..., None])
    logits.scatter_(-1, (left + 1)[None, ..., None], frac.clamp(min=1e-12).log()[None, ..., None])
    assert torch.allclose(dfl_decode(logits.reshape(1, 2, 64), anchors, strides)[0], boxes, atol=1e-3)


# --- contrastive -------------------------------------------------------------------------------------------


def test_supcon_matches_direct_formula():
    z, labels, tau = F.normalize(torch.randn(5, 4), dim=-1), torch.tensor([0, 0, 1, 1, 1]), 0.1
    per_anchor = []
    for i in range(5):
        others = [k for k in range(5) if k != i]
        denom = sum(math.exp(float(z[i] @ z[k]) / tau) for k in others)
        pos = [p for p in others if labels[p] == labels[i]]
        per_anchor.append(-sum(math.log(math.exp(float(z[i] @ z[p]) / tau) / denom) for p in pos) / len(pos))
    assert supcon_loss(z * 3.0, labels, temperature=tau).item() == pytest.approx(sum(per_anchor) / 5, rel=1e-4)


def test_cpe_matches_direct_formula():
    z, protos, labels = torch.randn(4, 6), torch.randn(3, 6), torch.tensor([0, 2, 2, 1])
    cos = F.normalize(z, dim=-1) @ F.normalize(protos, dim=-1).T
    expected = sum(-math.log(cos[i].div(0.1).softmax(-1)[labels[i]].item()) for i in range(4)) / 4
    assert cpe_loss(z, labels, protos, temperature=0.1).item() == pytest.approx(expected, rel=1e-4)


def test_triplet_by_hand():
    protos = torch.tensor([[1.0, 0.0]])
    pos = torch.tensor([[1.0, 1.0]])  # cos 1/sqrt(2)
    negs = torch.tensor([[0.0, 1.0], [1.0, -0.2]])  # hardest: cos 1/sqrt(1.04)
    expected = 1 / math.sqrt(1.04) - 1 / math.sqrt(2) + 0.3
    assert triplet_loss(protos, pos, torch.tensor([0]), negs).item() == pytest.approx(expected, rel=1e-5)


CONTRASTIVE_CASES = {
    "single_class": (torch.randn(6, 8), torch.zeros(6, dtype=torch.long)),
    "duplicates": (torch.randn(1, 8).repeat(6, 1), torch.tensor([0, 0, 1, 1, 0, 1])),
    "zeros": (torch.zeros(6, 8), torch.tensor([0, 1, 0, 1, 0, 1])),
    "no_positive": (torch.randn(0, 8), torch.zeros(0, dtype=torch.long)),
    "no_pair": (torch.randn(2, 8), torch.tensor([0, 1])),
}


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("case", list(CONTRASTIVE_CASES))
def test_contrastive_losses_finite_and_connected(case, dtype):
    emb, labels = CONTRASTIVE_CASES[case]
    emb = (emb * 5).to(dtype).requires_grad_()
    protos = torch.randn(2, 8).to(dtype).requires_grad_()
    negs = torch.randn(4, 8).to(dtype).requires_grad_()
    losses = {
        "supcon": supcon_loss(emb, labels),
        "cpe": cpe_loss(emb, labels, protos),
        "triplet": triplet_loss(protos, emb, labels, negs),
    }
    for name, loss in losses.items():
        assert loss.dim() == 0 and torch.isfinite(loss), f"{name} on {case}: {loss}"
        assert loss.requires_grad, f"{name} on {case} is cut from the graph"
    sum(losses.values()).backward()
    for t in (emb, protos, negs):
        assert t.grad is not None and torch.isfinite(t.grad).all()
    if case in ("single_class", "zeros"):
        assert emb.grad.abs().sum() > 0 and protos.grad.abs().sum() > 0


# --- combined ----------------------------------------------------------------------------------------------


def test_random_batch_gives_nonzero_loss_and_gradients_everywhere():
    out = fake_output()
    total, terms = CombinedLoss(LossConfig(), stage=2, reg_max=16)(out, *targets_two_images(), epoch=0)
    assert set(terms) == {"box", "dfl", "score", "cls", "supcon", "cpe", "triplet", "reid", "num_pos"}
    assert all(t.dim() == 0 and not t.requires_grad for t in terms.values())
    assert total.item() > 0 and terms["num_pos"].item() >= 3
    assert all(terms[k].item() > 0 for k in ("box", "dfl", "score", "cls", "cpe", "triplet"))
    total.backward()
    for name, t in leaves(out).items():
        assert t.grad is not None and t.grad.abs().sum() > 0, f"no gradient reaches {name}"


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("box_loss", ["wiou_v1", "wiou_v2", "wiou_v3", "ciou"])
def test_combined_finite_in_low_precision(box_loss, dtype):
    out = fake_output(dtype=dtype)
    loss = CombinedLoss(replace(LossConfig(), box_loss=box_loss), stage=2, reg_max=16)
    boxes, labels, base = targets_two_images()
    boxes[1] = torch.cat([boxes[1], torch.tensor([[0.0, 0.0, 1e4, 1e4], [22.0, 22.0, 22.0, 22.0]])])
    labels[1], base[1] = torch.tensor([1, 0, 1]), torch.tensor([0, 1, -1])
    total, terms = loss(out, boxes, labels, base, epoch=0)
    total.backward()
    assert total.dtype == torch.float32 and torch.isfinite(total)
    assert all(torch.isfinite(t) for t in terms.values())
    for name, t in leaves(out).items():
        assert torch.isfinite(t.grad).all(), f"non-finite gradient on {name}"


@pytest.mark.parametrize("dtype", [torch.float32, *LOW_PRECISION])
def test_background_batch_pushes_every_score_down(dtype):
    out = fake_output(b=2, n=2, dtype=dtype)
    empty = [torch.zeros(0, 4), torch.zeros(0, 4)]
    no_labels = [torch.zeros(0, dtype=torch.long)] * 2
    total, terms = CombinedLoss(LossConfig(), stage=2, reg_max=16)(out, empty, no_labels, no_labels, epoch=0)
    assert terms["num_pos"].item() == 0 and terms["score"].item() > 0 and torch.isfinite(total)
    total.backward()
    assert bool((out.scores.grad > 0).all()), "descent must lower every score on a background batch"
    assert all(torch.isfinite(t.grad).all() for t in leaves(out).values())
    assert out.embeddings[0].grad is not None and out.box_logits.grad is not None


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_single_class_episode(dtype):
    out = fake_output(n=1, dtype=dtype)
    boxes, _, base = targets_two_images()
    labels = [torch.zeros(2, dtype=torch.long), torch.zeros(1, dtype=torch.long)]
    total, terms = CombinedLoss(LossConfig(), stage=3, reg_max=16)(out, boxes, labels, base, epoch=0)
    total.backward()
    assert torch.isfinite(total) and terms["cpe"].item() == 0.0  # one prototype: nothing to tell apart
    assert all(torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0 for t in leaves(out).values())


def test_standard_head_without_prototype_scores():
    out = replace(fake_output(), scores=None, embeddings=[], prototypes=[])
    boxes, labels, base = targets_two_images()  # one box has an unknown base class (-1)
    total, terms = CombinedLoss(LossConfig(), stage=1, reg_max=16)(out, boxes, labels, base, epoch=0)
    total.backward()
    assert terms["num_pos"].item() >= 3 and terms["score"].item() == 0 and terms["cls"].item() > 0
    assert out.cls_logits.grad.abs().sum() > 0 and out.box_logits.grad.abs().sum() > 0


def test_varifocal_score_loss_and_missing_cls_logits():
    out = replace(fake_output(), cls_logits=None)
    loss = CombinedLoss(replace(LossConfig(), score_loss="varifocal"), stage=1, reg_max=16)
    total, terms = loss(out, *targets_two_images(), epoch=0)
    total.backward()
    assert terms["cls"].item() == 0 and terms["score"].item() > 0 and out.scores.grad.abs().sum() > 0


def test_stage_weights_and_contrastive_schedule():
    cfg = replace(
        LossConfig(), w_supcon=0.2, w_cpe=0.4, w_triplet=0.8, contrastive_decay_epoch=3, contrastive_decay=0.5
    )
    s1, s2, s3 = (CombinedLoss(cfg, stage=s, reg_max=16) for s in (1, 2, 3))
    assert [s1.weights(0)[k] for k in ("supcon", "cpe", "triplet")] == [0.0, 0.0, 0.0]
    assert s1.weights(0)["box"] == cfg.w_box and s1.weights(0)["cls"] == cfg.w_cls
    assert [s2.weights(3)[k] for k in ("supcon", "cpe", "triplet")] == [0.2, 0.4, 0.8]
    assert [s2.weights(4)[k] for k in ("supcon", "cpe", "triplet")] == [0.1, 0.2, 0.4]
    assert [s3.weights(0)[k] for k in ("supcon", "cpe", "triplet")] == [0.1, 0.2, 0.4]
    assert [s3.weights(10)[k] for k in ("supcon", "cpe", "triplet")] == [0.05, 0.1, 0.2]
    assert s2.weights(4)["score"] == cfg.w_score, "the schedule leaves detection weights alone"
    never = CombinedLoss(replace(cfg, contrastive_decay_epoch=-1), stage=2, reg_max=16)
    assert never.weights(1000)["cpe"] == 0.4


def test_schedule_changes_the_total():
    cfg = replace(LossConfig(), contrastive_decay_epoch=0, contrastive_decay=0.0)
    loss = CombinedLoss(cfg, stage=2, reg_max=16).eval()
    out, targets = fake_output(), targets_two_images()
    (before, terms), (after, _) = loss(out, *targets, epoch=0), loss(out, *targets, epoch=1)
    contrastive = cfg.w_supcon * terms["supcon"] + cfg.w_cpe * terms["cpe"] + cfg.w_triplet * terms["triplet"]
    assert (before - after).item() == pytest.approx(contrastive.item(), rel=1e-4)


def test_loss_accepts_only_declared_inputs():
    loss, out, targets = CombinedLoss(LossConfig(), stage=2, reg_max=16), fake_output(), targets_two_images()
    with pytest.raises(TypeError):
        loss(out, *targets, epoch=0, diagnostic_data={})
    with pytest.raises(TypeError):
        loss(out, *targets, 0)  # epoch is keyword-only


@pytest.mark.parametrize("bad", [torch.tensor([0, 2]), torch.tensor([-1, 0])])
def test_episode_labels_outside_range_are_rejected(bad):
    boxes, labels, base = targets_two_images()
    labels[0] = bad
    with pytest.raises(ValueError, match="outside"):
        CombinedLoss(LossConfig(), stage=2, reg_max=16)(fake_output(n=2), boxes, labels, base, epoch=0)


def test_score_targets_stay_in_range():
    loss, out = CombinedLoss(LossConfig(), stage=2, reg_max=16), fake_output(n=3)
    boxes, labels, _ = targets_two_images()
    labels = [torch.tensor([2, 0]), torch.tensor([1])]
    gt = [torch.zeros(len(x), 4) + x for x in boxes]
    gt_boxes, gt_labels, _, mask = pad_targets(gt, labels, labels, torch.device("cpu"))
    pred = dfl_decode(out.box_logits.detach(), out.anchors, out.strides)
    result = loss.assigner(out.scores.detach().sigmoid(), pred, out.anchors, gt_boxes, gt_labels, mask)
    assert bool((result.labels >= 0).all() and (result.labels < 3).all())
    assert bool(((result.target_scores >= 0) & (result.target_scores <= 1)).all())
    assert set(result.labels[result.fg].tolist()) == {0, 1, 2}


def test_wiou_running_mean_moves_in_training_only():
    loss, out, targets = CombinedLoss(LossConfig(), stage=2, reg_max=16), fake_output(), targets_two_images()
    mean = loss.box_loss.iou_loss_mean
    loss.eval()(out, *targets, epoch=0)
    assert mean.item() == 1.0
    loss.train()(out, *targets, epoch=0)
    assert mean.item() != 1.0
