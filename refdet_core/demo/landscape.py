"""The aerial landscape a demo video flies over: fields, roads, trees, roofs and a pond, RGB uint8."""

from __future__ import annotations

import cv2
import numpy as np

AA = cv2.LINE_AA

FIELD_COLOURS = np.array(
    [
        (70, 110, 45),
        (95, 132, 55),
        (120, 142, 62),
        (142, 112, 76),
        (162, 134, 92),
        (186, 172, 104),
        (60, 84, 42),
        (108, 120, 80),
    ],
    np.float32,
)


def _fields(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A patchwork of jittered quadrilateral fields, each with its own colour and crop-row direction."""
    nx, ny = max(w // 230, 2), max(h // 200, 2)
    gx = np.linspace(0, w, nx + 1)[None, :] + rng.uniform(-0.3, 0.3, (ny + 1, nx + 1)) * w / nx
    gy = np.linspace(0, h, ny + 1)[:, None] + rng.uniform(-0.3, 0.3, (ny + 1, nx + 1)) * h / ny
    gx[:, 0], gx[:, -1], gy[0, :], gy[-1, :] = -5, w + 5, -5, h + 5
    label = np.zeros((h, w), np.int32)
    cells = []
    for j in range(ny):
        for i in range(nx):
            quad = np.array(
                [
                    [gx[j, i], gy[j, i]],
                    [gx[j, i + 1], gy[j, i + 1]],
                    [gx[j + 1, i + 1], gy[j + 1, i + 1]],
                    [gx[j + 1, i], gy[j + 1, i]],
                ],
                np.int32,
            )
            cv2.fillPoly(label, [quad], len(cells))
            cells.append(quad)
    yy, xx = np.indices((h, w), dtype=np.float32)
    angles = rng.uniform(0, np.pi, len(cells))
    periods = rng.uniform(5, 11, len(cells))
    proj = xx * np.cos(angles)[label] + yy * np.sin(angles)[label]
    rows = 0.9 + 0.1 * np.sin(2 * np.pi * proj / periods[label])
    colours = FIELD_COLOURS[rng.integers(0, len(FIELD_COLOURS), len(cells))]
    img = colours[label] * rows[..., None]
    for quad in cells:  # hedgerows between fields
        cv2.polylines(img, [quad], True, (52, 72, 36), int(rng.integers(2, 4)), AA)
    return img


def _roads(rng: np.random.Generator, img: np.ndarray) -> None:
    h, w = img.shape[:2]
    for _ in range(int(rng.integers(2, 4))):
        if rng.random() < 0.5:  # left to right, or top to bottom
            xs = np.linspace(-20, w + 20, 5)
            ys = rng.uniform(0.1, 0.9) * h + np.cumsum(rng.uniform(-0.12, 0.12, 5)) * h
        else:
            ys = np.linspace(-20, h + 20, 5)
            xs = rng.uniform(0.1, 0.9) * w + np.cumsum(rng.uniform(-0.12, 0.12, 5)) * w
        pts = np.stack([xs, ys], 1).astype(np.int32)
        if rng.random() < 0.35:  # dirt track
            cv2.polylines(img, [pts], False, (168, 146, 110), int(rng.integers(6, 10)), AA)
            continue
        width = int(rng.integers(14, 22))
        cv2.polylines(img, [pts], False, (150, 150, 145), width + 4, AA)
        cv2.polylines(img, [pts], False, (98, 98, 102), width, AA)
        cv2.polylines(img, [pts], False, (215, 215, 200), 1, AA)


def _scatter(rng: np.random.Generator, img: np.ndarray) -> None:
    """Trees, rooftops and a pond."""
    h, w = img.shape[:2]
    if rng.random() < 0.7:
        centre = (int(rng.uniform(0.1, 0.9) * w), int(rng.uniform(0.1, 0.9) * h))
        axes = (int(rng.uniform(40, 90)), int(rng.uniform(25, 60)))
        cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360, (55, 95, 110), -1, AA)
    for _ in range(int(rng.integers(3, 8))):
        c = (float(rng.uniform(0, w)), float(rng.uniform(0, h)))
        size = (float(rng.uniform(22, 55)), float(rng.uniform(18, 40)))
        box = cv2.boxPoints((c, size, float(rng.uniform(0, 90)))).astype(np.int32)
        cv2.fillPoly(img, [box + 5], (50, 55, 45), AA)
        roof = [(150, 60, 50), (120, 120, 125), (170, 160, 150), (110, 80, 60)][int(rng.integers(0, 4))]
        cv2.fillPoly(img, [box], roof, AA)
    for _ in range(int(rng.integers(25, 70))):
        c = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
        r = int(rng.integers(5, 13))
        cv2.circle(img, (c[0] + 3, c[1] + 3), r, (38, 50, 30), -1, AA)
        cv2.circle(img, c, r, (float(rng.uniform(30, 55)), float(rng.uniform(70, 100)), 35), -1, AA)


def aerial_canvas(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A top-down landscape (fields, roads, trees, buildings), RGB uint8 (height, width, 3)."""
    img = _fields(rng, height, width)
    _roads(rng, img)
    _scatter(rng, img)
    low = cv2.resize(
        rng.uniform(0.85, 1.15, (height // 48 + 2, width // 48 + 2)).astype(np.float32),
        (width, height),
        interpolation=cv2.INTER_CUBIC,
    )
    img = img * low[..., None] * rng.uniform(0.85, 1.1) + rng.normal(0, 5, (height, width, 1)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)
