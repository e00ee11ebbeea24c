"""The plan of one demo video: the camera's flight, the target's visible intervals and the distractors on the
ground, in landscape coordinates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from refdet_core.demo.draw import draw_sprite, rotate_crop
from refdet_core.demo.looks import KINDS, Look, colour_distance, colour_twin, random_look, shape_twin

CANVAS = 2.2  # landscape size as a multiple of the frame size
ZOOM = (0.86, 1.18)  # camera view size as a multiple of the frame size
TARGET_PX = (22.0, 36.0)  # target long side at zoom 1 in a 640x360 frame (18-45 px over the zoom range)


@dataclass
class GroundObject:
    """One object on the ground: its sprite, size, place and drift, and the frames it is there."""

    sprite: np.ndarray  # tight RGBA, rotated to its heading on the ground
    size: float  # long side in landscape px
    x: float  # landscape position at frame t0
    y: float
    vx: float = 0.0  # drift, landscape px per frame
    vy: float = 0.0
    t0: int = 0
    span: tuple[int, int] | None = None  # frames [start, end) it is on the ground; None = always


@dataclass
class Camera:
    """The drone's flight: a slow periodic path over the landscape with a gentle zoom."""

    cx: float
    cy: float
    ax: float
    ay: float
    phase: np.ndarray  # (3,) x, y, zoom
    period: np.ndarray  # (3,) frames per cycle

    def at(self, t: int) -> tuple[float, float, float]:
        """(centre x, centre y, zoom) at frame t; zoom = view size / frame size."""
        w = np.sin(2 * np.pi * t / self.period + self.phase)
        zoom = (ZOOM[0] + ZOOM[1]) / 2 + (ZOOM[1] - ZOOM[0]) / 2 * w[2]
        return self.cx + self.ax * w[0], self.cy + self.ay * w[1], float(zoom)


def visible_intervals(rng: np.random.Generator, frames: int, n: int) -> list[tuple[int, int]]:
    """n visible intervals [start, end), separated by absent frames."""
    n = max(1, min(n, frames // 12))
    slot = frames / n
    spans = []
    for i in range(n):
        length = max(4, int(slot * rng.uniform(0.4, 0.65)))
        lo, hi = int(i * slot) + 1, int((i + 1) * slot) - length - 1
        start = int(rng.integers(lo, max(hi, lo) + 1))
        spans.append((start, min(start + length, frames)))
    return spans


def random_camera(rng: np.random.Generator, width: int, height: int) -> Camera:
    cw, ch = CANVAS * width, CANVAS * height
    return Camera(
        cx=cw / 2,
        cy=ch / 2,
        ax=(cw - ZOOM[1] * width) / 2 - 4,
        ay=(ch - ZOOM[1] * height) / 2 - 4,
        phase=rng.uniform(0, 2 * np.pi, 3),
        period=rng.uniform([360, 300, 200], [560, 480, 320]),
    )


def _near(rng: np.random.Generator, cam: Camera, t: int, spread: float, width: int, height: int) -> tuple[float, float]:
    cx, cy, zoom = cam.at(t)
    return cx + rng.uniform(-spread, spread) * width * zoom, cy + rng.uniform(-spread, spread) * height * zoom


DECOY_SHARE = 0.5  # share of the unrelated distractors that are other training videos' targets
TWINS = ("colour", "shape", "other")  # the scattered distractors cycle through these


def _decoy_pool(look: Look, decoys: list[Look]) -> list[Look]:
    """Training targets that may appear beside ``look``: other instances, not wearing ``look``'s main colour."""
    return [
        d for d in decoys if d != look and min(colour_distance(look.primary, c) for c in (d.primary, d.secondary)) > 60
    ]


def _distractor_look(rng: np.random.Generator, twin: str, target: Look, plan: dict[str, Any]) -> Look:
    """A distractor of one kind (``TWINS``). An unrelated one is a decoy DECOY_SHARE of the time (drawn from
    ``plan``'s own generator, so that the rest of the video does not change with the decoys)."""
    if twin == "colour":
        return colour_twin(rng, target)
    if twin == "shape":
        return shape_twin(rng, target)
    look = random_look(rng, str(rng.choice(KINDS)), [target.primary, target.secondary])
    pool, pick = plan["decoy_pool"], plan["decoy_rng"]
    if pool and pick.random() < DECOY_SHARE:
        look = pool[int(pick.integers(len(pool)))]
        plan["decoys"].append(look)
    return look


def place_objects(rng: np.random.Generator, plan: dict[str, Any], decoys: list[Look]) -> tuple[list, list]:
    """The target (one object per visible interval) and the distractors, in landscape coordinates.

    ``decoys`` are the training videos' target looks; ``plan["decoys"]`` collects the ones placed here and
    ``plan["twins"]`` counts the distractors of each kind.
    """
    cam, frames, width, height = plan["camera"], plan["frames"], plan["width"], plan["height"]
    look, unit = plan["look"], min(width / 640, height / 360)
    sprite = rotate_crop(draw_sprite(look), float(rng.uniform(0, 360)))
    size = max(rng.uniform(*TARGET_PX) * unit, 9.0)
    targets, distractors = [], []
    plan["decoy_pool"] = _decoy_pool(look, decoys)
    plan["twins"] = dict.fromkeys(TWINS, 0)

    def distractor(twin: str, dsize: float, x: float, y: float, t0: int) -> GroundObject:
        plan["twins"][twin] += 1
        dlook = _distractor_look(rng, twin, look, plan)
        return GroundObject(rotate_crop(draw_sprite(dlook), float(rng.uniform(0, 360))), dsize, x, y, t0=t0)

    for i in range(4 + frames // 40):  # spread over the flight
        t = int(rng.integers(0, frames))
        x, y = _near(rng, cam, t, 0.35, width, height)
        distractors.append(distractor(TWINS[i % 3], max(rng.uniform(0.7, 1.3) * size, 9.0), x, y, t))
    for start, end in plan["spans"]:
        x, y = _near(rng, cam, (start + end) // 2, 0.2, width, height)
        v = rng.uniform(-0.25, 0.25, 2) * unit
        targets.append(GroundObject(sprite, size, x, y, float(v[0]), float(v[1]), (start + end) // 2, (start, end)))
        for twin in ("colour", "shape"):  # look-alikes close to the target, in the same frames
            ang, dist = rng.uniform(0, 2 * np.pi), rng.uniform(2.5, 5.0) * size
            d = distractor(twin, size * rng.uniform(0.8, 1.25), x + dist * np.cos(ang), y + dist * np.sin(ang), start)
            distractors.append(d)
    return targets, distractors
