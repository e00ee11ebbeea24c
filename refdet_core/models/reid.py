"""Crop re-identification: a small network of its own that embeds an object crop and the reference photos alike.

The detector proposes boxes; which of them is the target is the question the references answer. Inside the
detector that question is asked per anchor (the head's prototype terms, ``models/match.py``'s match logit), and on
instances it never trained on neither reads the references well (docs/results.md, "What the detector reads").
This network sees the whole crop, at a resolution of its own (``size`` px, the box and ``CROP_CONTEXT`` of context
around it) and is trained on nothing but the identity question: rank the target's crop above the frame's other
candidates (look-alikes, mined from the trained detector's own proposals) and above the other instances of a batch
(``train/reid.py``). Rotations of a quarter turn and mirror images are one object (top-down views).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from refdet_core.models.match import CROP_CONTEXT, crop_squares, resize_square, square_boxes

__all__ = ["CROP_CONTEXT", "CropReid", "crop_squares", "square_boxes"]


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.SiLU(inplace=True))


class CropReid(nn.Module):
    """A four-stage CNN, (M, 3, size, size) float in [0, 1] -> (M, dim) unit vectors.

    Args:
        size: side crops and references are resampled to.
        width: channels of the first stage (doubled per stage).
        dim: embedding width.
    """

    def __init__(self, *, size: int = 64, width: int = 16, dim: int = 128) -> None:
        super().__init__()
        self.size = size
        w = (width, 2 * width, 4 * width, 8 * width)
        layers = [_block(3, w[0], 1)]
        for a, b in zip(w, w[1:]):
            layers += [_block(a, b, 2), _block(b, b, 1)]
        self.features = nn.Sequential(*layers)
        self.embed = nn.Linear(2 * w[-1], dim)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        f = self.features((images.float() - self.mean) / self.std)
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        return F.normalize(self.embed(pooled), dim=1)

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """(M, 3, S, S) -> (M, 3, size, size) float (``match.resize_square``)."""
        return resize_square(images.float(), self.size)

    def references(self, support: torch.Tensor) -> torch.Tensor:
        """support (N, K, 3, S, S) float in [0, 1] -> (N, K, dim)."""
        n, k = support.shape[:2]
        return self(self.resize(support.flatten(0, 1))).view(n, k, -1)

    def crops(self, frames: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        """frames (B, 3, H, W) float in [0, 1]; boxes B tensors (C_i, 4) xyxy px -> (sum C_i, dim)."""
        return self(crop_squares(frames, boxes, self.size))

    @staticmethod
    def similarity(embedded: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        """Crops (M, D), references (N, K, D) -> (M, N): each crop's best cosine over a set's K references."""
        return torch.einsum("md,nkd->mnk", embedded, references.float()).amax(dim=2)

    def crop_similarity(self, frames: torch.Tensor, boxes: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        """frames (B, 3, S, S) float in [0, 1]; boxes (B, C, 4) xyxy px; references (1, K, D) of one video ->
        (B, C) in [-1, 1]."""
        b, c = boxes.shape[:2]
        return self.similarity(self.crops(frames, list(boxes)), references)[:, 0].reshape(b, c)
