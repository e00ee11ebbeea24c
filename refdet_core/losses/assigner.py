"""Task-aligned anchor assignment (TOOD, Feng et al. 2021; the form YOLOv8 uses).

For every ground-truth box g and anchor a (all anchors of all scales together):

1. candidates: anchors whose centre lies inside g. A box that contains no anchor centre at all (smaller
   than the finest stride, or zero-size) takes its ``fallback_k`` nearest anchor centres instead, so every
   real object gets at least one positive.
2. alignment ``t = s^alpha * IoU^beta``, where s is the predicted probability of g's episode class at a and
   IoU is between g and the box predicted at a.
3. the ``topk`` candidates with the largest t become positives of g; an anchor claimed by several boxes
   goes to the one it overlaps most.
4. the score target of a positive is its alignment normalised per box: ``t / max_t(g) * max_IoU(g)``.

Every other anchor is a negative for the score of every class; images without boxes have no positives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from refdet_core.losses.iou import bbox_iou


@dataclass
class Assignment:
    """Per-anchor targets for a batch; A counts the anchors of all scales."""

    fg: Tensor  # (B, A) bool, positive anchors
    boxes: Tensor  # (B, A, 4) target xyxy px (meaningful where fg)
    labels: Tensor  # (B, A) long, episode-local class (meaningful where fg)
    gt_index: Tensor  # (B, A) long, index of the assigned box in the padded targets (meaningful where fg)
    target_scores: Tensor  # (B, A) normalised alignment, 0 on negatives
    candidate: Tensor  # (B, A) bool, anchor is a candidate of some box (inside it, or its fallback)


class TaskAlignedAssigner:
    """Task-aligned assigner over padded targets.

    Args:
        topk: positives per box at most.
        alpha: exponent of the class score in the alignment.
        beta: exponent of the IoU in the alignment.
        fallback_k: nearest anchors that become candidates of a box containing no anchor centre.
        eps: small constant for divisions and the strict inside test.
    """

    def __init__(
        self, *, topk: int = 10, alpha: float = 0.5, beta: float = 6.0, fallback_k: int = 3, eps: float = 1e-9
    ) -> None:
        self.topk, self.alpha, self.beta, self.fallback_k, self.eps = topk, alpha, beta, fallback_k, eps

    @torch.no_grad()
    def __call__(
        self,
        pred_scores: Tensor,
        pred_boxes: Tensor,
        anchors: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        gt_mask: Tensor,
    ) -> Assignment:
        """Assign anchors to boxes.

        Args:
            pred_scores: (B, A, N) predicted class probabilities (after sigmoid).
            pred_boxes: (B, A, 4) predicted xyxy px.
            anchors: (A, 2) anchor centres px.
            gt_boxes: (B, G, 4) xyxy px, padded.
            gt_labels: (B, G) long in [0, N), padded.
            gt_mask: (B, G) bool, True for real boxes.
        Returns:
            Assignment with (B, A) tensors.
        """
        b, a, n = pred_scores.shape
        g = gt_boxes.shape[1]
        assert pred_boxes.shape == (b, a, 4), f"pred_boxes {tuple(pred_boxes.shape)} != {(b, a, 4)}"
        assert anchors.shape == (a, 2), f"anchors {tuple(anchors.shape)} != {(a, 2)}"
        if g == 0:  # a shape, known on the host; an all-padding gt_mask needs no branch (no host read)
            return _empty(b, a, pred_boxes.device)
        gt_boxes, pred_boxes, anchors = gt_boxes.float(), pred_boxes.float(), anchors.float()
        cand = self._candidates(anchors, gt_boxes, gt_mask)  # (B, G, A)
        iou = bbox_iou(gt_boxes[:, :, None], pred_boxes[:, None]) * cand  # (B, G, A)
        labels = gt_labels.long().clamp(0, n - 1)
        score = pred_scores.float().permute(0, 2, 1).gather(1, labels[..., None].expand(-1, -1, a))  # (B, G, A)
        align = score.pow(self.alpha) * iou.pow(self.beta) * cand
        mask = self._topk(align, cand)
        mask = _resolve_conflicts(mask, iou)
        return self._targets(mask, align, iou, cand, gt_boxes, labels)

    def _candidates(self, anchors: Tensor, gt_boxes: Tensor, gt_mask: Tensor) -> Tensor:
        """(B, G, A) bool: anchor centre strictly inside the box, or among the nearest when none is."""
        ax, ay = anchors[:, 0], anchors[:, 1]  # (A,)
        x1, y1, x2, y2 = (gt_boxes[..., i, None] for i in range(4))  # (B, G, 1) each
        margin = torch.stack([ax - x1, ay - y1, x2 - ax, y2 - ay], dim=-1).amin(-1)  # (B, G, A)
        inside = margin > self.eps
        centre = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2  # (B, G, 2)
        dist2 = (anchors[None, None] - centre[:, :, None]).pow(2).sum(-1)  # (B, G, A)
        k = min(self.fallback_k, anchors.shape[0])
        nearest = torch.zeros_like(inside).scatter_(-1, dist2.topk(k, dim=-1, largest=False).indices, True)
        no_inside = ~inside.any(-1, keepdim=True)  # (B, G, 1)
        return torch.where(no_inside, nearest, inside) & gt_mask[..., None].bool()

    def _topk(self, align: Tensor, cand: Tensor) -> Tensor:
        """(B, G, A) bool: the top-k candidates by alignment (candidates win ties against non-candidates)."""
        k = min(self.topk, align.shape[-1])
        idx = align.masked_fill(~cand, -1.0).topk(k, dim=-1).indices  # (B, G, k)
        return torch.zeros_like(cand).scatter_(-1, idx, True) & cand

    def _targets(
        self, mask: Tensor, align: Tensor, iou: Tensor, cand: Tensor, gt_boxes: Tensor, labels: Tensor
    ) -> Assignment:
        """Gather per-anchor targets from the (B, G, A) positive mask."""
        fg = mask.any(1)  # (B, A)
        gt_index = mask.float().argmax(1)  # (B, A)
        boxes = gt_boxes.gather(1, gt_index[..., None].expand(-1, -1, 4))  # (B, A, 4)
        anchor_labels = labels.gather(1, gt_index)  # (B, A)
        align = align * mask
        max_align = align.amax(-1, keepdim=True)  # (B, G, 1)
        max_iou = (iou * mask).amax(-1, keepdim=True)  # (B, G, 1)
        target_scores = (align * max_iou / (max_align + self.eps)).amax(1)  # (B, A)
        return Assignment(fg, boxes, anchor_labels, gt_index, target_scores * fg, cand.any(1))


def _resolve_conflicts(mask: Tensor, iou: Tensor) -> Tensor:
    """Give an anchor claimed by several boxes to the claiming box with the highest IoU; (B, G, A) bool."""
    multi = mask.sum(1, keepdim=True) > 1  # (B, 1, A); no early return: it would read a flag on the host
    best = iou.masked_fill(~mask, -1.0).argmax(1)  # (B, A)
    best_mask = best[:, None] == torch.arange(mask.shape[1], device=mask.device)[None, :, None]  # (B, G, A)
    return torch.where(multi, best_mask, mask)


def _empty(b: int, a: int, device: torch.device) -> Assignment:
    """All-negative assignment for a batch without boxes."""
    zeros_b = torch.zeros(b, a, dtype=torch.bool, device=device)
    zeros_l = torch.zeros(b, a, dtype=torch.long, device=device)
    return Assignment(
        zeros_b,
        torch.zeros(b, a, 4, device=device),
        zeros_l,
        zeros_l.clone(),
        torch.zeros(b, a, device=device),
        zeros_b.clone(),
    )
