"""Distribution focal loss (Li et al. 2020, as in YOLOv8).

A box is coded per anchor as four distances l, t, r, b from the anchor centre to the box edges, in units of
the anchor's stride; each distance is a softmax over ``reg_max`` bins 0..reg_max-1 and decodes to its
expectation (``models/head.py``: ``dfl_decode`` decodes, ``bbox_to_dist`` encodes targets). Logits are laid out
side-major: ``(..., 4 * reg_max)`` reshapes to ``(..., 4, reg_max)``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

TARGET_MARGIN = 0.01  # distances are clamped to [0, reg_max - 1 - margin] so the right bin exists


def dfl_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Distribution focal loss per side.

    The target distance t lies between bins i = floor(t) and i + 1; the loss is the cross-entropy to both
    bins weighted by closeness: ``(i + 1 - t) * CE(i) + (t - i) * CE(i + 1)``.

    Args:
        logits: (M, 4 * reg_max) or (M, 4, reg_max) DFL logits.
        target: (M, 4) distances in stride units; clamped to [0, reg_max - 1 - 0.01].
    Returns:
        (M, 4) loss per side (uniform logits give ln(reg_max) per side).
    """
    m = target.shape[0]
    reg_max = logits.shape[-1] if logits.dim() == 3 else logits.shape[-1] // 4
    logits = logits.float().reshape(m * 4, reg_max)
    t = target.float().reshape(m * 4).clamp(0, reg_max - 1 - TARGET_MARGIN)
    left = t.floor().long()
    w_left = (left + 1).float() - t
    ce_left = F.cross_entropy(logits, left, reduction="none")
    ce_right = F.cross_entropy(logits, left + 1, reduction="none")
    return (w_left * ce_left + (1 - w_left) * ce_right).reshape(m, 4)
