"""Reference matching through the query backbone: a siamese score that compares like with like.

The prototypes come from the DINOv3 encoder, the query features from YOLOv8; a head that scores one against the
other has to learn how the two networks relate, and with few training instances it learns *which* instances were
targets instead. Here the reference photos also go through the query backbone (shrunk to ``size`` px, so that
the object has about the scale it has in a frame), one shared 1x1 projection per scale maps reference and frame
features alike, and the score of a frame position is its best cosine with the centre-weighted mean of a
reference's features (max over the K references). The same function embeds a candidate box cut from a frame
(``crop_similarity``), which is the re-identification score of whole-video inference.

Training reads that score directly (``training_pairs``, the ``reid`` loss term): each training frame's target
boxes are cut out as at inference and scored against every reference set of the episode (their own: 1, the
other ways': 0), beside hard negatives, the frame's highest-scoring predicted boxes away from any target (on
look-alike data these are the colour and shape twins the detector confuses with the target).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou, nms, roi_align

from refdet_core.models.head import HeadOutput, dfl_decode

CENTRE_SIGMA = 0.25  # centre weighting of the reference features, Gaussian sigma as a share of the side
CROP_CONTEXT = 1.8  # a candidate crop spans this many times the box's long side (references: object 40-70 %)
REID_NEGATIVES = 3  # hard negatives per training frame
REID_NEGATIVE_IOU = 0.3  # a predicted box is a negative when it overlaps every target box by less than this
REID_POOL = 64  # highest-scoring anchors per frame that the negatives are picked from (after NMS at 0.5)


def square_boxes(boxes: torch.Tensor, context: float = CROP_CONTEXT) -> torch.Tensor:
    """(C, 4) xyxy -> (C, 4) squares of ``context`` times each box's long side around its centre (>= 4 px)."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).amax(dim=-1, keepdim=True).clamp_min(4.0) * context / 2
    return torch.cat([centre - half, centre + half], dim=-1).float()


def crop_squares(frames: torch.Tensor, boxes: list[torch.Tensor], size: int) -> torch.Tensor:
    """frames (B, 3, H, W) float; boxes B tensors (C_i, 4) xyxy px -> (sum C_i, 3, size, size): a square crop of
    ``CROP_CONTEXT`` times each box's long side around its centre."""
    return roi_align(frames.float(), [square_boxes(b) for b in boxes], output_size=size, aligned=True)


def resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """(M, 3, S, S) float in [0, 1] -> (M, 3, size, size): box-averaged when S is a multiple of ``size``, else
    bilinear (both export to ONNX; antialiased bilinear does not)."""
    side = int(images.shape[-1])
    if side % size == 0:
        return F.avg_pool2d(images, side // size) if side != size else images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


def centre_weights(h: int, w: int, device: torch.device) -> torch.Tensor:
    """(h, w) Gaussian weights around the image centre, summing to 1."""
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h - 0.5
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w - 0.5
    g = torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * CENTRE_SIGMA**2))
    return g / g.sum()


class ReferenceMatch(nn.Module):
    """Per-scale projections shared by references and frames, and a learnt scale of the match logit.

    Args:
        in_channels: backbone channels per scale (the levels the head scores).
        dim: projection width.
        size: side the references (and candidate crops) are resized to before the backbone.
    """

    def __init__(self, *, in_channels: tuple[int, ...], dim: int = 64, size: int = 64) -> None:
        super().__init__()
        self.size = size
        self.proj = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in in_channels)
        self.log_scale = nn.Parameter(torch.tensor(2.0))  # logit = exp(log_scale) * (cos - offset)
        self.offset = nn.Parameter(torch.tensor(0.5))

    def embed(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Backbone maps of centred images (M, C_s, h, w) -> per scale (M, D) unit vectors."""
        out = []
        for proj, f in zip(self.proj, feats):
            e = proj(f.float() if f.dtype != proj.weight.dtype else f).float()
            w = centre_weights(e.shape[-2], e.shape[-1], e.device)
            out.append(F.normalize((e * w).sum(dim=(2, 3)), dim=1))
        return out

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """(M, 3, S, S) float in [0, 1] -> (M, 3, size, size) (``resize_square``)."""
        return resize_square(images, self.size)

    def templates(self, backbone: nn.Module, support: torch.Tensor) -> list[torch.Tensor]:
        """support (N, K, 3, S, S) float in [0, 1] -> per scale (N, K, D) unit vectors (gradients reach the
        backbone and the projections)."""
        n, k = support.shape[:2]
        return [t.view(n, k, -1) for t in self.embed(backbone(self.resize(support.flatten(0, 1))))]

    def scores(self, feats: list[torch.Tensor], templates: list[torch.Tensor]) -> torch.Tensor:
        """Frame maps per scale (B, C_s, H_s, W_s), templates per scale (N, K, D) -> logits (B, A, N)."""
        out = []
        for proj, f, t in zip(self.proj, feats, templates):
            q = F.normalize(proj(f).float(), dim=1)  # (B, D, H, W)
            cos = torch.einsum("bdhw,nkd->bnkhw", q, t.float()).amax(dim=2)  # (B, N, H, W)
            out.append(cos.flatten(2).transpose(1, 2))  # (B, H*W, N)
        return self.logit(torch.cat(out, dim=1))

    def logit(self, cos: torch.Tensor) -> torch.Tensor:
        return self.log_scale.exp() * (cos - self.offset)

    def crop_embeddings(
        self, backbone: nn.Module, frames: torch.Tensor, boxes: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        """frames (B, 3, S, S) float in [0, 1]; boxes B tensors (C_i, 4) xyxy px -> per scale (sum C_i, D): a square
        crop of ``CROP_CONTEXT`` times each box's long side around its centre, resized to ``size``."""
        return self.embed(backbone(crop_squares(frames, boxes, self.size)))

    @staticmethod
    def similarity(embedded: list[torch.Tensor], templates: list[torch.Tensor]) -> torch.Tensor:
        """Crops per scale (M, D), templates per scale (N, K, D) -> (M, N): the best cosine over each set's K
        references, averaged over scales."""
        cos = [torch.einsum("md,nkd->mnk", e, t.float()).amax(dim=2) for e, t in zip(embedded, templates)]
        return torch.stack(cos).mean(dim=0)

    def crop_similarity(
        self, backbone: nn.Module, frames: torch.Tensor, boxes: torch.Tensor, templates: list[torch.Tensor]
    ) -> torch.Tensor:
        """Best cosine over the references of each candidate box, averaged over scales.

        frames (B, 3, S, S) float in [0, 1]; boxes (B, C, 4) xyxy in the same px; templates per scale (1, K, D)
        (one video's references) -> (B, C) in [-1, 1].
        """
        b, c = boxes.shape[:2]
        embedded = self.crop_embeddings(backbone, frames, list(boxes))  # per scale (B*C, D)
        return self.similarity(embedded, templates)[:, 0].reshape(b, c)

    def training_pairs(
        self,
        backbone: nn.Module,
        frames: torch.Tensor,
        out: HeadOutput,
        boxes: list[torch.Tensor],
        labels: list[torch.Tensor],
        templates: list[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The crops the ``reid`` loss scores: every target box and each frame's hard negatives.

        frames (B, 3, S, S) float in [0, 1]; ``out`` the head's output on them (its boxes and scores pick the
        negatives, without gradients); boxes B tensors (n_i, 4) xyxy px and labels B tensors (n_i,) episode-local
        classes; templates per scale (N, K, D). -> cosine (M, N) of each crop with each reference set, and the
        class of each crop (M,), -1 for a negative.
        """
        negatives = mine_negatives(out, boxes)
        crops = [torch.cat([b.float(), n]) for b, n in zip(boxes, negatives)]
        crop_labels = torch.cat(
            [torch.cat([lb.long(), lb.new_full((len(n),), -1).long()]) for lb, n in zip(labels, negatives)]
        )
        return self.similarity(self.crop_embeddings(backbone, frames, crops), templates), crop_labels


@torch.no_grad()
def mine_negatives(out: HeadOutput, boxes: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per frame, up to ``REID_NEGATIVES`` predicted boxes (xyxy px) away from every target box: the highest
    scores over the episode's reference sets, one per object (NMS at 0.5), at least 2 px wide and tall."""
    pred = dfl_decode(out.box_logits.detach(), out.anchors, out.strides)  # (B, A, 4)
    conf = out.scores.detach().float().amax(dim=-1)  # (B, A)
    picked = []
    for p, c, gt in zip(pred, conf, boxes):
        if len(gt):
            c = c.masked_fill(box_iou(p, gt.float()).amax(dim=1) >= REID_NEGATIVE_IOU, float("-inf"))
        wide = ((p[:, 2:] - p[:, :2]) >= 2.0).all(dim=1)
        c = c.masked_fill(~wide, float("-inf"))
        top = c.topk(min(REID_POOL, c.numel())).indices
        top = top[torch.isfinite(c[top])]
        keep = nms(p[top], c[top], 0.5)[:REID_NEGATIVES]
        picked.append(p[top[keep]])
    return picked
