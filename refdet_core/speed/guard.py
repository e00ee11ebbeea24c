"""The accuracy guard of the bench: exact and close options must give the seed preset's numbers (within tolerance).

Two kinds of check, each against the ``seed`` preset at the bench's sizes:

* data options (``frame_store``, ``workers``, ``cache_sizes``) must yield the same first training batch
  (query, support and boxes equal);
* compute options (``support_cache``, ``bf16``, ``channels_last``, ``compile``, ``fused_adamw``) must give the
  same head outputs (box logits and scores, eval mode) on a fixed validation episode from the same weights,
  and the same loss before and after one optimizer step. Exact options are held to both. Close options are
  held to the outputs: the loss goes through the assigner's discrete top-k choices, where a rounding-level
  difference between near-tied anchors at random init moves the loss by about 1 % (channels_last here).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from refdet_core.config import RefDetConfig
from refdet_core.data.episodes import load_fixed_episode, make_loader, make_source
from refdet_core.data.layout import read_layout
from refdet_core.speed.options import OPTIONS, apply_options, preset_config
from refdet_core.speed.setup import build_setup
from refdet_core.train.run import base_classes_of

logger = logging.getLogger(__name__)

DATA_OPTIONS = ("frame_store", "workers", "cache_sizes")


def first_batch(cfg: RefDetConfig) -> Any:
    """The first training batch of ``cfg``'s loader (no model built)."""
    layout = read_layout(cfg.data.data_root)
    train_ids, _ = layout.split(cfg.data)
    source = make_source(layout, cfg)
    loader = make_loader(layout, source, train_ids, cfg, train=True, base_classes=base_classes_of(layout, train_ids))
    return next(iter(loader))


def batch_difference(a: Any, b: Any) -> float:
    """Largest absolute difference over query, support and boxes (inf when shapes differ)."""
    pairs = [(a.query, b.query), (a.support, b.support), *zip(a.boxes, b.boxes)]
    worst = 0.0
    for x, y in pairs:
        if x.shape != y.shape:
            return float("inf")
        if x.numel():
            worst = max(worst, float((x.float() - y.float()).abs().max()))
    return worst


def _head_output(setup: Any, batch: Any) -> Any:
    """HeadOutput on a device batch: the trainer's forward (support cache included) under its autocast."""
    with setup.trainer.autocast():
        return setup.forward(setup.model, batch)


def episode_outputs(setup: Any, batch: Any) -> torch.Tensor:
    """Head outputs on ``batch`` in eval mode: box logits, scores and class logits, flattened float32."""
    setup.model.eval()
    with torch.no_grad():
        out = _head_output(setup, batch.to(setup.trainer.device))
    setup.model.train()
    parts = [t for t in (out.box_logits, out.scores, out.cls_logits) if t is not None]
    return torch.cat([t.float().flatten().cpu() for t in parts])


def episode_losses(setup: Any, batch: Any) -> tuple[float, float]:
    """Loss on ``batch`` (train mode), one optimizer step on it, the loss again: (before, after)."""
    trainer, model = setup.trainer, setup.model
    model.train()
    batch = batch.to(trainer.device)

    def loss() -> torch.Tensor:
        out = _head_output(setup, batch)
        return trainer.loss_fn(out, batch.boxes, batch.labels, batch.base_labels, epoch=0)[0]

    before = loss()
    trainer.scaler.scale(before).backward()
    trainer.optimizer_step(torch.isfinite(before))
    with torch.no_grad():
        after = loss()
    return float(before.detach()), float(after)


def _relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), 1e-12)


def _compute_checks(names: list[str], original: RefDetConfig) -> dict[str, dict[str, Any]]:
    if not names:
        return {}
    ref = build_setup(original)
    batch = load_fixed_episode(ref.layout, ref.source, ref.train_ids, original, base_classes=ref.base_classes)
    weights = {k: v.clone() for k, v in ref.model.state_dict().items()}
    ref_outputs = episode_outputs(ref, batch)
    ref_losses = episode_losses(ref, batch)
    out = {}
    for name in names:
        setup = build_setup(apply_options(original, [name]))
        setup.model.load_state_dict(weights)
        outputs = episode_outputs(setup, batch)
        losses = episode_losses(setup, batch)
        loss_diff = max(_relative(a, b) for a, b in zip(ref_losses, losses))
        output_diff = float((outputs - ref_outputs).abs().max() / ref_outputs.abs().max().clamp_min(1e-12))
        held = output_diff if OPTIONS[name].exactness == "close" else max(output_diff, loss_diff)
        out[name] = {
            "check": "head outputs (eval) and loss before/after one step",
            "seed": ref_losses, "option": losses, "loss_rel_diff": loss_diff, "output_rel_diff": output_diff,
            "rel_diff": held,
        }  # fmt: skip
    return out


def run_guard(names: list[str], base: RefDetConfig) -> dict[str, dict[str, Any]]:
    """Check each exact/close option in ``names`` against the seed preset; ``ok`` per option."""
    original = preset_config("seed", base)
    results: dict[str, dict[str, Any]] = {}
    data = [n for n in names if n in DATA_OPTIONS]
    if data:
        ref = first_batch(original)
        for name in data:
            diff = batch_difference(ref, first_batch(apply_options(original, [name])))
            results[name] = {"check": "first training batch", "max_abs_diff": diff, "rel_diff": diff}
    results.update(_compute_checks([n for n in names if n not in DATA_OPTIONS], original))
    for name, r in results.items():
        opt = OPTIONS[name]
        r.update(exactness=opt.exactness, tolerance=opt.tolerance, ok=r["rel_diff"] <= opt.tolerance)
        if not r["ok"]:
            logger.warning("guard: %s differs from seed by %.3g (tolerance %.3g)", name, r["rel_diff"], opt.tolerance)
    return results
