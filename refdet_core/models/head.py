"""Dual detection head: a shared DFL box branch, a standard YOLOv8 class branch over the base classes and a
prototype branch (scaled cosine between projected anchor features and each of the N prototypes).

Modes: ``standard`` (box + base classes), ``prototype`` (box + prototype scores), ``dual`` (all three).
Box logits are per side (l, t, r, b) distributions over ``reg_max`` bins in stride units; ``dfl_decode`` and
``bbox_to_dist`` are the one decoding/encoding used by losses, validation and export.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from refdet_core.models.backbone import ConvBNAct

HEAD_MODES = ("standard", "prototype", "dual")
PRIOR_PROB = 0.01  # initial sigmoid of every score and class logit
MIN_DIST = 0.01  # smallest decoded distance (stride units): a decoded box always has x2 > x1, y2 > y1


@dataclass
class HeadOutput:
    """Per-anchor outputs over all scales (A = sum of H_s * W_s).

    box_logits: (B, A, 4 * reg_max) DFL logits of l, t, r, b in stride units.
    scores: (B, A, N) prototype logits, None in ``standard`` mode.
    cls_logits: (B, A, C) base-class logits, None in ``prototype`` mode.
    embeddings: per scale (B, A_s, D_s) projected anchor features (not normalised); empty in ``standard`` mode.
    prototypes: per scale (N, D_s) the prototypes scored against; empty in ``standard`` mode.
    anchors: (A, 2) anchor centres in input px; strides: (A,); level_shapes: (H_s, W_s) per scale.
    reid_cos, reid_labels: in training with ``ref_match`` and the ``reid`` loss, the cosine (M, N) of M frame
    crops with each reference set and their classes (M,), -1 for a hard negative (``ReferenceMatch.training_pairs``).
    """

    box_logits: torch.Tensor
    scores: torch.Tensor | None
    cls_logits: torch.Tensor | None
    embeddings: list[torch.Tensor]
    prototypes: list[torch.Tensor]
    anchors: torch.Tensor
    strides: torch.Tensor
    level_shapes: list[tuple[int, int]]
    reid_cos: torch.Tensor | None = None
    reid_labels: torch.Tensor | None = None

    def score_maps(self) -> list[torch.Tensor]:
        """Prototype logits as maps: per scale (B, N, H_s, W_s)."""
        assert self.scores is not None, "score_maps() needs prototype scores (head_mode 'prototype' or 'dual')"
        maps, start = [], 0
        for h, w in self.level_shapes:
            part = self.scores[:, start : start + h * w]  # (B, H*W, N)
            maps.append(part.transpose(1, 2).reshape(part.shape[0], -1, h, w))  # (B, N, H, W)
            start += h * w
        return maps

    def boxes(self) -> torch.Tensor:
        """Decoded boxes (B, A, 4) xyxy in input px."""
        return dfl_decode(self.box_logits, self.anchors, self.strides)


def make_anchors(
    level_shapes: list[tuple[int, int]], strides: tuple[int, ...], *, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor centres (A, 2) = ((col, row) + 0.5) * stride in input px, and strides (A,), scale by scale."""
    points, per_anchor = [], []
    for (h, w), s in zip(level_shapes, strides):
        ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        points.append((torch.stack([xs, ys], dim=-1).reshape(-1, 2).float() + 0.5) * s)
        per_anchor.append(torch.full((h * w,), float(s), device=device))
    return torch.cat(points), torch.cat(per_anchor)


def dfl_decode(box_logits: torch.Tensor, anchors: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    """(B, A, 4 * R) logits -> (B, A, 4) xyxy px: softmax expectation per side, times stride, around the anchor.

    Computed in float32 whatever the autocast dtype; distances are at least ``MIN_DIST`` strides.
    """
    reg_max = box_logits.shape[-1] // 4
    probs = box_logits.float().unflatten(-1, (4, reg_max)).softmax(dim=-1)  # (B, A, 4, R)
    bins = torch.arange(reg_max, device=box_logits.device, dtype=torch.float32)
    dist = (probs @ bins).clamp_min(MIN_DIST) * strides.float()[..., None]  # (B, A, 4) px
    anchors = anchors.float()
    return torch.cat([anchors - dist[..., :2], anchors + dist[..., 2:]], dim=-1)


def bbox_to_dist(boxes: torch.Tensor, anchors: torch.Tensor, strides: torch.Tensor, reg_max: int) -> torch.Tensor:
    """xyxy boxes (..., 4) px -> l, t, r, b (..., 4) in stride units, clamped to [0, reg_max - 1 - 0.01].

    anchors (..., 2) and strides (...,) broadcast against boxes.
    """
    lt = (anchors - boxes[..., :2]) / strides[..., None]
    rb = (boxes[..., 2:] - anchors) / strides[..., None]
    return torch.cat([lt, rb], dim=-1).clamp(0.0, reg_max - 1 - 0.01)


def _flatten(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C)."""
    return x.flatten(2).transpose(1, 2)


def _branch(c_in: int, hidden: int, c_out: int, bias: float) -> nn.Sequential:
    """Conv3x3-BN-SiLU, Conv3x3-BN-SiLU, Conv1x1 (bias initialised to ``bias``)."""
    last = nn.Conv2d(hidden, c_out, 1)
    nn.init.constant_(last.bias, bias)
    return nn.Sequential(ConvBNAct(c_in=c_in, c_out=hidden, k=3), ConvBNAct(c_in=hidden, c_out=hidden, k=3), last)


class PrototypeBranch(nn.Module):
    """Fused map (B, C, H, W) -> anchor embeddings (B, D, H, W): Conv1x1-BN-SiLU, Conv1x1."""

    def __init__(self, *, c_in: int, d: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(ConvBNAct(c_in=c_in, c_out=d), nn.Conv2d(d, d, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class DualHead(nn.Module):
    """YOLOv8 decoupled head with a prototype branch.

    Args:
        in_channels: fused channels per scale (128, 256, 512, 512).
        proto_dims: prototype dims per scale (32, 64, 128, 256).
        strides: stride per scale (4, 8, 16, 32).
        num_classes: base classes of the standard branch (unused in ``prototype`` mode).
        reg_max: DFL bins per side.
        mode: "standard", "prototype" or "dual".
        hidden: width of the class branch (YOLOv8: the finest fused width, default in_channels[0]); the box
            branch uses max(16, hidden // 4, 4 * reg_max).
    """

    def __init__(
        self,
        *,
        in_channels: tuple[int, ...],
        proto_dims: tuple[int, ...],
        strides: tuple[int, ...],
        num_classes: int,
        reg_max: int = 16,
        mode: str = "dual",
        hidden: int | None = None,
    ) -> None:
        super().__init__()
        if mode not in HEAD_MODES:
            raise ValueError(f"unknown head_mode {mode!r}; choose one of {', '.join(HEAD_MODES)}")
        if mode != "prototype" and num_classes < 1:
            raise ValueError(f"head_mode {mode!r} needs num_base_classes >= 1, got {num_classes}")
        self.mode, self.reg_max, self.strides, self.num_classes = mode, reg_max, tuple(strides), num_classes
        prior = -math.log((1 - PRIOR_PROB) / PRIOR_PROB)
        hidden = hidden or in_channels[0]
        c_box = max(16, hidden // 4, 4 * reg_max)
        self.box = nn.ModuleList(_branch(c, c_box, 4 * reg_max, 1.0) for c in in_channels)
        self.cls = None
        if mode != "prototype":
            c_cls = max(hidden, min(num_classes, 100))
            self.cls = nn.ModuleList(_branch(c, c_cls, num_classes, prior) for c in in_channels)
        self.proto = None
        if mode != "standard":
            self.proto = nn.ModuleList(PrototypeBranch(c_in=c, d=d) for c, d in zip(in_channels, proto_dims))
            self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))  # cosine temperature, learnt in log space
            self.score_bias = nn.Parameter(torch.tensor(prior))

    def prototype_scores(
        self, fused: list[torch.Tensor], prototypes: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Scaled cosine per anchor and prototype -> scores (B, A, N), embeddings per scale (B, A_s, D_s)."""
        embeddings, scores = [], []
        for branch, x, p in zip(self.proto, fused, prototypes):
            emb = _flatten(branch(x))  # (B, A_s, D)
            cos = F.normalize(emb.float(), dim=-1) @ F.normalize(p.float(), dim=-1).t()  # (B, A_s, N)
            embeddings.append(emb)
            scores.append(cos * self.log_scale.exp() + self.score_bias)
        return torch.cat(scores, dim=1), embeddings

    def forward(self, fused: list[torch.Tensor], prototypes: list[torch.Tensor] | None = None) -> HeadOutput:
        """fused: per scale (B, C_s, H_s, W_s); prototypes: per scale (N, D_s) (not needed in standard mode)."""
        assert len(fused) == len(self.box), f"expected {len(self.box)} scales, got {len(fused)}"
        shapes = [(x.shape[-2], x.shape[-1]) for x in fused]
        anchors, strides = make_anchors(shapes, self.strides, device=fused[0].device)
        box = torch.cat([_flatten(b(x)) for b, x in zip(self.box, fused)], dim=1)  # (B, A, 4R)
        cls = None if self.cls is None else torch.cat([_flatten(c(x)) for c, x in zip(self.cls, fused)], dim=1)
        scores, embeddings, protos = None, [], []
        if self.proto is not None:
            assert prototypes is not None, f"head_mode {self.mode!r} needs prototypes"
            scores, embeddings = self.prototype_scores(fused, prototypes)
            protos = list(prototypes)
        return HeadOutput(box, scores, cls, embeddings, protos, anchors, strides, shapes)
