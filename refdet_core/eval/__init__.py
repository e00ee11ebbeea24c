"""Evaluation: ST-IoU and other metrics, the submission format, temporal post-processing, the baseline.

Names load on first use, so reading a submission (``refdet score`` checking its input) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "map50": "metrics",
    "presence_prf": "metrics",
    "st_iou": "metrics",
    "st_iou_video": "metrics",
    "PostprocessConfig": "postprocess",
    "postprocess": "postprocess",
    "postprocess_scored": "postprocess",
    "AnnotationError": "submission",
    "SubmissionError": "submission",
    "read_annotations": "submission",
    "read_submission": "submission",
    "score_files": "submission",
    "write_submission": "submission",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
