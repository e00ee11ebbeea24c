"""Parameter, FLOP and time breakdowns per stage (support encoder, backbone, fusion, head)."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable

import pandas as pd
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from refdet_core.config import RefDetConfig
from refdet_core.models.refdet import RefDet

log = logging.getLogger(__name__)

MODULES = ("support_encoder", "backbone", "fusion", "head")
BUDGET = 50e6  # parameter budget of the whole model
ORIGINAL_FIGURES = {"support_encoder": 21.87e6, "backbone": 3.16e6, "fusion": 0.78e6, "head": 3.45e6, "total": 29.25e6}


def _counts(module: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "frozen": total - trainable}


def param_table(model: RefDet) -> pd.DataFrame:
    """Rows support_encoder, backbone, fusion, head (match with ``ref_match``, reid with ``crop_reid``), total;
    columns total, trainable, frozen, budget_share.

    INT8-quantized encoder blocks hold packed weights that are not parameters and are not counted.
    """
    rows = {name: _counts(getattr(model, name)) for name in MODULES}
    if model.match is not None:  # ref_match's projections
        rows["match"] = _counts(model.match)
    if getattr(model, "reid", None) is not None:  # crop_reid's network
        rows["reid"] = _counts(model.reid)
    rows["total"] = _counts(model)
    table = pd.DataFrame.from_dict(rows, orient="index")
    table["budget_share"] = table["total"] / BUDGET
    return table


def param_summary(cfg: RefDetConfig) -> dict:
    """``{"modules": {name: {"total", "trainable", "frozen"}}, "total": n, "trainable": n}`` of a random-init
    model built from ``cfg`` (num_base_classes = cfg.model.num_base_classes or 7)."""
    model = RefDet(cfg.model, num_base_classes=cfg.model.num_base_classes or 7)
    table = param_table(model)
    names = [n for n in table.index if n != "total"]
    modules = {name: {k: int(table.loc[name, k]) for k in ("total", "trainable", "frozen")} for name in names}
    total = table.loc["total"]
    return {"modules": modules, "total": int(total["total"]), "trainable": int(total["trainable"])}


def _stage_calls(
    model: RefDet, *, img_size: int, support_size: int, n_way: int, batch: int, k_shot: int
) -> dict[str, Callable[[], object]]:
    """One zero-argument callable per stage, each fed the previous stage's (precomputed) output."""
    device = next(model.parameters()).device
    query = torch.rand(batch, 3, img_size, img_size, device=device)
    support = torch.rand(n_way, k_shot, 3, support_size, support_size, device=device)
    with torch.no_grad():
        protos = model.prototypes(support)
        feats = model.forward_features(query)
        fused = model.fuse(feats, protos)
    return {
        "support_encoder": lambda: model.prototypes(support),
        "backbone": lambda: model.forward_features(query),
        "fusion": lambda: model.fuse(feats, protos),
        "head": lambda: model.detect(fused, feats, protos),
    }


def flops_per_stage(
    model: RefDet, img_size: int, support_size: int, n_way: int, batch: int, *, k_shot: int = 3
) -> pd.DataFrame:
    """Forward GFLOPs per stage (``torch.utils.flop_counter``; INT8 ops are not counted), plus a total row."""
    calls = _stage_calls(model, img_size=img_size, support_size=support_size, n_way=n_way, batch=batch, k_shot=k_shot)
    rows = {}
    with torch.no_grad():
        for name, call in calls.items():
            counter = FlopCounterMode(display=False)
            with counter:
                call()
            rows[name] = {"gflops": counter.get_total_flops() / 1e9}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.loc["total"] = table.sum()
    table["share"] = table["gflops"] / table.loc["total", "gflops"]
    return table


def time_per_stage(
    model: RefDet,
    img_size: int,
    support_size: int,
    n_way: int,
    batch: int,
    *,
    k_shot: int = 3,
    repeats: int = 3,
    warmup: int = 1,
) -> pd.DataFrame:
    """Median forward time per stage in ms (no grad, the model's current mode and device), plus a total row."""
    calls = _stage_calls(model, img_size=img_size, support_size=support_size, n_way=n_way, batch=batch, k_shot=k_shot)
    device = next(model.parameters()).device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = {}
    with torch.no_grad():
        for name, call in calls.items():
            times = []
            for i in range(warmup + repeats):
                sync()
                start = time.perf_counter()
                call()
                sync()  # note: CPU-GPU sync so the stage's kernels are inside the timing
                if i >= warmup:
                    times.append((time.perf_counter() - start) * 1e3)
            rows[name] = {"ms": statistics.median(times)}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.loc["total"] = table.sum()
    table["share"] = table["ms"] / table.loc["total", "ms"]
    return table


def _shape(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return "x".join(str(d) for d in x.shape)
    if isinstance(x, (list, tuple)):
        return ", ".join(_shape(v) for v in x)
    return type(x).__name__


@torch.no_grad()
def stage_shapes(
    model: RefDet, img_size: int, support_size: int, n_way: int, batch: int, *, k_shot: int = 3
) -> pd.DataFrame:
    """Input and output shapes of each stage for one episode (random uint8 inputs)."""
    model.eval()
    support = torch.randint(0, 256, (n_way, k_shot, 3, support_size, support_size), dtype=torch.uint8)
    query = torch.randint(0, 256, (batch, 3, img_size, img_size), dtype=torch.uint8)
    protos = model.prototypes(support)
    feats = model.forward_features(query)
    fused = model.fuse(feats, protos)
    out = model.detect(fused, feats, protos)
    rows = [
        ("support_encoder", _shape(support), _shape(protos.per_scale) if protos is not None else "-"),
        ("backbone", _shape(query), _shape(feats)),
        ("fusion", _shape(feats), _shape(fused)),
        ("head: box_logits", _shape(fused), _shape(out.box_logits)),
        ("head: scores", _shape(fused), _shape(out.scores) if out.scores is not None else "-"),
        ("head: cls_logits", _shape(fused), _shape(out.cls_logits) if out.cls_logits is not None else "-"),
    ]
    return pd.DataFrame(rows, columns=["stage", "input", "output"]).set_index("stage")
