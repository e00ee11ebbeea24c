"""Evaluation: ST-IoU and other metrics, the submission format, temporal post-processing, the baseline."""

from refdet_core.eval.metrics import map50, presence_prf, st_iou, st_iou_video
from refdet_core.eval.postprocess import PostprocessConfig, postprocess, postprocess_scored
from refdet_core.eval.submission import (
    AnnotationError,
    SubmissionError,
    read_annotations,
    read_submission,
    score_files,
    write_submission,
)

__all__ = [
    "AnnotationError",
    "PostprocessConfig",
    "SubmissionError",
    "map50",
    "postprocess",
    "postprocess_scored",
    "presence_prf",
    "read_annotations",
    "read_submission",
    "score_files",
    "st_iou",
    "st_iou_video",
    "write_submission",
]
