"""The validation protocol: choose every setting on tuning videos, then score each pipeline arm once.

Arms, all from one inference pass per video (``VideoResult.candidates`` keeps every frame's candidates):

- ``detector_only``: each frame's best candidate by the detector's score;
- ``reid``: ranked by the detector's score and the re-identification similarity (``reid_weight``);
- ``tracks``: the detector's score, decided per track (``eval/tracks.py``);
- ``full``: re-ID and tracks, and the colour rule where it wins on the tuning videos.

``choose`` picks, per arm, the weights, absolute or relative scores and the ``enter`` and ``leave`` thresholds
with the best mean ST-IoU on the *tuning* videos (``splits.json``'s ``"tune"``: instances neither trained nor
validated on; the training videos when there are none, which favours the detector, as it has seen their
instances). ``reference_swap`` scores the
same videos with another video's references: a detector that reads its references must fall far below.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from refdet_core.data.layout import read_layout
from refdet_core.eval.candidates import Selection
from refdet_core.eval.metrics import GroundTruth
from refdet_core.eval.postprocess import PostprocessConfig
from refdet_core.eval.video import VideoPredictor, VideoResult, evaluate, predict_layout, reselect_all, tune_enter

log = logging.getLogger(__name__)

ARMS = ("detector_only", "reid", "tracks", "full")
REID_WEIGHTS = (0.25, 0.5, 0.75, 0.9)


@dataclass
class Choice:
    """One arm's chosen selection and post-processing, and its mean ST-IoU on the tuning videos."""

    selection: Selection
    post: PostprocessConfig
    tune_st_iou: float


def arm_grid(arm: str, base: Selection, has_reid: bool) -> list[Selection]:
    """The settings tried for ``arm`` (``base`` gives candidates / NMS / colour bins); each arm tries its
    scores as they are and relative to the video's best (``Selection.relative``)."""
    det = replace(base, colour=False, reid_weight=0.0, tracks=False, relative=False)
    weights = REID_WEIGHTS if has_reid else (0.0,)
    if arm == "detector_only":
        grid = [det]
    elif arm == "reid":
        grid = [replace(det, reid_weight=w) for w in weights]
    elif arm == "tracks":
        grid = [replace(det, tracks=True)]
    elif arm == "full":
        grid = [replace(det, reid_weight=w, tracks=True, colour=c) for w in weights for c in (False, True)]
    else:
        raise ValueError(f"unknown arm {arm!r}; choose one of {', '.join(ARMS)}")
    return [replace(sel, relative=r) for sel in grid for r in (False, True)]


def choose(
    tune_results: Mapping[str, VideoResult],
    gt: GroundTruth,
    *,
    base: Selection,
    post: PostprocessConfig,
    has_reid: bool,
    arms: Sequence[str] = ARMS,
) -> dict[str, Choice]:
    """Per arm, the setting of ``arm_grid`` and the ``enter``/``leave`` with the best mean ST-IoU on
    ``tune_results`` (ties: the first setting of the grid, the lower ``enter``)."""
    chosen = {}
    for arm in arms:
        best = None
        for sel in arm_grid(arm, base, has_reid):
            tuned, table = tune_enter(reselect_all(tune_results, sel, post), gt, post=post)
            score = table[tuned.enter]
            if best is None or score > best.tune_st_iou:
                best = Choice(sel, tuned, score)
        chosen[arm] = best
        log.info("%s: %s, enter %.2f (tuning mean ST-IoU %.3f)", arm, best.selection, best.post.enter, best.tune_st_iou)
    return chosen


FIXED_REID_WEIGHT = 0.5  # the re-ID share when settings are not chosen


def fixed_choice(base: Selection, post: PostprocessConfig, has_reid: bool) -> dict[str, Choice]:
    """Every arm with ``post`` as given and, where it applies, ``FIXED_REID_WEIGHT`` (nothing is tuned)."""
    w = FIXED_REID_WEIGHT if has_reid else 0.0
    det = replace(base, colour=False, reid_weight=0.0, tracks=False, relative=False)
    sel = {"detector_only": det, "reid": replace(det, reid_weight=w), "tracks": replace(det, tracks=True)}
    sel["full"] = replace(det, reid_weight=w, tracks=True)
    return {arm: Choice(s, post, float("nan")) for arm, s in sel.items()}


def score_arms(results: Mapping[str, VideoResult], gt: GroundTruth, chosen: Mapping[str, Choice]) -> dict[str, dict]:
    """``evaluate`` of every arm on ``results`` (no new inference)."""
    return {arm: evaluate(reselect_all(results, c.selection, c.post), gt) for arm, c in chosen.items()}


def with_target(video_ids: Sequence[str], gt: GroundTruth) -> list[str]:
    return [v for v in video_ids if any(len(b) for b in gt.get(v, {}).values())]


def swap_pairs(video_ids: Sequence[str]) -> dict[str, str]:
    """Each video -> the next one's references (cyclic), so that no video keeps its own."""
    ids = list(video_ids)
    return {v: ids[(i + 1) % len(ids)] for i, v in enumerate(ids)} if len(ids) > 1 else {}


def reference_swap(
    predictor: VideoPredictor, layout, video_ids: Sequence[str], gt: GroundTruth, choice: Choice
) -> dict:
    """The videos scored with another video's references (``swap_pairs``) under ``choice``; the ground truth
    stays that of the video's own target. Returns ``evaluate``'s dict plus ``"pairs"``."""
    pairs = swap_pairs(video_ids)
    results = {}
    for vid, other in pairs.items():
        rec = layout.videos[vid]
        res = predictor.predict_video(rec.video_path, layout.videos[other].reference_paths, video_id=vid)
        results[vid] = res.reselect(choice.selection, choice.post)
    return {**evaluate(results, gt), "pairs": pairs} if results else {"mean_st_iou": float("nan"), "pairs": {}}


def mean_over(scores: Mapping[str, float], video_ids: Sequence[str]) -> float:
    vals = [scores[v] for v in video_ids if v in scores]
    return float(sum(vals) / len(vals)) if vals else float("nan")


def validate(
    predictor: VideoPredictor,
    data_root: str | Path,
    *,
    eval_ids: Sequence[str],
    tune_ids: Sequence[str],
    gt: GroundTruth,
    swap: bool = True,
    choose_settings: bool = True,
    progress: bool = False,
) -> dict:
    """The whole protocol: inference over the tuning and the evaluated videos, ``choose`` on the tuning ones,
    every arm scored on the evaluated ones, and the reference-swap control of the full pipeline.
    ``choose_settings=False`` keeps the predictor's post-processing and ``FIXED_REID_WEIGHT`` instead (no
    inference over the tuning videos).

    Returns ``{"chosen": {arm: Choice}, "arms": {arm: evaluate(...)}, "results": {id: VideoResult} (the full
    arm's), "swap": {...} | None, "with_target": [...], "tune_ids": [...], "eval_ids": [...]}``.
    """
    layout = read_layout(data_root, probe_video=False)
    has_reid = predictor.has_reid
    predictor.all_cues = True  # every arm is scored from the same candidates: re-ID and colour for all of them
    if choose_settings and tune_ids:
        tune_results = predict_layout(data_root, predictor, video_ids=tune_ids, progress=progress)
        chosen = choose(tune_results, gt, base=predictor.check, post=predictor.post, has_reid=has_reid)
    else:
        chosen = fixed_choice(predictor.check, predictor.post, has_reid)
    results = predict_layout(data_root, predictor, video_ids=eval_ids, progress=progress)
    arms = score_arms(results, gt, chosen)
    targets = with_target(eval_ids, gt)
    swapped = reference_swap(predictor, layout, targets, gt, chosen["full"]) if swap and len(targets) > 1 else None
    full = chosen["full"]
    return {
        "chosen": chosen,
        "arms": arms,
        "results": reselect_all(results, full.selection, full.post),
        "swap": swapped,
        "with_target": targets,
        "tune_ids": list(tune_ids),
        "eval_ids": list(eval_ids),
    }


def summary(report: Mapping) -> dict:
    """The metrics of a ``validate`` report, flat (notebook 06's ``metrics.json`` keys)."""
    arms, targets = report["arms"], report["with_target"]
    out = {"mean_st_iou": arms["full"]["mean_st_iou"], "st_iou": arms["full"]["videos"]}
    for arm in ARMS:
        if arm != "full":
            out[f"{arm}_mean_st_iou"] = arms[arm]["mean_st_iou"]
            out[f"{arm}_st_iou"] = arms[arm]["videos"]
    out["full_with_target_mean_st_iou"] = mean_over(arms["full"]["videos"], targets)
    out["detector_only_with_target_mean_st_iou"] = mean_over(arms["detector_only"]["videos"], targets)
    swap = report["swap"]
    out["reference_swap_mean_st_iou"] = swap["mean_st_iou"] if swap else float("nan")
    out["reference_swap_st_iou"] = swap["videos"] if swap else {}
    out["reference_swap_pairs"] = swap["pairs"] if swap else {}
    out["chosen"] = {
        arm: {"selection": vars(c.selection), "postprocess": vars(c.post), "tune_mean_st_iou": c.tune_st_iou}
        for arm, c in report["chosen"].items()
    }
    out["tune_videos"], out["videos"] = report["tune_ids"], report["eval_ids"]
    out["presence"], out["map50"] = arms["full"]["presence"], arms["full"]["map50"]
    return out
