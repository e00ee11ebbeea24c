"""Reference photos of a demo instance: its top face seen from the ground, on an indoor background."""

from __future__ import annotations

import cv2
import numpy as np

from refdet_core.demo.draw import draw_sprite, rotate_crop
from refdet_core.demo.looks import Look


def _indoor_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A plain indoor scene: wall and floor, tiles, a table top or a studio backdrop; float32 RGB."""
    kind = int(rng.integers(0, 4))
    base = rng.uniform(150, 235, 3).astype(np.float32)
    yy, xx = np.indices((size, size), dtype=np.float32)
    if kind == 0:  # wall over floor
        horizon = rng.uniform(0.45, 0.7) * size
        floor = rng.uniform(80, 170, 3).astype(np.float32)
        img = np.where((yy > horizon)[..., None], floor, base) * (0.9 + 0.1 * yy / size)[..., None]
    elif kind == 1:  # tiles
        p = int(rng.integers(30, 56))
        grout = ((xx % p) < 2) | ((yy % p) < 2)
        img = np.where(grout[..., None], base * 0.7, base)
    elif kind == 2:  # wood grain
        wood = np.array([150, 105, 65], np.float32) * rng.uniform(0.8, 1.2)
        img = wood * (0.85 + 0.15 * np.sin(yy / rng.uniform(3, 7) + 2 * np.sin(xx / 40)))[..., None]
    else:  # studio backdrop with a vignette
        r = np.hypot(xx - size / 2, yy - size / 2) / size
        img = base * (1.05 - 0.5 * r**2)[..., None]
    return img + rng.normal(0, 4, (size, size, 1)).astype(np.float32)


def reference_image(rng: np.random.Generator, look: Look, size: int = 256) -> np.ndarray:
    """A ground-level photo of the instance: the same face, other scale, rotation, light and background.

    Returns RGB uint8 (size, size, 3) with the object spanning about 40-70 % of the image.
    """
    sprite = draw_sprite(look, 256)
    extent = rng.uniform(0.42, 0.7) * size
    rotated = rotate_crop(sprite, float(rng.uniform(-40, 40) + 180 * (rng.random() < 0.25)))
    k = extent / max(rotated.shape[:2])
    obj = cv2.resize(rotated, None, fx=k, fy=k * rng.uniform(0.75, 1.0), interpolation=cv2.INTER_AREA)
    h, w = obj.shape[:2]  # a ground view foreshortens the face: squeeze one side (perspective)
    squeeze = rng.uniform(0.0, 0.15) * w
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = np.float32([[squeeze, 0], [w - squeeze, 0], [w, h], [0, h]])
    ox, oy = (size - w) / 2 + rng.uniform(-0.1, 0.1) * size, (size - h) / 2 + rng.uniform(-0.1, 0.1) * size
    dst += np.float32([ox, oy])
    layer = cv2.warpPerspective(
        obj, cv2.getPerspectiveTransform(src, dst), (size, size), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0, 0)
    ).astype(np.float32)
    alpha = layer[..., 3:] / 255.0
    img = _indoor_background(rng, size)
    shadow = cv2.GaussianBlur(np.roll(alpha[..., 0], (int(size * 0.03), int(size * 0.025)), (0, 1)), (0, 0), 5)
    img = img * (1.0 - 0.45 * shadow[..., None])
    light = rng.uniform(0.75, 1.25) * rng.uniform(0.92, 1.08, 3).astype(np.float32)
    ramp = np.linspace(rng.uniform(0.85, 1.0), rng.uniform(1.0, 1.15), size, dtype=np.float32)
    ramp = ramp[None, :, None] if rng.random() < 0.5 else ramp[:, None, None]
    img = img * (1.0 - alpha) + layer[..., :3] * light * ramp * alpha
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 1.0)) + rng.normal(0, 3, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)
