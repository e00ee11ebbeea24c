"""The embedded demo data set: a small, learnable version of the task in the challenge layout.

Each video is a camera flying slowly over a procedural landscape (fields, roads, trees, roofs) while
zooming gently. One target instance is visible in one or more intervals and absent in between. Every instance
is procedurally drawn: a kind's silhouette with its own proportions, any two colours and a pattern, so a set
holds as many instances as it has videos. Three kinds of distractors share the frames, so that no single cue
finds the target: *colour twins* (another kind wearing the target's colours and often its pattern), *shape
twins* (the target's kind and proportions in other colours) and unrelated objects, about half of which are
decoys, the target instances of other training videos (being a target of the set is no cue either). Next to
the target, in its frames, stand one colour twin and one shape twin. Three reference photos show the target
"from the ground": larger, rotated, foreshortened, under other light, on an indoor background. A few videos
never show their target. ``splits.json`` holds out videos whose target instances appear nowhere in the
training videos; training videos may be shorter than validation ones (``train_frames``), so that a set of
many instances stays small.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm.auto import tqdm

from refdet_core.data.demo_draw import (
    KINDS,
    PATTERNS,
    Look,
    aerial_canvas,
    colour_distance,
    draw_sprite,
    far_colour,
    jitter_colour,
    paste,
    random_look,
    reference_image,
    rotate_crop,
)
from refdet_core.destination import clean_leftovers, make_temp_dir
from refdet_core.io import atomic_write_bytes, atomic_write_json

MARKER = "demo.json"  # marks a folder as a demo set, which write_demo may replace
CANVAS = 2.2  # landscape size as a multiple of the frame size
ZOOM = (0.86, 1.18)  # camera view size as a multiple of the frame size
TARGET_PX = (22.0, 36.0)  # target long side at zoom 1 in a 640x360 frame (18-45 px over the zoom range)


class DemoError(ValueError):
    """write_demo refuses: bad arguments, or an output folder that is not a demo set."""


@dataclass
class _Obj:
    sprite: np.ndarray  # tight RGBA, rotated to its heading on the ground
    size: float  # long side in landscape px
    x: float  # landscape position at frame t0
    y: float
    vx: float = 0.0  # drift, landscape px per frame
    vy: float = 0.0
    t0: int = 0
    span: tuple[int, int] | None = None  # frames [start, end) it is on the ground; None = always


@dataclass
class _Camera:
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


# ---------------------------------------------------------------------------------------------- planning


def _assign(
    videos: int, seed: int, val_videos: int | None = None, tune_videos: int = 0
) -> tuple[list[str], dict[str, Look], list[str], list[str], list[str]]:
    """Video ids, target looks, validation ids, tuning ids and the ids whose target never appears.

    Targets of one kind differ in their main colour (at least 90 RGB apart where possible).
    """
    rng = np.random.default_rng([seed, 7919])
    ids = [f"{KINDS[i % len(KINDS)]}_{i // len(KINDS)}" for i in range(videos)]
    looks: dict[str, Look] = {}
    for vid in ids:
        kind = vid.rsplit("_", 1)[0]
        looks[vid] = random_look(rng, kind, [lk.primary for lk in looks.values() if lk.kind == kind])
    if val_videos is None:
        val_videos = max(1, round(videos * 0.25)) if videos >= 2 else 0
    n_val = min(val_videos, videos - 1) if videos >= 2 else 0
    n_tune = min(tune_videos, videos - 1 - n_val)
    order = [ids[i] for i in rng.permutation(videos)]
    kind = [v.rsplit("_", 1)[0] for v in order]
    kinds_first = [order[i] for i in sorted(range(videos), key=lambda i: kind[:i].count(kind[i]))]
    val = sorted(kinds_first[:n_val], key=ids.index)  # held-out videos of as many kinds as possible
    tune = sorted(kinds_first[n_val : n_val + n_tune], key=ids.index)
    train = [v for v in ids if v not in val and v not in tune]
    empty = [train[-1]] if videos >= 3 else []
    if videos >= 8 and val:
        empty.append(val[-1])
    if len(tune) >= 4:
        empty.append(tune[-1])
    return ids, looks, val, tune, empty


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


def _intervals(rng: np.random.Generator, frames: int, n: int) -> list[tuple[int, int]]:
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


def _camera(rng: np.random.Generator, width: int, height: int) -> _Camera:
    cw, ch = CANVAS * width, CANVAS * height
    return _Camera(
        cx=cw / 2,
        cy=ch / 2,
        ax=(cw - ZOOM[1] * width) / 2 - 4,
        ay=(ch - ZOOM[1] * height) / 2 - 4,
        phase=rng.uniform(0, 2 * np.pi, 3),
        period=rng.uniform([360, 300, 200], [560, 480, 320]),
    )


def _near(
    rng: np.random.Generator, cam: _Camera, t: int, spread: float, width: int, height: int
) -> tuple[float, float]:
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


def _objects(rng: np.random.Generator, plan: dict[str, Any], decoys: list[Look]) -> tuple[list, list]:
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

    def distractor(twin: str, dsize: float, x: float, y: float, t0: int) -> _Obj:
        plan["twins"][twin] += 1
        dlook = _distractor_look(rng, twin, look, plan)
        return _Obj(rotate_crop(draw_sprite(dlook), float(rng.uniform(0, 360))), dsize, x, y, t0=t0)

    for i in range(4 + frames // 40):  # spread over the flight
        t = int(rng.integers(0, frames))
        x, y = _near(rng, cam, t, 0.35, width, height)
        distractors.append(distractor(TWINS[i % 3], max(rng.uniform(0.7, 1.3) * size, 9.0), x, y, t))
    for start, end in plan["spans"]:
        x, y = _near(rng, cam, (start + end) // 2, 0.2, width, height)
        v = rng.uniform(-0.25, 0.25, 2) * unit
        targets.append(_Obj(sprite, size, x, y, float(v[0]), float(v[1]), (start + end) // 2, (start, end)))
        for twin in ("colour", "shape"):  # look-alikes close to the target, in the same frames
            ang, dist = rng.uniform(0, 2 * np.pi), rng.uniform(2.5, 5.0) * size
            d = distractor(twin, size * rng.uniform(0.8, 1.25), x + dist * np.cos(ang), y + dist * np.sin(ang), start)
            distractors.append(d)
    return targets, distractors


# ---------------------------------------------------------------------------------------------- rendering


def _draw(frame: np.ndarray, obj: _Obj, t: int, origin: tuple[float, float], zoom: float) -> tuple | None:
    if obj.span is not None and not obj.span[0] <= t < obj.span[1]:
        return None
    fx = (obj.x + obj.vx * (t - obj.t0) - origin[0]) / zoom
    fy = (obj.y + obj.vy * (t - obj.t0) - origin[1]) / zoom
    size = obj.size / zoom
    h, w = frame.shape[:2]
    if fx < -size or fy < -size or fx > w + size or fy > h + size:
        return None
    return paste(frame, obj.sprite, fx, fy, size)


def _render(
    path: Path,
    plan: dict[str, Any],
    targets: list[_Obj],
    distractors: list[_Obj],
    canvas: np.ndarray,
    noise: list[np.ndarray],
) -> dict[int, tuple[int, int, int, int]]:
    """Write the video; returns the target's tight box per frame where it is visible."""
    width, height, cam = plan["width"], plan["height"], plan["camera"]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), plan["fps"], (width, height))
    if not writer.isOpened():
        raise DemoError(f"{path}: OpenCV cannot write mp4v video here")
    boxes = {}
    try:
        for t in range(plan["frames"]):
            cx, cy, zoom = cam.at(t)
            origin = (cx - width * zoom / 2, cy - height * zoom / 2)
            m = np.float32([[1 / zoom, 0, -origin[0] / zoom], [0, 1 / zoom, -origin[1] / zoom]])
            frame = cv2.warpAffine(canvas, m, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            for obj in distractors:
                _draw(frame, obj, t, origin, zoom)
            for obj in targets:  # drawn last: never hidden, so its box is the tight visible box
                box = _draw(frame, obj, t, origin, zoom)
                if box is not None:
                    boxes[t] = box
            frame = cv2.subtract(cv2.add(frame, noise[t % len(noise)][0]), noise[t % len(noise)][1])
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    _verify(path, plan["frames"])
    return boxes


def _verify(path: Path, frames: int) -> None:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.grab():
        n += 1
    cap.release()
    if n != frames:
        raise DemoError(f"{path}: wrote {frames} frames but {n} decode")


def _groups(boxes: dict[int, tuple[int, ...]], spans: list[tuple[int, int]]) -> list[dict[str, list]]:
    """One annotation group per run of consecutive visible frames (within each planned interval)."""
    groups: list[list[dict[str, int]]] = []
    for start, end in spans:
        prev = None
        for t in range(start, end):
            if t not in boxes:
                continue
            if prev is None or t != prev + 1:
                groups.append([])
            x1, y1, x2, y2 = boxes[t]
            groups[-1].append({"frame": t, "x1": x1, "y1": y1, "x2": x2, "y2": y2})
            prev = t
    return [{"bboxes": g} for g in groups]


# ---------------------------------------------------------------------------------------------- writing


def _write_sample(folder: Path, vid: str, index: int, ctx: dict[str, Any]) -> dict[str, Any]:
    """Write one sample folder (references + video); returns its annotation entry."""
    rng = np.random.default_rng([ctx["seed"], index])
    width, height = ctx["width"], ctx["height"]
    frames = ctx["frames"] if vid in ctx["held_out"] else ctx["train_frames"]
    empty = vid in ctx["empty"]
    plan = {
        "frames": frames,
        "width": width,
        "height": height,
        "fps": ctx["fps"],
        "look": ctx["looks"][vid],
        "camera": _camera(rng, width, height),
        "spans": [] if empty else _intervals(rng, frames, (2, 1, 3)[index % 3]),
        "decoys": [],
        "decoy_rng": np.random.default_rng([ctx["seed"], index, 1]),
    }
    targets, distractors = _objects(rng, plan, ctx["decoys"])
    canvas = aerial_canvas(rng, int(CANVAS * width), int(CANVAS * height))
    noise = [np.abs(rng.normal(0, 3, (2, height, width, 3))).astype(np.uint8) for _ in range(3)]
    refs = folder / "object_images"
    refs.mkdir(parents=True)
    for k in range(3):
        img = reference_image(rng, plan["look"])
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        assert ok, "JPEG encoding failed"
        atomic_write_bytes(refs / f"img_{k + 1}.jpg", buf.tobytes())
    boxes = _render(folder / "drone_video.mp4", plan, targets, distractors, canvas, noise)
    names = {lk: v for v, lk in ctx["looks"].items()}
    ctx["placed"][vid] = sorted({names[d] for d in plan["decoys"]})
    ctx["twins"][vid] = plan["twins"]
    return {"video_id": vid, "annotations": _groups(boxes, plan["spans"])}


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DemoError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise DemoError(f"{out}: folder is not empty and is not a demo set (no {MARKER}); refusing to overwrite it")


def _move_into_place(tmp: Path, out: Path) -> None:
    """Swap the finished set in: the old demo set (if any) goes only after the new one is complete."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _summary(
    entries: list[dict[str, Any]], looks: dict[str, Look], val: list[str], tune: list[str]
) -> dict[str, dict[str, Any]]:
    return {
        e["video_id"]: {
            "kind": looks[e["video_id"]].kind,
            "split": "val" if e["video_id"] in val else "tune" if e["video_id"] in tune else "train",
            "intervals": len(e["annotations"]),
            "annotated_frames": sum(len(g["bboxes"]) for g in e["annotations"]),
        }
        for e in entries
    }


def write_demo(
    out: str | Path,
    *,
    videos: int = 8,
    frames: int = 150,
    train_frames: int | None = None,
    val_videos: int | None = None,
    tune_videos: int = 0,
    seed: int = 0,
    width: int = 640,
    height: int = 360,
    fps: int = 25,
) -> dict[str, Any]:
    """Write the demo set in the challenge layout at ``out`` (plus ``splits.json`` and ``demo.json``).

    ``train_frames`` (default ``frames``) is the length of the training videos, ``val_videos`` (default a
    quarter) the number of held-out ones; ``tune_videos`` more videos, as long as the held-out ones and of
    instances no training video shows, are listed in ``splits.json`` under ``"tune"`` (in neither ``train`` nor
    ``val``): the videos on which notebook 06 chooses its thresholds and weights. Deterministic per arguments.
    ``out`` must be missing, empty or an earlier demo set (which is replaced).
    Returns a summary: ``{"root", "train", "val", "tune", "empty", "videos": {id: {...}}}``.
    """
    train_frames = frames if train_frames is None else train_frames
    if videos < 1 or min(frames, train_frames) < 12 or width < 64 or height < 64 or fps <= 0:
        raise DemoError(
            f"write_demo: need videos >= 1, frames and train_frames >= 12, width/height >= 64, fps > 0; got "
            f"videos={videos} frames={frames} train_frames={train_frames} width={width} height={height} fps={fps}"
        )
    if val_videos is not None and not 0 <= val_videos < videos:
        raise DemoError(f"write_demo: need 0 <= val_videos < videos; got val_videos={val_videos} videos={videos}")
    if tune_videos < 0 or (val_videos or 0) + tune_videos >= videos:
        raise DemoError(f"write_demo: need tune_videos >= 0 and a training video left; got tune_videos={tune_videos}")
    out = Path(out)
    _check_out(out)
    ids, looks, val, tune, empty = _assign(videos, seed, val_videos, tune_videos)
    ctx = {
        "seed": seed,
        "width": width,
        "height": height,
        "frames": frames,
        "train_frames": train_frames,
        "held_out": set(val) | set(tune),
        "fps": fps,
        "looks": looks,
        "empty": empty,
        "decoys": [looks[v] for v in ids if v not in val and v not in tune],  # held-out instances: in no training video
        "placed": {},
        "twins": {},
    }
    clean_leftovers(out.parent, [out.name])
    tmp = make_temp_dir(out.parent, out.name)
    try:
        entries = [
            _write_sample(tmp / "samples" / vid, vid, i, ctx)
            for i, vid in enumerate(tqdm(ids, desc="demo videos", disable=None, leave=False))
        ]
        atomic_write_json(tmp / "annotations" / "annotations.json", entries)
        train = [v for v in ids if v not in val and v not in tune]
        atomic_write_json(tmp / "splits.json", {"train": train, "val": val, **({"tune": tune} if tune else {})})
        params = {"videos": videos, "frames": frames, "train_frames": train_frames, "val_videos": len(val)}
        params["tune_videos"] = len(tune)
        params.update(seed=seed, width=width, height=height, fps=fps)
        atomic_write_json(
            tmp / MARKER,
            {
                "generator": __name__,
                "params": params,
                "empty": empty,
                "looks": {v: vars(lk) for v, lk in looks.items()},
                "decoys": ctx["placed"],
                "distractors": ctx["twins"],
            },
        )
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary = {"root": str(out), "train": train, "val": val, "tune": tune, "empty": empty}
    return {**summary, "videos": _summary(entries, looks, val, tune)}


def read_demo_marker(root: str | Path) -> dict[str, Any]:
    """The ``demo.json`` of a demo set: the arguments it was written with, empty videos, looks and decoys."""
    return json.loads((Path(root) / MARKER).read_text())
