"""Accuracy change of lossy options: a short training run with and without the option, then validation.

The reference is the ``fast`` preset. For an option that ``fast`` contains, "without" reverts the option's keys
to the ``seed`` preset's values; for any other option, "with" is ``fast`` plus the option. Both runs start from the
same random seed and see the same episodes. Reported: mean validation loss over fixed validation episodes and, when the
whole-video inference (``refdet_core.eval.video``) is available, ST-IoU on the validation videos.
"""

from __future__ import annotations

import logging
import statistics
from typing import Any

import torch

from refdet_core.config import RefDetConfig, config_from_dict
from refdet_core.data.episodes import load_fixed_episode
from refdet_core.eval.postprocess import PostprocessConfig
from refdet_core.eval.video import VideoPredictor, evaluate, layout_ground_truth
from refdet_core.speed.options import OPTIONS, fast_options, preset_config, whole_frames
from refdet_core.speed.setup import build_setup, prefill_support_cache

logger = logging.getLogger(__name__)


def pair_configs(name: str, base: RefDetConfig) -> tuple[RefDetConfig, RefDetConfig]:
    """(without, with) the option, around the fast preset."""
    fast, original = preset_config("fast", base), preset_config("seed", base)
    keys = OPTIONS[name].resolve(original)
    if name in fast_options():
        return config_from_dict({k: original.flat()[k] for k in keys}, source=f"fast without {name}", base=fast), fast
    return fast, OPTIONS[name].apply(fast)


def val_loss(setup: Any, episodes: int) -> float:
    """Mean loss over ``episodes`` fixed validation episodes (no augmentation, eval mode, no gradients).

    The episodes show whole frames at ``img_size``, as inference does, whatever the training query
    (a ``crop_window`` setup trains on windows): so the losses of runs with and without it compare.
    """
    model, trainer = setup.model, setup.trainer
    model.eval()
    ids = setup.val_ids or setup.train_ids
    overrides = {"n_way": min(setup.cfg.data.n_way, len(ids)), **whole_frames(setup.cfg)}
    cfg = config_from_dict(overrides, base=setup.cfg)
    losses = []
    with torch.no_grad():
        for seed in range(episodes):
            batch = load_fixed_episode(setup.layout, setup.source, ids, cfg, base_classes=setup.base_classes, seed=seed)
            batch = batch.to(trainer.device)
            out = setup.forward(model, batch)
            losses.append(float(trainer.loss_fn(out, batch.boxes, batch.labels, batch.base_labels, epoch=0)[0]))
    return statistics.fmean(losses)


def video_st_iou(setup: Any) -> float:
    """Mean ST-IoU of the model on the validation videos (whole-video inference)."""
    cfg = setup.cfg
    predictor = VideoPredictor(
        setup.model, img_size=cfg.data.img_size, support_size=cfg.data.support_size, post=PostprocessConfig(),
        batch=8, device=setup.trainer.device, k_shot=cfg.data.k_shot,
    )  # fmt: skip
    results = {}
    for vid in setup.val_ids:
        rec = setup.layout.videos[vid]
        results[vid] = predictor.predict_video(rec.video_path, rec.reference_paths, video_id=vid, progress=False)
    return float(evaluate(results, layout_ground_truth(setup.layout, setup.val_ids))["mean_st_iou"])


def short_training(cfg: RefDetConfig, *, episodes: int, val_episodes: int, st_iou: bool) -> dict[str, Any]:
    """Train ``episodes`` episodes (one epoch) from the config's random seed; validation loss (and ST-IoU)."""
    cfg = config_from_dict({"episodes_per_epoch": episodes, "epochs": 1, "warmup_steps": 2}, base=cfg)
    setup = build_setup(cfg)
    prefill_support_cache(setup)
    summary = setup.trainer.train_one_epoch(0)
    return {
        "train_loss": summary.get("loss"),
        "val_loss": val_loss(setup, val_episodes),
        "st_iou": video_st_iou(setup) if st_iou else None,
        "episodes_per_s": summary["episodes_per_s"],
    }


def accuracy_change(
    names: list[str], base: RefDetConfig, *, episodes: int, val_episodes: int, st_iou: bool = True
) -> dict[str, dict[str, Any]]:
    """Per lossy option: metrics without and with it, and the change (with - without)."""
    runs: dict[str, dict[str, Any]] = {}  # memo by resolved config, so the fast preset trains once

    def run(cfg: RefDetConfig) -> dict[str, Any]:
        key = repr(cfg.to_dict())
        if key not in runs:
            runs[key] = short_training(cfg, episodes=episodes, val_episodes=val_episodes, st_iou=st_iou)
        return runs[key]

    out = {}
    for name in names:
        without, with_ = (run(c) for c in pair_configs(name, base))
        change = {
            f"{m}_change": (with_[m] - without[m]) if with_[m] is not None and without[m] is not None else None
            for m in ("val_loss", "st_iou")
        }
        out[name] = {"without": without, "with": with_, **change, "episodes": episodes}
        logger.info("accuracy %s: %s", name, change)
    return out
