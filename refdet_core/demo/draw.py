"""Sprites of the demo instances: a kind's silhouette seen from above, patterned in the instance's colours,
rotated and alpha-blended into a frame.

Sprites are RGBA uint8 with the object's top face (what a drone sees), so the reference photos (the same face, seen
from the ground under other light) and the video agree in colour and pattern.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from refdet_core.demo.looks import KINDS, PATTERNS, Look

AA = cv2.LINE_AA


def _pattern_mask(pattern: str, size: int, bands: int = 5) -> np.ndarray:
    yy, xx = np.indices((size, size))
    p = max(size // bands, 2)  # coarse: a 20 px object still shows two or three bands
    if pattern == "solid":
        return np.zeros((size, size), bool)
    if pattern == "hstripes":
        return (yy // p) % 2 == 1
    if pattern == "vstripes":
        return (xx // p) % 2 == 1
    if pattern == "diagonal":
        return ((xx + yy) // p) % 2 == 1
    if pattern == "checker":
        return (xx // p + yy // p) % 2 == 1
    if pattern == "dots":
        return ((xx % (2 * p) - p) ** 2 + (yy % (2 * p) - p) ** 2) < (0.55 * p) ** 2
    raise ValueError(f"unknown pattern {pattern!r}; known: {', '.join(PATTERNS)}")


def _rrect(img: np.ndarray, x0: float, y0: float, x1: float, y1: float, r: float, value) -> None:
    """Filled rounded rectangle in float coordinates."""
    p = [int(round(v)) for v in (x0, y0, x1, y1)]
    r = int(round(r))
    cv2.rectangle(img, (p[0] + r, p[1]), (p[2] - r, p[3]), value, -1, AA)
    cv2.rectangle(img, (p[0], p[1] + r), (p[2], p[3] - r), value, -1, AA)
    for cx, cy in ((p[0] + r, p[1] + r), (p[2] - r, p[1] + r), (p[0] + r, p[3] - r), (p[2] - r, p[3] - r)):
        cv2.circle(img, (cx, cy), r, value, -1, AA)


def _body_mask(kind: str, s: int) -> np.ndarray:
    """The silhouette of a kind seen from above, (s, s) uint8 0/255."""
    m = np.zeros((s, s), np.uint8)
    if kind == "Backpack":
        _rrect(m, 0.19 * s, 0.08 * s, 0.81 * s, 0.92 * s, 0.14 * s, 255)
    elif kind == "Jacket":
        pts = (
            np.array(
                [
                    [0.30, 0.10],
                    [0.70, 0.10],
                    [0.96, 0.30],
                    [0.90, 0.62],
                    [0.74, 0.50],
                    [0.74, 0.94],
                    [0.26, 0.94],
                    [0.26, 0.50],
                    [0.10, 0.62],
                    [0.04, 0.30],
                ]
            )
            * s
        )
        cv2.fillPoly(m, [pts.astype(np.int32)], 255, AA)
    elif kind == "Laptop":
        _rrect(m, 0.04 * s, 0.20 * s, 0.96 * s, 0.80 * s, 0.05 * s, 255)
    elif kind == "Lifering":
        cv2.circle(m, (s // 2, s // 2), int(0.47 * s), 255, -1, AA)
        cv2.circle(m, (s // 2, s // 2), int(0.24 * s), 0, -1, AA)
    elif kind == "MobilePhone":
        _rrect(m, 0.27 * s, 0.04 * s, 0.73 * s, 0.96 * s, 0.08 * s, 255)
    elif kind == "WaterBottle":
        _rrect(m, 0.34 * s, 0.04 * s, 0.66 * s, 0.96 * s, 0.15 * s, 255)
    elif kind == "Person1":
        cv2.ellipse(m, (s // 2, int(0.55 * s)), (int(0.44 * s), int(0.24 * s)), 0, 0, 360, 255, -1, AA)
    else:
        raise ValueError(f"unknown object kind {kind!r}; known: {', '.join(KINDS)}")
    return m


def _details(img: np.ndarray, kind: str, s: int, second: tuple[int, ...]) -> None:
    """Kind-specific parts drawn over the patterned body (pockets, caps, heads...)."""
    dark = (35, 35, 40)
    if kind == "Backpack":
        _rrect(img, 0.30 * s, 0.52 * s, 0.70 * s, 0.86 * s, 0.08 * s, second)
        cv2.line(img, (int(0.33 * s), int(0.10 * s)), (int(0.33 * s), int(0.45 * s)), dark, max(s // 40, 1), AA)
        cv2.line(img, (int(0.67 * s), int(0.10 * s)), (int(0.67 * s), int(0.45 * s)), dark, max(s // 40, 1), AA)
    elif kind == "Jacket":
        cv2.fillPoly(img, [(np.array([[0.38, 0.10], [0.62, 0.10], [0.5, 0.30]]) * s).astype(np.int32)], second, AA)
        cv2.line(img, (s // 2, int(0.30 * s)), (s // 2, int(0.94 * s)), dark, max(s // 50, 1), AA)
    elif kind == "Laptop":
        cv2.circle(img, (s // 2, s // 2), int(0.09 * s), second, -1, AA)
    elif kind == "Lifering":
        for a0 in (0, 90, 180, 270):
            cv2.ellipse(
                img, (s // 2, s // 2), (int(0.36 * s), int(0.36 * s)), 0, a0 + 25, a0 + 65, second, int(0.2 * s), AA
            )
    elif kind == "MobilePhone":
        _rrect(img, 0.33 * s, 0.09 * s, 0.50 * s, 0.27 * s, 0.03 * s, dark)
        cv2.circle(img, (int(0.415 * s), int(0.18 * s)), int(0.05 * s), second, -1, AA)
    elif kind == "WaterBottle":
        _rrect(img, 0.38 * s, 0.03 * s, 0.62 * s, 0.20 * s, 0.05 * s, second)
    elif kind == "Person1":
        cv2.circle(img, (s // 2, int(0.52 * s)), int(0.17 * s), second, -1, AA)


@functools.lru_cache(maxsize=128)
def draw_sprite(look: Look, size: int = 128) -> np.ndarray:
    """The instance's top face, RGBA uint8 (size, size, 4), read-only; the object spans most of the square."""
    s = size
    body = _body_mask(look.kind, s)
    img = np.zeros((s, s, 3), np.uint8)
    img[:] = look.primary
    second = look.secondary
    img[_pattern_mask(look.pattern, s, look.bands)] = second
    _details(img, look.kind, s, second)
    if look.kind == "Person1":  # the head and arms are not clipped by the shoulder silhouette
        cv2.circle(body, (s // 2, int(0.52 * s)), int(0.17 * s), 255, -1, AA)
    edge = cv2.subtract(body, cv2.erode(body, np.ones((3, 3), np.uint8), iterations=max(s // 64, 1)))
    shade = np.linspace(1.12, 0.85, s, dtype=np.float32)[None, :, None]  # light from the left
    out = img.astype(np.float32) * shade * (1.0 - 0.45 * edge[..., None] / 255.0)
    rgba = np.dstack([np.clip(out, 0, 255).astype(np.uint8), body])
    if look.aspect != 1.0:  # the instance's proportions: wider or narrower than its kind's silhouette
        rgba = cv2.resize(rgba, (max(int(round(s * look.aspect)), 2), s), interpolation=cv2.INTER_AREA)
    rgba.setflags(write=False)  # cached: shared by every caller
    return rgba


def rotate_crop(rgba: np.ndarray, angle: float, scale: float = 1.0) -> np.ndarray:
    """Rotate (degrees, counter-clockwise) and scale an RGBA sprite, cropped tight to its alpha."""
    h, w = rgba.shape[:2]
    side = int(np.ceil(np.hypot(h, w) * scale)) + 2
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    m[:, 2] += (side / 2 - w / 2, side / 2 - h / 2)
    out = cv2.warpAffine(rgba, m, (side, side), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0, 0))
    ys, xs = np.nonzero(out[..., 3] > 8)
    return out[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def paste(
    frame: np.ndarray, sprite: np.ndarray, cx: float, cy: float, long_side: float
) -> tuple[int, int, int, int] | None:
    """Alpha-blend ``sprite`` (tight RGBA) centred at (cx, cy) with its long side ``long_side`` px.

    Returns the tight visible box (x1, y1, x2, y2) in frame px, or None (and draws nothing) when less than
    4 px of it would be visible in either direction.
    """
    fh, fw = frame.shape[:2]
    k = long_side / max(sprite.shape[:2])
    w, h = max(int(round(sprite.shape[1] * k)), 2), max(int(round(sprite.shape[0] * k)), 2)
    x0, y0 = int(round(cx - w / 2)), int(round(cy - h / 2))
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + w, fw), min(y0 + h, fh)
    if cx1 - cx0 < 4 or cy1 - cy0 < 4:
        return None
    small = cv2.resize(sprite, (w, h), interpolation=cv2.INTER_AREA)[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    alpha = small[..., 3:].astype(np.float32) / 255.0
    ys, xs = np.nonzero(alpha[..., 0] > 0.35)
    if len(xs) == 0 or xs.max() - xs.min() + 1 < 4 or ys.max() - ys.min() + 1 < 4:
        return None
    roi = frame[cy0:cy1, cx0:cx1]
    shadow = np.zeros_like(alpha)  # a soft shadow down-right of the object
    shadow[2:, 2:] = alpha[:-2, :-2]
    base = roi.astype(np.float32) * (1.0 - 0.35 * shadow)
    roi[:] = np.clip(base * (1.0 - alpha) + small[..., :3].astype(np.float32) * alpha, 0, 255).astype(np.uint8)
    return cx0 + int(xs.min()), cy0 + int(ys.min()), cx0 + int(xs.max()) + 1, cy0 + int(ys.max()) + 1
