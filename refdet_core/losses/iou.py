"""Box regression losses: IoU, CIoU and Wise-IoU v1/v2/v3.

Wise-IoU follows Tong et al. 2023 ("Wise-IoU: Bounding Box Regression Loss with Dynamic Focusing
Mechanism", arXiv:2301.10051) and names the versions as the paper does:

- v1: ``L = R_WIoU * L_IoU`` with ``R_WIoU = exp(rho^2 / (W_g^2 + H_g^2)*)``, where rho is the distance
  between the box centres, W_g x H_g is the smallest enclosing box and ``*`` means detached.
- v2 (monotonic focusing): ``L = (L_IoU* / mean(L_IoU))^gamma * L_v1``.
- v3 (non-monotonic focusing): ``beta = L_IoU* / mean(L_IoU)``, ``r = beta / (delta * alpha^(beta - delta))``,
  ``L = r * L_v1``.

``mean(L_IoU)`` is a running mean kept as a buffer and updated with momentum in training mode only.
All losses work on element-wise pairs of xyxy boxes, compute in fp32 and return one value per pair.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

EPS = 1e-7


def _parts(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Widths and heights of both boxes and of their smallest enclosing box, each (...)."""
    wp = (pred[..., 2] - pred[..., 0]).clamp(min=0)
    hp = (pred[..., 3] - pred[..., 1]).clamp(min=0)
    wt = (target[..., 2] - target[..., 0]).clamp(min=0)
    ht = (target[..., 3] - target[..., 1]).clamp(min=0)
    cw = torch.maximum(pred[..., 2], target[..., 2]) - torch.minimum(pred[..., 0], target[..., 0])
    ch = torch.maximum(pred[..., 3], target[..., 3]) - torch.minimum(pred[..., 1], target[..., 1])
    return wp, hp, wt, ht, cw, ch


def bbox_iou(pred: Tensor, target: Tensor, eps: float = EPS) -> Tensor:
    """Element-wise IoU of broadcastable xyxy boxes.

    Args:
        pred: (..., 4) boxes.
        target: (..., 4) boxes, broadcastable against ``pred``.
    Returns:
        (...) IoU in [0, 1]; zero-area pairs give 0, never NaN.
    """
    pred, target = pred.float(), target.float()
    wp, hp, wt, ht, _, _ = _parts(pred, target)
    iw = (torch.minimum(pred[..., 2], target[..., 2]) - torch.maximum(pred[..., 0], target[..., 0])).clamp(min=0)
    ih = (torch.minimum(pred[..., 3], target[..., 3]) - torch.maximum(pred[..., 1], target[..., 1])).clamp(min=0)
    inter = iw * ih
    union = wp * hp + wt * ht - inter + eps
    return inter / union


def _centre_distance2(pred: Tensor, target: Tensor) -> Tensor:
    """Squared distance between box centres, (...)."""
    dx = (pred[..., 0] + pred[..., 2] - target[..., 0] - target[..., 2]) / 2
    dy = (pred[..., 1] + pred[..., 3] - target[..., 1] - target[..., 3]) / 2
    return dx * dx + dy * dy


def ciou_loss(pred: Tensor, target: Tensor, eps: float = EPS) -> Tensor:
    """Complete-IoU loss ``1 - IoU + rho^2 / c^2 + a * v`` (Zheng et al. 2020), element-wise.

    Same value as ``torchvision.ops.complete_box_iou_loss`` on regular boxes; written here because that one
    divides by the box height and is not finite for zero-height boxes.

    Args:
        pred: (M, 4) predicted xyxy boxes.
        target: (M, 4) target xyxy boxes.
    Returns:
        (M,) loss values in [0, 3).
    """
    pred, target = pred.float(), target.float()
    wp, hp, wt, ht, cw, ch = _parts(pred, target)
    iou = bbox_iou(pred, target, eps)
    c2 = cw * cw + ch * ch + eps
    rho2 = _centre_distance2(pred, target)
    v = (4 / math.pi**2) * (torch.atan(wt / (ht + eps)) - torch.atan(wp / (hp + eps))) ** 2
    with torch.no_grad():
        a = v / (1 - iou + v + eps)
    return 1 - iou + rho2 / c2 + a * v


class CIoULoss(nn.Module):
    """Module form of :func:`ciou_loss`: ``(M, 4), (M, 4) -> (M,)``."""

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        return ciou_loss(pred, target)


class WIoULoss(nn.Module):
    """Wise-IoU loss, version ``"v1"``, ``"v2"`` (monotonic) or ``"v3"`` (non-monotonic focusing).

    Args:
        version: "v1", "v2" or "v3".
        gamma: exponent of the v2 gradient gain.
        alpha, delta: v3 focusing parameters (paper defaults 1.9 and 3).
        momentum: weight of the batch mean in the running mean of L_IoU.
    """

    def __init__(
        self, *, version: str = "v3", gamma: float = 0.5, alpha: float = 1.9, delta: float = 3.0, momentum: float = 0.01
    ) -> None:
        super().__init__()
        if version not in ("v1", "v2", "v3"):
            raise ValueError(f"WIoU version must be v1, v2 or v3, got {version!r}")
        self.version, self.gamma, self.alpha, self.delta, self.momentum = version, gamma, alpha, delta, momentum
        self.register_buffer("iou_loss_mean", torch.tensor(1.0))  # running mean of L_IoU

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """(M, 4) predicted and (M, 4) target xyxy boxes -> (M,) loss per pair."""
        pred, target = pred.float(), target.float()
        _, _, _, _, cw, ch = _parts(pred, target)
        l_iou = 1 - bbox_iou(pred, target)
        r_wiou = torch.exp(_centre_distance2(pred, target) / (cw * cw + ch * ch + EPS).detach())
        loss = r_wiou * l_iou
        if self.version != "v1":
            beta = l_iou.detach() / self.iou_loss_mean.clamp(min=EPS)  # outlier degree
            if self.version == "v2":
                loss = beta.pow(self.gamma) * loss
            else:
                loss = beta / (self.delta * self.alpha ** (beta - self.delta)) * loss
        if self.training and l_iou.numel() > 0:
            self.iou_loss_mean.lerp_(l_iou.detach().mean(), self.momentum)
        return loss


BOX_LOSSES: dict[str, tuple[type[nn.Module], dict]] = {
    "wiou_v1": (WIoULoss, {"version": "v1"}),
    "wiou_v2": (WIoULoss, {"version": "v2"}),
    "wiou_v3": (WIoULoss, {"version": "v3"}),
    "ciou": (CIoULoss, {}),
}


def build_box_loss(name: str) -> nn.Module:
    """The box loss named in ``LossConfig.box_loss``: wiou_v1, wiou_v2, wiou_v3 or ciou."""
    if name not in BOX_LOSSES:
        raise ValueError(f"unknown box loss {name!r}; choose one of {', '.join(BOX_LOSSES)}")
    cls, kwargs = BOX_LOSSES[name]
    return cls(**kwargs)
