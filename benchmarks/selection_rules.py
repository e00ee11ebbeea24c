"""How each frame's box becomes a decision: the selection rules of 06 compared on the tuning videos only.

One inference pass over the tuning videos (``splits.json``'s ``"tune"``) keeps every frame's candidates; each
rule then re-selects and re-tracks them (no new inference) with its ``enter`` (and ``leave``) chosen on those
same videos by ``eval/video.py: tune_enter``. The rows vary what 06 chooses over: the re-ID weight, tracks,
scores as they are or relative to the video's best (``Selection.relative``), and ``leave`` fixed at 0.6 of
``enter`` on a 0.05 grid (the rule before ``leave`` was chosen) or chosen with it. The table is the mean ST-IoU
on the videos the rule was tuned on, so it says what each rule can reach, not what it generalises to: 06 scores
the chosen rule once on the validation videos. No validation video is read.

Run:  .venv/bin/python benchmarks/selection_rules.py --ckpt outputs/demo/05_train_stage2/checkpoint
      [--data data/demo] [--json]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

from refdet_core.data.layout import read_layout, read_tune_ids
from refdet_core.eval.video import (
    evaluate,
    layout_ground_truth,
    load_predictor,
    predict_layout,
    reselect_all,
    tune_enter,
)

WEIGHTS = (0.0, 0.75, 0.9)


def rules(has_reid: bool) -> list[tuple[str, dict, dict]]:
    """(name, Selection fields, tune_enter arguments) of every rule compared."""
    fixed = {"leave_ratios": (0.6,), "refine": 0.0}
    out = []
    for w in WEIGHTS if has_reid else (0.0,):
        for tracks in (False, True):
            for relative in (False, True):
                sel = {"reid_weight": w, "tracks": tracks, "relative": relative}
                name = (
                    f"re-ID weight {w}, {'tracks' if tracks else 'per frame'}, {'relative' if relative else 'absolute'}"
                )
                if not relative:
                    out.append((name + ", leave 0.6 enter", sel, fixed))
                out.append((name + ", leave chosen", sel, {}))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--data", default="data/demo")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    layout = read_layout(args.data, probe_video=False)
    tune_ids = read_tune_ids(args.data, layout.labelled_ids)
    if not tune_ids:
        raise SystemExit(f"{args.data}: splits.json names no tuning videos")
    predictor = load_predictor(args.ckpt)  # torch; 06 uses onnxruntime, whose scores differ in float rounding only
    predictor.all_cues = True
    results = predict_layout(args.data, predictor, video_ids=tune_ids, progress=True)
    gt = layout_ground_truth(layout, tune_ids)
    base = replace(predictor.check, colour=False)
    rows = []
    for name, fields, tuning in rules(predictor.has_reid):
        picked = reselect_all(results, replace(base, **fields), predictor.post)
        post, _ = tune_enter(picked, gt, post=predictor.post, **tuning)
        ev = evaluate(reselect_all(results, replace(base, **fields), post), gt)
        pres = ev["presence"]
        rows.append({"rule": name, "enter": post.enter, "leave": round(post.leave, 3), "mean_st_iou": ev["mean_st_iou"],
                     "precision": pres["precision"], "recall": pres["recall"]})  # fmt: skip
    if args.json:
        print(json.dumps({"tune_videos": tune_ids, "rows": rows}, indent=1, default=float))
        return
    print(f"tuning videos: {', '.join(tune_ids)}\n")
    print("| rule | enter | leave | mean ST-IoU | presence P | presence R |\n|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['rule']} | {r['enter']:.2f} | {r['leave']:.2f} | {r['mean_st_iou']:.3f} | {r['precision']:.2f} "
              f"| {r['recall']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
