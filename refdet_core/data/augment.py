"""Query and support augmentations on uint8 CHW tensors that keep boxes valid.

Built from ``torchvision.transforms.v2`` with ``tv_tensors.BoundingBoxes``. Boxes travel unclamped through each
transform; after every step they are clipped to the image and a box is dropped (with its label) when its width
or height is <= ``min_size`` px or less than ``min_visibility`` of it is left inside, so no box with w or h <= 0
ever leaves. Every random draw comes from torch's RNG seeded per call (``seed``), so the same seed gives the same
output in any process: that is what makes ``num_aug`` variants and the support-variant cache reproducible.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from refdet_core.data.frames import PAD_VALUE

Step = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def mix_seed(*parts: object) -> int:
    """A stable 63-bit seed from any printable parts (same in every process, unlike ``hash``)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass(frozen=True)
class QueryAugConfig:
    hflip: float = 0.5  # probability of a horizontal flip
    vflip: float = 0.2  # probability of a vertical flip (aerial views have no "up")
    affine: float = 0.5  # probability of the affine step
    scale: tuple[float, float] = (0.8, 1.2)
    translate: float = 0.1  # share of the image size
    degrees: float = 10.0
    color: float = 0.5  # probability of colour jitter
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.03
    blur: float = 0.2  # probability of a Gaussian blur
    noise: float = 0.2  # probability of additive Gaussian noise
    noise_std: float = 6.0  # noise std in uint8 levels
    mosaic: float = 0.0  # probability of a 4-frame mosaic (needs 3 extra frames)
    min_size: float = 1.0  # boxes with w or h <= this (px) are dropped
    min_visibility: float = 0.3  # boxes with less than this share left inside are dropped


@dataclass(frozen=True)
class SupportAugConfig:
    hflip: float = 0.5
    crop: float = 0.5  # probability of a mild random resized crop
    crop_scale: tuple[float, float] = (0.8, 1.0)
    crop_ratio: tuple[float, float] = (0.9, 1.1)
    color: float = 0.5
    brightness: float = 0.15
    contrast: float = 0.15
    saturation: float = 0.15
    hue: float = 0.02


def sanitize(
    boxes: torch.Tensor,
    size: tuple[int, int],
    before: torch.Tensor | None = None,
    *,
    min_size: float = 1.0,
    min_visibility: float = 0.3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip xyxy ``boxes`` (n, 4) to ``size`` (H, W) and keep the valid ones.

    ``before`` (n,) is each box's unclipped area; a box whose clipped area is below ``min_visibility`` of it is
    dropped. Returns the kept clipped boxes (m, 4) and the keep mask (n,) bool.
    """
    h, w = size
    raw_area = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    area = raw_area if before is None else before
    clipped = torch.stack(
        [boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h), boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)], dim=1
    )
    bw, bh = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    keep = (bw > min_size) & (bh > min_size) & (bw * bh >= min_visibility * area.clamp(min=1e-6))
    return clipped[keep], keep


def _v2_step(transform: v2.Transform) -> Step:
    """Wrap a v2 transform as a step over (image (3, H, W) uint8, boxes (n, 4)) with unclamped boxes."""

    def step(img: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bb = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=tuple(img.shape[-2:]), clamping_mode=None)
        out_img, out_bb = transform(tv_tensors.Image(img), bb)
        return out_img.as_subclass(torch.Tensor), out_bb.as_subclass(torch.Tensor)

    return step


def _noise_step(std: float) -> Step:
    def step(img: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noisy = img.float() + torch.randn(img.shape) * std
        return noisy.round_().clamp_(0, 255).to(torch.uint8), boxes

    return step


def query_steps(cfg: QueryAugConfig) -> list[tuple[float, Step]]:
    """The query pipeline as (probability, step) pairs, applied in order."""
    fill = [PAD_VALUE] * 3
    t = cfg.translate
    return [
        (cfg.hflip, _v2_step(v2.RandomHorizontalFlip(p=1.0))),
        (cfg.vflip, _v2_step(v2.RandomVerticalFlip(p=1.0))),
        (
            cfg.affine,
            _v2_step(
                v2.RandomAffine(
                    cfg.degrees,
                    translate=(t, t),
                    scale=cfg.scale,
                    fill=fill,
                    interpolation=v2.InterpolationMode.BILINEAR,
                )
            ),
        ),
        (cfg.color, _v2_step(v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue))),
        (cfg.blur, _v2_step(v2.GaussianBlur(5, sigma=(0.2, 1.2)))),
        (cfg.noise, _noise_step(cfg.noise_std)),
    ]


def _run_steps(
    img: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, steps: list[tuple[float, Step]], cfg: QueryAugConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    for p, step in steps:
        if p <= 0 or torch.rand(()) >= p:
            continue
        img, out = step(img, boxes)
        area = (out[:, 2] - out[:, 0]).clamp(min=0) * (out[:, 3] - out[:, 1]).clamp(min=0)
        boxes, keep = sanitize(
            out, tuple(img.shape[-2:]), area, min_size=cfg.min_size, min_visibility=cfg.min_visibility
        )
        labels = labels[keep]
    return img, boxes, labels


def augment_query(
    img: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    *,
    seed: int,
    cfg: QueryAugConfig = QueryAugConfig(),
    extra: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = (),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Augment one query frame; deterministic given ``seed``.

    Args:
        img: (3, S, S) uint8. boxes: (n, 4) float32 xyxy px. labels: (n,) long (any per-box payload).
        extra: three more ``(img, boxes, labels)`` for a mosaic (used with probability ``cfg.mosaic``).
    Returns:
        ``(img (3, S, S) uint8, boxes (m, 4) float32, labels (m,))`` with every box w, h > ``cfg.min_size``.
    """
    assert img.ndim == 3 and img.shape[0] == 3 and img.dtype == torch.uint8, f"expected (3, H, W) uint8, {img.shape}"
    assert boxes.shape == (labels.shape[0], 4), f"boxes {tuple(boxes.shape)} vs labels {tuple(labels.shape)}"
    boxes, keep = sanitize(boxes.float(), tuple(img.shape[-2:]), min_size=cfg.min_size, min_visibility=0.0)
    labels = labels[keep]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if cfg.mosaic > 0 and len(extra) >= 3 and torch.rand(()) < cfg.mosaic:
            img, boxes, labels = mosaic4([(img, boxes, labels), *extra[:3]], cfg)
        img, boxes, labels = _run_steps(img, boxes, labels, query_steps(cfg), cfg)
    return img.contiguous(), boxes.float(), labels


def mosaic4(
    parts: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], cfg: QueryAugConfig = QueryAugConfig()
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tile four frames at native scale: the output is split at a random point into four rectangles, each
    filled with a same-size window (random position) of one frame. Uses torch's current RNG.

    Args:
        parts: four ``(img (3, S, S) uint8, boxes (n, 4), labels (n,))``.
    Returns:
        ``(img (3, S, S) uint8, boxes (m, 4), labels (m,))``.
    """
    assert len(parts) == 4, f"mosaic needs 4 frames, got {len(parts)}"
    _, h, w = parts[0][0].shape
    cy = int(h * (0.25 + 0.5 * torch.rand(()).item()))
    cx = int(w * (0.25 + 0.5 * torch.rand(()).item()))
    out = torch.full_like(parts[0][0], PAD_VALUE)
    cells = [(0, 0, cx, cy), (cx, 0, w, cy), (0, cy, cx, h), (cx, cy, w, h)]
    all_boxes, all_labels = [], []
    for (img, boxes, labels), (x0, y0, x1, y1) in zip(parts, cells):
        cw, ch = x1 - x0, y1 - y0
        sx = int(torch.randint(0, w - cw + 1, ()).item())
        sy = int(torch.randint(0, h - ch + 1, ()).item())
        out[:, y0:y1, x0:x1] = img[:, sy : sy + ch, sx : sx + cw]
        shifted = (
            boxes.float()
            - torch.tensor([sx, sy, sx, sy], dtype=torch.float32)
            + torch.tensor([x0, y0, x0, y0], dtype=torch.float32)
        )
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        cell = torch.tensor([x0, y0, x0, y0], dtype=torch.float32)
        kept, keep = sanitize(
            shifted - cell, (ch, cw), area.float(), min_size=cfg.min_size, min_visibility=cfg.min_visibility
        )
        all_boxes.append(kept + cell)
        all_labels.append(labels[keep])
    return out, torch.cat(all_boxes).reshape(-1, 4), torch.cat(all_labels)


def paste_object(
    img: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    donor: torch.Tensor,
    box: torch.Tensor,
    label: torch.Tensor,
    rng: np.random.Generator,
    *,
    margin: float = 0.25,
    tries: int = 8,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Paste the object at ``box`` of ``donor`` into ``img`` at a random place clear of ``boxes``.

    The patch is the box grown by ``margin`` of its longer side; the box itself is copied as it is and the
    margin fades linearly into ``img``, so no hard patch edge shows. ``img`` is returned unchanged when the patch
    does not fit or no place among ``tries`` random ones keeps clear of every box.

    Args:
        img: (3, H, W) uint8. boxes: (n, 4) xyxy px. labels: (n, ...) per-box payload.
        donor: (3, H', W') uint8 the object comes from; box: (4,) its xyxy px there; label: its payload.
        rng: the draw of the place.
    Returns:
        ``(img, boxes, labels)`` with the pasted box (and ``label``) last when it was pasted.
    """
    _, h, w = img.shape
    x1, y1, x2, y2 = (float(v) for v in box)
    m = margin * max(x2 - x1, y2 - y1)
    dh, dw = donor.shape[-2:]
    px1, py1 = max(int(np.floor(x1 - m)), 0), max(int(np.floor(y1 - m)), 0)
    px2, py2 = min(int(np.ceil(x2 + m)), dw), min(int(np.ceil(y2 + m)), dh)
    pw, ph = px2 - px1, py2 - py1
    if x2 - x1 < 1 or y2 - y1 < 1 or pw >= w or ph >= h:
        return img, boxes, labels
    for _ in range(tries):
        ox, oy = int(rng.integers(0, w - pw + 1)), int(rng.integers(0, h - ph + 1))
        clear = all(
            float(b[0]) >= ox + pw or float(b[2]) <= ox or float(b[1]) >= oy + ph or float(b[3]) <= oy for b in boxes
        )
        if clear:
            break
    else:
        return img, boxes, labels
    xs = torch.arange(px1, px2, dtype=torch.float32) + 0.5
    ys = torch.arange(py1, py2, dtype=torch.float32) + 0.5
    dx = (x1 - xs).clamp_min(0) + (xs - x2).clamp_min(0)
    dy = (y1 - ys).clamp_min(0) + (ys - y2).clamp_min(0)
    dist = torch.maximum(dx[None, :], dy[:, None])
    alpha = (1 - dist / max(m, 1e-6)).clamp(0, 1)
    out = img.clone()
    region = out[:, oy : oy + ph, ox : ox + pw].float()
    patch = donor[:, py1:py2, px1:px2].float()
    out[:, oy : oy + ph, ox : ox + pw] = (alpha * patch + (1 - alpha) * region).round().clamp(0, 255).to(img.dtype)
    pasted = torch.tensor([[x1 - px1 + ox, y1 - py1 + oy, x2 - px1 + ox, y2 - py1 + oy]], dtype=boxes.dtype)
    return out, torch.cat([boxes.reshape(-1, 4), pasted]), torch.cat([labels, label[None]])


def support_steps(cfg: SupportAugConfig, size: int) -> list[tuple[float, Step]]:
    return [
        (cfg.hflip, _v2_step(v2.RandomHorizontalFlip(p=1.0))),
        (cfg.crop, _v2_step(v2.RandomResizedCrop(size, scale=cfg.crop_scale, ratio=cfg.crop_ratio, antialias=True))),
        (cfg.color, _v2_step(v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue))),
    ]


def _apply_support(img: torch.Tensor, cfg: SupportAugConfig) -> torch.Tensor:
    none = torch.zeros(0, 4)
    for p, step in support_steps(cfg, img.shape[-1]):
        if p > 0 and torch.rand(()) < p:
            img, _ = step(img, none)
    return img


def augment_support(
    img: torch.Tensor, variant: int, seed: int, cfg: SupportAugConfig = SupportAugConfig()
) -> torch.Tensor:
    """Augment one reference image (3, Ss, Ss) uint8 -> (3, Ss, Ss) uint8.

    ``variant >= 0`` is reproducible: the same ``(variant, seed)`` gives the same output (the support-feature
    cache keys on it). ``variant == -1`` draws fresh randomness from torch's global RNG.
    """
    assert img.ndim == 3 and img.shape[0] == 3 and img.dtype == torch.uint8, f"expected (3, H, W) uint8, {img.shape}"
    if variant < 0:
        return _apply_support(img, cfg).contiguous()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(mix_seed("support", seed, variant))
        return _apply_support(img, cfg).contiguous()
