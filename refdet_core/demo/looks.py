"""The appearance of a demo instance (``Look``), colours, and the look-alikes that share one cue with a target."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

KINDS = ("Backpack", "Jacket", "Laptop", "Lifering", "MobilePhone", "WaterBottle", "Person1")
PATTERNS = ("solid", "hstripes", "vstripes", "diagonal", "checker", "dots")
ASPECT = (0.8, 1.2)  # an instance's width / height against its kind's silhouette
BANDS = (4, 7)  # pattern bands across the sprite

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


def colour_twin(rng: np.random.Generator, target: Look) -> Look:
    """Another kind wearing the target's colours (slightly off), half the time its pattern too."""
    kind = str(rng.choice([k for k in KINDS if k != target.kind]))
    pattern = target.pattern if rng.random() < 0.5 else str(rng.choice(PATTERNS))
    primary, secondary = jitter_colour(rng, target.primary), jitter_colour(rng, target.secondary)
    aspect = float(np.round(rng.uniform(0.8, 1.2), 3))
    return Look(kind, primary, secondary, pattern, aspect, target.bands)


def shape_twin(rng: np.random.Generator, target: Look) -> Look:
    """The target's kind and proportions, half the time its pattern, in other colours."""
    primary = far_colour(rng, [target.primary, target.secondary])
    secondary = far_colour(rng, [primary, target.primary])
    pattern = target.pattern if rng.random() < 0.5 else str(rng.choice(PATTERNS))
    return Look(target.kind, primary, secondary, pattern, target.aspect, target.bands)
