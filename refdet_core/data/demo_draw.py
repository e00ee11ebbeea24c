"""Drawing primitives of the demo data set: object instances, aerial backgrounds, ground-level reference photos.

All images are RGB uint8; sprites are RGBA uint8 with the object's top face (what a drone sees), so the
reference photos (the same face, seen from the ground under other light) and the video agree in colour
and pattern.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

KINDS = ("Backpack", "Jacket", "Laptop", "Lifering", "MobilePhone", "WaterBottle", "Person1")
PATTERNS = ("solid", "hstripes", "vstripes", "diagonal", "checker", "dots")
ASPECT = (0.8, 1.2)  # an instance's width / height against its kind's silhouette
BANDS = (4, 7)  # pattern bands across the sprite
AA = cv2.LINE_AA

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Look:
    """The appearance of one object instance: kind (silhouette), colours, pattern and proportions."""

    kind: str
    primary: RGB
    secondary: RGB
    pattern: str
    aspect: float = 1.0
    bands: int = 5

    @classmethod
    def from_json(cls, d: dict) -> Look:
        return cls(d["kind"], tuple(d["primary"]), tuple(d["secondary"]), d["pattern"], d["aspect"], d["bands"])


def random_colour(rng: np.random.Generator) -> RGB:
    """A saturated or a neutral colour: HSV with any hue (one in eight a grey, white or black)."""
    if rng.random() < 0.125:
        v = float(rng.choice([rng.uniform(20, 50), rng.uniform(110, 150), rng.uniform(215, 245)]))
        return (int(v), int(v), int(v))
    hsv = np.uint8([[[rng.integers(0, 180), rng.integers(120, 256), rng.integers(110, 250)]]])
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])  # type: ignore[return-value]


def colour_distance(a: RGB, b: RGB) -> float:
    return float(np.linalg.norm(np.subtract(a, b, dtype=np.float32)))


def far_colour(rng: np.random.Generator, avoid: list[RGB], min_distance: float = 90.0) -> RGB:
    """A random colour at least ``min_distance`` (RGB) from each of ``avoid`` (the best of 50 draws)."""
    best, best_d = random_colour(rng), -1.0
    for _ in range(50):
        c = random_colour(rng)
        d = min((colour_distance(c, a) for a in avoid), default=np.inf)
        if d >= min_distance:
            return c
        if d > best_d:
            best, best_d = c, d
    return best


def jitter_colour(rng: np.random.Generator, c: RGB, amount: float = 12.0) -> RGB:
    return tuple(int(v) for v in np.clip(np.add(c, rng.uniform(-amount, amount, 3)), 0, 255))  # type: ignore[return-value]


def random_look(rng: np.random.Generator, kind: str, avoid: list[RGB] = ()) -> Look:
    """A new instance of ``kind``: a main colour far from ``avoid``, a second colour far from the main one."""
    primary = far_colour(rng, list(avoid))
    secondary = far_colour(rng, [primary])
    aspect = float(np.round(rng.uniform(*ASPECT), 3))
    return Look(kind, primary, secondary, str(rng.choice(PATTERNS)), aspect, int(rng.integers(BANDS[0], BANDS[1] + 1)))


# ---------------------------------------------------------------------------------------------- sprites


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


# ---------------------------------------------------------------------------------------------- aerial canvas

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


# ---------------------------------------------------------------------------------------------- reference photos


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
