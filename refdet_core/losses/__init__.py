"""Training losses: task-aligned assignment, box (WIoU/CIoU), DFL, score, base-class and contrastive terms."""

from refdet_core.losses.assigner import Assignment, TaskAlignedAssigner
from refdet_core.losses.combined import CombinedLoss, score_loss
from refdet_core.losses.contrastive import cpe_loss, supcon_loss, triplet_loss
from refdet_core.losses.dfl import dfl_loss
from refdet_core.losses.iou import CIoULoss, WIoULoss, bbox_iou, build_box_loss, ciou_loss

__all__ = [
    "Assignment",
    "CIoULoss",
    "CombinedLoss",
    "TaskAlignedAssigner",
    "WIoULoss",
    "bbox_iou",
    "build_box_loss",
    "ciou_loss",
    "cpe_loss",
    "dfl_loss",
    "score_loss",
    "supcon_loss",
    "triplet_loss",
]
