"""Rendering a demo video's plan: the frames to an mp4 file, and the target's boxes to annotation groups."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from refdet_core.demo.draw import paste
from refdet_core.demo.scene import GroundObject


class DemoError(ValueError):
    """write_demo refuses (bad arguments, an output folder that is not a demo set) or cannot write a video."""


def _draw_object(
    frame: np.ndarray, obj: GroundObject, t: int, origin: tuple[float, float], zoom: float
) -> tuple | None:
    if obj.span is not None and not obj.span[0] <= t < obj.span[1]:
        return None
    fx = (obj.x + obj.vx * (t - obj.t0) - origin[0]) / zoom
    fy = (obj.y + obj.vy * (t - obj.t0) - origin[1]) / zoom
    size = obj.size / zoom
    h, w = frame.shape[:2]
    if fx < -size or fy < -size or fx > w + size or fy > h + size:
        return None
    return paste(frame, obj.sprite, fx, fy, size)


def render_video(
    path: Path,
    plan: dict[str, Any],
    targets: list[GroundObject],
    distractors: list[GroundObject],
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
                _draw_object(frame, obj, t, origin, zoom)
            for obj in targets:  # drawn last: never hidden, so its box is the tight visible box
                box = _draw_object(frame, obj, t, origin, zoom)
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


def annotation_groups(boxes: dict[int, tuple[int, ...]], spans: list[tuple[int, int]]) -> list[dict[str, list]]:
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
