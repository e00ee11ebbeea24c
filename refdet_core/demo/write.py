"""Writing the demo set: instances assigned to videos and splits, each sample folder, and the ``demo.json``
marker that lets a later run replace the set."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import uuid
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm.auto import tqdm

from refdet_core.demo.landscape import aerial_canvas
from refdet_core.demo.looks import KINDS, Look, random_look
from refdet_core.demo.references import reference_image
from refdet_core.demo.render import DemoError, annotation_groups, render_video
from refdet_core.demo.scene import CANVAS, place_objects, random_camera, visible_intervals
from refdet_core.destination import clean_leftovers, make_temp_dir
from refdet_core.io import atomic_write_bytes, atomic_write_json

PARALLEL_FROM = 24  # sets of this many videos are written in several processes by default
MARKER = "demo.json"  # marks a folder as a demo set, which write_demo may replace
GENERATOR = "refdet_core.demo"  # demo.json's "generator": the package that wrote the set


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


def _write_sample(folder: Path, vid: str, index: int, ctx: dict[str, Any]) -> tuple[dict[str, Any], list, dict]:
    """Write one sample folder (references + video); returns its annotation entry, the training targets placed in
    it as decoys and its distractor counts per kind."""
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
        "camera": random_camera(rng, width, height),
        "spans": [] if empty else visible_intervals(rng, frames, (2, 1, 3)[index % 3]),
        "decoys": [],
        "decoy_rng": np.random.default_rng([ctx["seed"], index, 1]),
    }
    targets, distractors = place_objects(rng, plan, ctx["decoys"])
    canvas = aerial_canvas(rng, int(CANVAS * width), int(CANVAS * height))
    noise = [np.abs(rng.normal(0, 3, (2, height, width, 3))).astype(np.uint8) for _ in range(3)]
    refs = folder / "object_images"
    refs.mkdir(parents=True)
    for k in range(3):
        img = reference_image(rng, plan["look"])
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        assert ok, "JPEG encoding failed"
        atomic_write_bytes(refs / f"img_{k + 1}.jpg", buf.tobytes())
    boxes = render_video(folder / "drone_video.mp4", plan, targets, distractors, canvas, noise)
    entry = {"video_id": vid, "annotations": annotation_groups(boxes, plan["spans"])}
    return entry, sorted({ctx["names"][d] for d in plan["decoys"]}), plan["twins"]


def _write_samples(samples: Path, ids: list[str], ctx: dict[str, Any], workers: int) -> list[tuple]:
    """``_write_sample`` for every video, in ``workers`` processes (each video draws from its own generator, so
    the set does not depend on how many); results in ``ids`` order."""
    bar = {"desc": "demo videos", "disable": None, "leave": False}
    if workers <= 1:
        return [_write_sample(samples / vid, vid, i, ctx) for i, vid in enumerate(tqdm(ids, **bar))]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_write_sample, samples / vid, vid, i, ctx) for i, vid in enumerate(ids)]
        for _ in tqdm(as_completed(futures), total=len(futures), **bar):
            pass
    return [f.result() for f in futures]


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
    workers: int | None = None,
) -> dict[str, Any]:
    """Write the demo set in the challenge layout at ``out`` (plus ``splits.json`` and ``demo.json``).

    ``train_frames`` (default ``frames``) is the length of the training videos, ``val_videos`` (default a
    quarter) the number of held-out ones; ``tune_videos`` more videos, as long as the held-out ones and of
    instances no training video shows, are listed in ``splits.json`` under ``"tune"`` (in neither ``train`` nor
    ``val``): the videos on which notebook 06 chooses its thresholds and weights. Deterministic per arguments.
    ``out`` must be missing, empty or an earlier demo set (which is replaced). ``workers`` processes write the
    videos (default: one per CPU core, one for fewer than ``PARALLEL_FROM`` videos); the set is the same for any.
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
        "names": {lk: v for v, lk in looks.items()},  # look -> its video id, for the decoys placed
        "empty": empty,
        "decoys": [looks[v] for v in ids if v not in val and v not in tune],  # held-out instances: in no training video
    }
    if workers is None:
        workers = (os.cpu_count() or 1) if videos >= PARALLEL_FROM else 1
    clean_leftovers(out.parent, [out.name])
    tmp = make_temp_dir(out.parent, out.name)
    try:
        written = _write_samples(tmp / "samples", ids, ctx, min(workers, videos))
        entries = [entry for entry, _, _ in written]
        atomic_write_json(tmp / "annotations" / "annotations.json", entries)
        train = [v for v in ids if v not in val and v not in tune]
        atomic_write_json(tmp / "splits.json", {"train": train, "val": val, **({"tune": tune} if tune else {})})
        params = {"videos": videos, "frames": frames, "train_frames": train_frames, "val_videos": len(val)}
        params["tune_videos"] = len(tune)
        params.update(seed=seed, width=width, height=height, fps=fps)
        atomic_write_json(
            tmp / MARKER,
            {
                "generator": GENERATOR,
                "params": params,
                "empty": empty,
                "looks": {v: vars(lk) for v, lk in looks.items()},
                "decoys": {vid: placed for vid, (_, placed, _) in zip(ids, written)},
                "distractors": {vid: twins for vid, (_, _, twins) in zip(ids, written)},
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
