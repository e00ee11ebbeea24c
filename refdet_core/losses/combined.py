"""The training loss: task-aligned assignment, then box, DFL, score, base-class, contrastive and re-ID terms.

Every anchor is supervised: positives get box, DFL and score targets; every other anchor is a negative for
the score of every prototype (background frames train "absent"). Scores, box and DFL terms are normalised
by the sum of the score targets, as YOLOv8 does. All terms are computed in fp32 whatever the autocast dtype.

Per-stage weights, on top of the ``LossConfig`` weights:

| stage | box, dfl, score, cls | supcon, cpe, triplet |
|---|---|---|
| 1 (detection) | 1 | 0 |
| 2 (episodic) | 1 | 1 |
| 3 (fine-tune) | 1 | 0.5 |

The ``reid`` term (with ``ref_match``, every stage, weight ``w_reid``) trains the re-identification score of
whole-video inference itself: the model's cosine between frame crops and each reference set
(``HeadOutput.reid_cos``, ``models/match.py``), as a BCE on ``REID_SCALE * (cos - REID_OFFSET)``, 1 for a target
crop against its own references and 0 for every other pair (the episode's other reference sets, the hard
negatives); positive and negative pairs are averaged apart, so the few targets weigh as much as the many others.

Dynamic schedule: once ``epoch > contrastive_decay_epoch`` (when that is >= 0) the contrastive weights are
multiplied by ``contrastive_decay``. ``epoch`` is the 0-based index of the current epoch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from refdet_core.config import LossConfig
from refdet_core.losses.assigner import Assignment, TaskAlignedAssigner
from refdet_core.losses.contrastive import cpe_loss, graph_zero, supcon_loss, triplet_loss
from refdet_core.losses.dfl import dfl_loss
from refdet_core.losses.iou import build_box_loss
from refdet_core.models.head import HeadOutput, bbox_to_dist, dfl_decode

CONTRASTIVE = ("supcon", "cpe", "triplet")
STAGE_CONTRASTIVE_SCALE = {1: 0.0, 2: 1.0, 3: 0.5}
VARIFOCAL_ALPHA, VARIFOCAL_GAMMA = 0.75, 2.0
REID_SCALE, REID_OFFSET = 10.0, 0.5  # a fixed calibration: inference ranks by the cosine itself


def score_loss(logits: Tensor, targets: Tensor, kind: str = "bce") -> Tensor:
    """Summed BCE (or varifocal) over all anchors and columns.

    Args:
        logits: (B, A, N) score logits.
        targets: (B, A, N) soft targets in [0, 1] (normalised alignment on the positive's column, else 0).
        kind: "bce" or "varifocal" (VarifocalNet: positives weighted by their target, negatives by
            ``alpha * p^gamma``).
    Returns:
        () sum; the caller normalises.
    """
    logits, targets = logits.float(), targets.float()
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if kind == "bce":
        return bce.sum()
    if kind == "varifocal":
        p = logits.detach().sigmoid()
        weight = torch.where(targets > 0, targets, VARIFOCAL_ALPHA * p.pow(VARIFOCAL_GAMMA))
        return (bce * weight).sum()
    raise ValueError(f"unknown score loss {kind!r}; choose bce or varifocal")


def reid_loss(cos: Tensor | None, labels: Tensor | None, *, like: Tensor) -> Tensor:
    """Crop-vs-references BCE (module docstring): cos (M, N), labels (M,) in [-1, N) -> (); 0 without crops."""
    if cos is None or cos.numel() == 0:
        return like.new_zeros((), dtype=torch.float32) if cos is None else graph_zero(cos)
    target = one_hot(labels.clamp(min=0), cos.shape[1]) * (labels >= 0).float()[:, None]  # (M, N)
    bce = F.binary_cross_entropy_with_logits(REID_SCALE * (cos.float() - REID_OFFSET), target, reduction="none")
    pos = (bce * target).sum() / target.sum().clamp(min=1.0)
    neg = (bce * (1.0 - target)).sum() / (1.0 - target).sum().clamp(min=1.0)
    return pos + neg


def one_hot(index: Tensor, n: int) -> Tensor:
    """(...,) long -> (..., n) float32. Unlike ``F.one_hot`` it never reads the values on the host (which
    ``F.one_hot`` does to range-check them on CPU); indices are in range by construction here."""
    return (index[..., None] == torch.arange(n, device=index.device)).float()


def pad_targets(
    boxes: list[Tensor], labels: list[Tensor], base_labels: list[Tensor], device: torch.device
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pad per-image targets: -> boxes (B, G, 4) float, labels (B, G), base labels (B, G) (-1 pad), mask (B, G)."""
    b, g = len(boxes), max((len(x) for x in boxes), default=0)
    gt_boxes = torch.zeros(b, g, 4, device=device)
    gt_labels = torch.zeros(b, g, dtype=torch.long, device=device)
    gt_base = torch.full((b, g), -1, dtype=torch.long, device=device)
    gt_mask = torch.zeros(b, g, dtype=torch.bool, device=device)
    for i, (bx, lb, bl) in enumerate(zip(boxes, labels, base_labels)):
        n = len(bx)
        gt_boxes[i, :n] = bx.float().to(device)
        gt_labels[i, :n] = lb.long().to(device)
        gt_base[i, :n] = bl.long().to(device)
        gt_mask[i, :n] = True
    return gt_boxes, gt_labels, gt_base, gt_mask


MIN_BOX_WEIGHT = 0.01  # floor of a positive's weight in the box and DFL means


class CombinedLoss(nn.Module):
    """Weighted sum of all training losses; holds the assigner and the (stateful) box loss.

    Args:
        cfg: loss section of the config (weights, box/score loss kinds, TAL settings, schedule).
        stage: 1, 2 or 3 (see the module docstring).
        reg_max: DFL bins of the head.
    """

    def __init__(self, cfg: LossConfig, *, stage: int, reg_max: int, check_labels: bool = True) -> None:
        super().__init__()
        if stage not in STAGE_CONTRASTIVE_SCALE:
            raise ValueError(f"stage must be 1, 2 or 3, got {stage!r}")
        self.cfg, self.stage, self.reg_max = cfg, stage, reg_max
        # label ranges are values, so checking them reads the device; the trainer's batches were checked on the
        # host before the transfer (EpisodeBatch.validate), and it turns this off
        self.check_labels = check_labels
        self.assigner = TaskAlignedAssigner(topk=cfg.tal_topk, alpha=cfg.tal_alpha, beta=cfg.tal_beta)
        self.box_loss = build_box_loss(cfg.box_loss)

    def weights(self, epoch: int) -> dict[str, float]:
        """Weight of each term at ``epoch`` (0-based), stage scale and dynamic schedule applied."""
        c = self.cfg
        scale = STAGE_CONTRASTIVE_SCALE[self.stage]
        if c.contrastive_decay_epoch >= 0 and epoch > c.contrastive_decay_epoch:
            scale *= c.contrastive_decay
        return {
            "box": c.w_box, "dfl": c.w_dfl, "score": c.w_score, "cls": c.w_cls,
            "supcon": c.w_supcon * scale, "cpe": c.w_cpe * scale, "triplet": c.w_triplet * scale, "reid": c.w_reid,
        }  # fmt: skip

    def forward(
        self,
        out: HeadOutput,
        boxes: list[Tensor],
        labels: list[Tensor],
        base_labels: list[Tensor],
        *,
        epoch: int,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss and its detached terms.

        Args:
            out: head output: box_logits (B, A, 4*reg_max), scores (B, A, N) or None (standard mode: the
                assignment then uses the base-class scores), cls_logits (B, A, C) or None, embeddings
                [(B, A_s, D_s)] and prototypes [(N, D_s)] (empty in standard mode), anchors (A, 2), strides (A,).
            boxes: B tensors (n_i, 4) xyxy px; n_i = 0 on background frames.
            labels: B tensors (n_i,) episode-local class in [0, N).
            base_labels: B tensors (n_i,) base-class index, -1 when unknown.
            epoch: 0-based epoch index, for the contrastive schedule.
        Returns:
            total () fp32, and terms {box, dfl, score, cls, supcon, cpe, triplet, reid, num_pos} as detached
            scalars.
        """
        self._check(out, boxes, labels, base_labels)
        box_logits = out.box_logits.float()
        anchors, strides = out.anchors.float(), out.strides.float()
        pred_boxes = dfl_decode(box_logits, anchors, strides)  # (B, A, 4)
        gt_boxes, gt_labels, gt_base, gt_mask = pad_targets(boxes, labels, base_labels, box_logits.device)
        assign = self._assign(out, pred_boxes.detach(), gt_boxes, gt_labels, gt_base, gt_mask)
        norm = assign.target_scores.sum().clamp(min=1.0)

        terms = {"score": self._score_term(out.scores, assign, norm)}
        terms["box"], terms["dfl"] = self._box_terms(box_logits, pred_boxes, anchors, strides, assign, norm)
        terms["cls"] = self._cls_term(out.cls_logits, assign, gt_base, norm)
        terms.update(self._contrastive_terms(out, assign))
        terms["reid"] = reid_loss(out.reid_cos, out.reid_labels, like=box_logits)

        w = self.weights(epoch)
        total = sum(w[k] * terms[k] for k in w)
        logged = {k: terms[k].detach() for k in w}
        logged["num_pos"] = assign.fg.sum().float()
        return total, logged

    def _assign(
        self, out: HeadOutput, pred_boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor, gt_base: Tensor, gt_mask: Tensor
    ) -> Assignment:
        """Task-aligned assignment on the prototype scores, or on the base-class scores when the head has none."""
        anchors = out.anchors.float()
        if out.scores is not None:
            probs = out.scores.detach().float().sigmoid()
            return self.assigner(probs, pred_boxes, anchors, gt_boxes, gt_labels, gt_mask)
        probs = out.cls_logits.detach().float().sigmoid()  # (B, A, C); unknown base class (-1): score 1, IoU only
        probs = torch.cat([probs, torch.ones_like(probs[..., :1])], dim=-1)
        base = torch.where(gt_base >= 0, gt_base, probs.shape[-1] - 1)
        assign = self.assigner(probs, pred_boxes, anchors, gt_boxes, base, gt_mask)
        assign.labels = gt_labels.gather(1, assign.gt_index) if gt_labels.shape[1] else assign.labels
        return assign

    def _score_term(self, scores: Tensor | None, assign: Assignment, norm: Tensor) -> Tensor:
        """Prototype-score loss over all anchors x N columns (0 when the head has no prototype scores)."""
        if scores is None:
            return assign.target_scores.new_zeros(())
        targets = one_hot(assign.labels, scores.shape[-1]) * assign.target_scores[..., None]  # (B, A, N)
        return score_loss(scores, targets, self.cfg.score_loss) / norm

    def _box_terms(
        self, box_logits: Tensor, pred_boxes: Tensor, anchors: Tensor, strides: Tensor, assign: Assignment, norm: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Box and DFL losses: means over positives weighted by their score target; each ().

        A weighted mean (YOLOv8's ``/ max(sum, 1)`` whenever the targets sum past 1). Tiny objects start with IoU
        near 0, so their targets sum far below 1: the floor on the weight and the plain normaliser keep their box
        gradient from vanishing.
        """
        fg = assign.fg  # (B, A)
        weight = assign.target_scores[fg].clamp(min=MIN_BOX_WEIGHT)  # (M,)
        norm = weight.sum().clamp(min=1e-6)
        box = (self.box_loss(pred_boxes[fg], assign.boxes[fg]) * weight).sum() / norm
        a_idx = fg.nonzero()[:, 1]  # anchor index of each positive
        dist = bbox_to_dist(assign.boxes[fg], anchors[a_idx], strides[a_idx], self.reg_max)  # (M, 4)
        dfl = (dfl_loss(box_logits[fg], dist).mean(-1) * weight).sum() / norm
        return box, dfl

    def _cls_term(self, cls_logits: Tensor | None, assign: Assignment, gt_base: Tensor, norm: Tensor) -> Tensor:
        """Base-class BCE over all anchors; positives of boxes with an unknown base class (-1) are left out."""
        if cls_logits is None:
            return assign.target_scores.new_zeros(())
        if gt_base.shape[1] == 0:  # no boxes in the batch: every anchor is a negative
            base = torch.full_like(assign.gt_index, -1)
        else:
            base = gt_base.gather(1, assign.gt_index)  # (B, A)
        known = base >= 0
        keep = ~(assign.fg & ~known)  # (B, A)
        weight = (assign.target_scores * known)[..., None]  # (B, A, 1)
        targets = one_hot(base.clamp(min=0), cls_logits.shape[-1]) * weight  # (B, A, C)
        bce = F.binary_cross_entropy_with_logits(cls_logits.float(), targets, reduction="none")
        return (bce * keep[..., None]).sum() / norm

    def _contrastive_terms(self, out: HeadOutput, assign: Assignment) -> dict[str, Tensor]:
        """SupCon, CPE and triplet per scale, averaged over the scales that hold positives (0 without embeddings)."""
        sums = {k: out.box_logits.new_zeros((), dtype=torch.float32) for k in CONTRASTIVE}
        start, scales_with_pos = 0, 0
        for emb, proto in zip(out.embeddings, out.prototypes):
            a_s = emb.shape[1]
            fg = assign.fg[:, start : start + a_s]  # (B, A_s)
            neg = ~assign.candidate[:, start : start + a_s]
            lab = assign.labels[:, start : start + a_s][fg]  # (M_s,)
            start += a_s
            pos_emb = emb[fg]  # (M_s, D_s)
            sums["supcon"] = sums["supcon"] + supcon_loss(pos_emb, lab)
            sums["cpe"] = sums["cpe"] + cpe_loss(pos_emb, lab, proto)
            sums["triplet"] = sums["triplet"] + triplet_loss(proto, pos_emb, lab, emb[neg])
            scales_with_pos += int(pos_emb.shape[0] > 0)
        assert not out.embeddings or start == assign.fg.shape[1], (
            f"embeddings cover {start} anchors, the head has {assign.fg.shape[1]}"
        )
        return {k: v / max(scales_with_pos, 1) for k, v in sums.items()}

    def _check(self, out: HeadOutput, boxes: list[Tensor], labels: list[Tensor], base_labels: list[Tensor]) -> None:
        """Shapes and label ranges of the inputs (episode classes must lie in [0, N))."""
        b, a = out.box_logits.shape[:2]
        assert out.scores is not None or out.cls_logits is not None, "the head gave neither scores nor cls_logits"
        n = out.scores.shape[-1] if out.scores is not None else None
        assert out.box_logits.shape == (b, a, 4 * self.reg_max), (
            f"box_logits {tuple(out.box_logits.shape)} != {(b, a, 4 * self.reg_max)}"
        )
        assert len(boxes) == len(labels) == len(base_labels) == b, (
            f"{len(boxes)} boxes, {len(labels)} labels, {len(base_labels)} base_labels for a batch of {b}"
        )
        c = out.cls_logits.shape[-1] if out.cls_logits is not None else None
        for i, (bx, lb, bl) in enumerate(zip(boxes, labels, base_labels)):
            k = len(bx)
            assert bx.shape == (k, 4) and lb.shape == (k,) and bl.shape == (k,), (
                f"image {i}: boxes {tuple(bx.shape)}, labels {tuple(lb.shape)}, base_labels {tuple(bl.shape)}"
            )
            if not (k and self.check_labels):
                continue
            if n is not None and not (0 <= int(lb.min()) and int(lb.max()) < n):
                raise ValueError(f"image {i}: episode labels {lb.tolist()} outside [0, {n})")
            if c is not None and not (-1 <= int(bl.min()) and int(bl.max()) < c):
                raise ValueError(f"image {i}: base labels {bl.tolist()} outside [-1, {c})")
