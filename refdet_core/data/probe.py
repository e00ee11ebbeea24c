"""Probe the videos of a layout before a long job reads them, and check afterwards that all of them were read.

``refdet predict`` decodes each video front to back; a video cut short (a faststart mp4 truncated in the middle)
would quietly give a submission covering only the frames before the cut. ``expected_frames`` opens every video
first (a corrupt one fails before any model is loaded) and ``check_decoded`` compares what was decoded.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from refdet_core.data.frames import VideoError
from refdet_core.data.layout import probe_video_file

log = logging.getLogger(__name__)


def expected_frames(layout: Any, video_ids: Sequence[str], *, partial: bool = False) -> dict[str, int]:
    """``{video_id: frames that decode}`` (0 = unknown, only with ``partial``); LayoutError naming the file and
    the frame for a video that cannot be opened, has no first frame, or (unless ``partial``) is truncated."""
    out = {}
    for vid in video_ids:
        frames, _, _, _ = probe_video_file(Path(layout.videos[vid].video_path), truncated_ok=partial)
        out[vid] = frames
    return out


def check_decoded(
    decoded: Mapping[str, int], expected: Mapping[str, int], paths: Mapping[str, Any], *, partial: bool = False
) -> None:
    """Every video decoded to its end: ``VideoError`` naming the file and the frame where decoding stopped, or
    with ``partial`` a warning saying which frames the results cover."""
    for vid, n in decoded.items():
        want = expected.get(vid, 0)
        if n >= want and (want or not partial):
            continue
        if want:
            message = f"{paths[vid]}: decoding stopped at frame {n} of {want} (truncated or corrupt video)"
        else:
            message = f"{paths[vid]}: decoding stopped at frame {n} (the video is truncated)"
        if not partial:
            raise VideoError(message)
        log.warning("%s; results cover frames 0-%d only", message, n - 1)
