"""The lossy speed options that change what trains, measured for accuracy in the demo training recipe.

Each variant is the demo recipe (``params/demo/05_train_stage2.yaml``) with a few keys changed, trained for the
same shortened number of epochs with ``refdet train``; its checkpoint then runs over the tuning videos (never the
validation ones), where 06's arm settings are chosen, and the tuning mean ST-IoU of each arm is reported beside
the training time. Variants: the recipe as is (encoder frozen, 128 px references), ``freeze_encoder`` off (the
last 6 encoder blocks train, as in the original) and 256 px references (what ``support_256`` keeps; the recipe's
128 px is below it), and four times the training instances (400 videos of 16 frames instead of 104 of 48, about
as many frames; scored on that set's own tuning videos, also unseen in its training). With a randomly initialised
encoder the frozen one is a random projection, so these figures say how the recipe behaves here, not what
pretrained weights would give.

Run:  .venv/bin/python benchmarks/recipe_options.py [--epochs 20] [--out outputs/recipe_options] [--json]
      [--seeds 0,1,2] [--variants 0,3] [--recipe-ckpt outputs/demo/05_train_stage2/checkpoint]
      (``--variants``: which rows, by their place in VARIANTS; ``--recipe-ckpt`` scores
      `make demo`'s run as the recipe row of its own seed instead of training it again; only valid with the
      recipe's own epochs)
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

VARIANTS = {
    "recipe (frozen encoder, 128 px references)": {},
    "freeze_encoder off (6 encoder blocks train)": {"trainable_blocks": 6},
    "256 px references": {"support_size": 256},
    "400 training instances (16 frames each)": {"data_root": "data/demo416"},
}
# the data sets the variants train on, made when missing (the recipe's own is `make data/demo/splits.json`)
DATA_SETS = {"data/demo416": ["--videos", "416", "--val-videos", "8", "--tune-videos", "8", "--train-frames", "16"]}


def train(params: dict, out: Path) -> float:
    """``refdet train`` on ``params`` into ``out``; returns the wall time in s."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "05_train_stage2.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    start = time.perf_counter()
    subprocess.run([str(Path(sys.executable).with_name("refdet")), "train", "-p", str(path), "-o", str(out / "run"),
                    "--force"], check=True)  # fmt: skip
    return time.perf_counter() - start


def tuning_scores(ckpt: Path, data: str) -> dict[str, float]:
    """Each arm's tuning mean ST-IoU, with its settings chosen on the same tuning videos (06's ``choose``)."""
    from refdet_core.data.layout import read_layout, read_tune_ids
    from refdet_core.eval import validate
    from refdet_core.eval.predict import load_backends
    from refdet_core.eval.video import layout_ground_truth, predict_layout

    layout = read_layout(data)
    tune_ids = read_tune_ids(data, layout.labelled_ids)
    if not tune_ids:
        raise SystemExit(f"{data}: no tuning videos (splits.json 'tune'); make the demo set with --tune-videos")
    gt = layout_ground_truth(layout, layout.labelled_ids)
    with tempfile.TemporaryDirectory(prefix="refdet-recipe-") as work:
        predictor = load_backends(ckpt, ["torch"], work=Path(work))["torch"]
        predictor.all_cues = True
        results = predict_layout(data, predictor, video_ids=tune_ids, progress=False)
        chosen = validate.choose(results, gt, base=predictor.check, post=predictor.post,
                                 has_reid=predictor.has_reid)  # fmt: skip
    return {arm: round(c.tune_st_iou, 4) for arm, c in chosen.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params/demo/05_train_stage2.yaml")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seeds", default="0", help="comma-separated random_seed values: one training per variant each")
    ap.add_argument("--recipe-ckpt", help="a checkpoint of the recipe as is (its own seed), scored instead of trained")
    ap.add_argument("--variants", default=None, help="comma-separated indices into VARIANTS (default: all)")
    ap.add_argument("--out", default="outputs/recipe_options")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    base = yaml.safe_load(Path(args.params).read_text())
    rows = []
    seeds = [int(s) for s in args.seeds.split(",")]
    picked = range(len(VARIANTS)) if args.variants is None else [int(i) for i in args.variants.split(",")]
    variants = [(i, v) for i, v in enumerate(VARIANTS.items()) if i in picked]
    for seed, (i, (name, change)) in itertools.product(seeds, variants):
        out = Path(args.out) / f"variant_{i}_seed_{seed}"
        data = change.get("data_root", base["data_root"])
        if data in DATA_SETS and not Path(data, "splits.json").is_file():
            subprocess.run([str(Path(sys.executable).with_name("refdet")), "data", "demo", data, *DATA_SETS[data]],
                           check=True)  # fmt: skip
        if not change and args.recipe_ckpt and seed == base.get("random_seed", 0):
            seconds, ckpt = float("nan"), Path(args.recipe_ckpt)
        else:
            seconds = train({**base, **change, "epochs": args.epochs, "random_seed": seed}, out)
            ckpt = next((out / "run").rglob("model.safetensors")).parent
        rows.append(
            {
                "variant": name,
                "seed": seed,
                "change": change,
                "train_s": seconds if math.isnan(seconds) else round(seconds),
                **tuning_scores(ckpt, data),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    Path(args.out, "recipe_options.json").write_text(json.dumps(rows, indent=1) + "\n")
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    arms = [k for k in rows[0] if k not in ("variant", "seed", "change", "train_s")]
    print("| variant | seed | train s | " + " | ".join(arms) + " |")
    print("|---|---:|---:|" + "---:|" * len(arms))
    for r in rows:
        print(f"| {r['variant']} | {r['seed']} | {r['train_s']} | " + " | ".join(f"{r[a]:.3f}" for a in arms) + " |")


if __name__ == "__main__":
    main()
