"""benchmarks/reference_reading.py: the rank of the target among a frame's candidates."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from refdet_core.eval.candidates import Candidates
from refdet_core.eval.video import VideoResult

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "reference_reading.py"


def _module():
    spec = importlib.util.spec_from_file_location("reference_reading", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _result() -> VideoResult:
    """Three frames of three candidates: the target (box T) ranks second by score and first by re-ID in frame 0,
    first by both in frame 1, nowhere in frame 2 (a padded, invalid candidate sits on it)."""
    t, far = [10, 10, 30, 30], [100, 100, 120, 120]
    boxes = np.array([[far, t, far], [t, far, far], [far, far, t]], np.float32)
    scores = np.array([[0.9, 0.5, 0.1], [0.8, 0.7, 0.1], [0.9, 0.2, 0.95]], np.float32)
    reid = np.array([[0.1, 0.8, 0.2], [0.9, 0.1, 0.2], [0.5, 0.5, 0.9]], np.float32)
    valid = np.array([[True] * 3, [True] * 3, [True, True, False]])
    cand = Candidates(scores=scores, boxes=boxes, valid=valid, colour=np.zeros_like(scores), reid=reid)
    frames = np.arange(4)  # frame 3 has no target: not counted
    z = np.zeros(4, np.float32)
    return VideoResult("v", frames, z, np.zeros((4, 4), np.float32), np.ones(4, bool), 160, 96, 1.0,
                       candidates=cand, key_frames=frames[:3])  # fmt: skip


def test_target_ranks_by_score_and_by_reid() -> None:
    rr = _module()
    gt = {0: [(10.0, 10.0, 30.0, 30.0)], 1: [(11.0, 10.0, 31.0, 30.0)], 2: [(10.0, 10.0, 30.0, 30.0)]}
    assert rr.target_ranks(_result(), gt, "scores") == [1, 0, -1]
    assert rr.target_ranks(_result(), gt, "reid") == [0, 0, -1]
    assert rr.summary([1, 0, -1]) == {"frames": 3, "first": 1 / 3, "among": 2 / 3}
