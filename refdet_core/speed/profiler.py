"""Per-component timing of a full training step.

One step = data wait (``next(loader)`` + copy to the device), support encoding (through the support-feature
cache when the config uses it), backbone, fusion, head, loss, backward, optimizer step. The stages are called
in the order of ``RefDet.forward`` with the trainer's own autocast, loss, scaler and ``optimizer_step``, so the
step computes what ``Trainer.train_step`` computes (a test checks the loss is equal). On CUDA every component
is bracketed by ``torch.cuda.synchronize()``; the same code runs on CPU.
"""

from __future__ import annotations

import contextlib
import json
import logging
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from refdet_core import memory
from refdet_core.config import RefDetConfig, config_from_dict, params_file_config
from refdet_core.destination import check_file_destination
from refdet_core.speed.options import entry_config, store_dir_for
from refdet_core.speed.setup import Prefills, build_setup, endless, prefill_support_cache

logger = logging.getLogger(__name__)

COMPONENTS = ("data", "support", "backbone", "fusion", "head", "loss", "backward", "optimizer")


class Clock:
    """Accumulates seconds per component name; synchronises CUDA around each so kernels are inside."""

    def __init__(self, device: torch.device) -> None:
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.seconds: dict[str, float] = dict.fromkeys(COMPONENTS, 0.0)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.sync()
        start = time.perf_counter()
        with torch.profiler.record_function(name):
            yield
        self.sync()  # note: CPU-GPU sync, only in the profiler
        self.seconds[name] += time.perf_counter() - start


def timed_step(setup: Any, batches: Iterator[Any], clock: Clock, *, epoch: int = 0) -> torch.Tensor:
    """One full training step, each component timed into ``clock``; returns the (detached) loss."""
    trainer, model = setup.trainer, setup.model
    with clock("data"):
        batch = next(batches).to(trainer.device, non_blocking=True)
    with trainer.autocast():
        with clock("support"):
            protos = setup.forward.prototypes(model, batch)
        with clock("backbone"):
            feats = model.forward_features(batch.query)
        with clock("fusion"):
            fused = model.fuse(feats, protos)
        with clock("head"):
            out = model.detect(fused, feats, protos)
            if setup.forward.reid:  # the re-ID loss's crops, as the trainer's forward adds them
                model.add_reid_pairs(out, batch.query, protos, (batch.boxes, batch.labels))
    with clock("loss"):
        total, _ = trainer.loss_fn(out, batch.boxes, batch.labels, batch.base_labels, epoch=epoch)
    with clock("backward"):
        trainer.scaler.scale(total / trainer.cfg.train.grad_accum).backward()
    with clock("optimizer"):
        trainer.optimizer_step(torch.isfinite(total))
    return total.detach()


def cache_stats(setup: Any) -> dict[str, Any]:
    """Frame-source and support-feature-cache counters (hits, misses, hit_rate); None where there is none."""
    src = setup.source.stats() if hasattr(setup.source, "stats") else {}
    frames = {k: src[k] for k in ("hits", "misses", "hit_rate") if k in src}
    cache = setup.support_cache
    return {"frames": frames or None, "support": cache.stats() if cache is not None else None}


def _reset_stats(setup: Any) -> None:
    if hasattr(setup.source, "reset_stats"):
        setup.source.reset_stats()
    cache = setup.support_cache
    if cache is not None:
        cache.hits = cache.misses = 0


def _trace_context(trace: str | Path | None, device: torch.device) -> contextlib.AbstractContextManager:
    if not trace:
        return contextlib.nullcontext()
    acts = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    return torch.profiler.profile(activities=acts, record_shapes=False)


def _summary(step_s: list[float], clock: Clock, steps: int) -> dict[str, Any]:
    total = sum(clock.seconds.values())
    components = {
        name: {"ms": 1e3 * s / steps, "pct": 100.0 * s / total if total else 0.0} for name, s in clock.seconds.items()
    }
    mean_s = statistics.fmean(step_s)
    return {
        "components": components,
        "step_ms": 1e3 * mean_s,
        "step_ms_median": 1e3 * statistics.median(step_s),
        "components_sum_ms": 1e3 * total / steps,
        "episodes_per_s": 1.0 / mean_s,
    }


def profile_step(setup_or_cfg: Any, *, steps: int = 5, warmup: int = 2, trace: str | Path | None = None) -> dict:
    """Time ``warmup`` + ``steps`` full training steps of a ``TrainingSetup`` (or a config, built here).

    Returns:
        ``{"components": {name: {"ms", "pct"}}, "step_ms", "episodes_per_s", "cache": {"frames", "support"},
        "device", "steps", "warmup", "losses", "trace"}`` (ms per step, means over the measured steps).
    """
    assert steps >= 1 and warmup >= 0, f"need steps >= 1 and warmup >= 0, got {steps}, {warmup}"
    setup = build_setup(setup_or_cfg) if isinstance(setup_or_cfg, RefDetConfig) else setup_or_cfg
    memory.apply(setup.cfg.speed.keep_memory)  # process-wide: the setup profiled now decides
    device = setup.trainer.device
    setup.model.train()
    batches = endless(setup.trainer.loader)
    for _ in range(warmup):
        timed_step(setup, batches, Clock(device))
    _reset_stats(setup)
    clock, step_s, losses = Clock(device), [], []
    with _trace_context(trace, device) as prof:
        for _ in range(steps):
            start = time.perf_counter()
            losses.append(float(timed_step(setup, batches, clock)))
            step_s.append(time.perf_counter() - start)
    if prof is not None:
        Path(trace).parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(trace))
    batches.close()  # shuts DataLoader workers down now, not at garbage collection
    report = _summary(step_s, clock, steps)
    report.update(
        cache=cache_stats(setup),
        device=str(device),
        steps=steps,
        warmup=warmup,
        losses=losses,
        trace=str(trace) if trace else None,
        threads=torch.get_num_threads(),
    )
    return report


def is_trace(path: Path) -> bool:
    """A Chrome trace as ``export_chrome_trace`` writes it (a JSON object with ``traceEvents``)."""
    try:
        return "traceEvents" in json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError):
        return False


def profile_from_params(
    params: str | Path, *, steps: int = 5, warmup: int = 2, trace: str | Path | None = None
) -> dict[str, Any]:
    """``refdet profile -p PARAMS.yaml``: profile the training step of the config in ``params``.

    ``trace`` must be a new file or an older trace (never a file of something else)."""
    cfg = params_file_config(params)
    if trace:
        check_file_destination(trace, what="profiler trace", ours=is_trace)
    report = profile_step(cfg, steps=steps, warmup=warmup, trace=trace)
    report["params"] = str(params)
    return report


def profile_entries(
    names: list[str], base: RefDetConfig, *, steps: int, warmup: int, prefills: Prefills | None = None
) -> dict[str, dict]:
    """Profile each bench entry (``seed``, ``fast``, ``seed+opt``) at the sizes of ``base``; ``prefills``:
    earlier support-cache prefills to reuse."""
    out = {}
    for name in names:
        setup = build_setup(entry_config(name, base))
        prefill_support_cache(setup, prefills)  # as a training run does once; not part of the step
        out[name] = profile_step(setup, steps=steps, warmup=warmup)
    return out


def breakdown_table(reports: dict[str, dict]) -> pd.DataFrame:
    """Rows = entries, columns = component ms, then step_ms and episodes_per_s."""
    rows = {
        name: {**{c: r["components"][c]["ms"] for c in COMPONENTS}, "step_ms": r["step_ms"],
               "episodes_per_s": r["episodes_per_s"]}
        for name, r in reports.items()
    }  # fmt: skip
    return pd.DataFrame.from_dict(rows, orient="index")


def scaling_table(
    base: RefDetConfig,
    *,
    preset: str,
    grid: dict[str, list[int]],
    steps: int,
    warmup: int,
    prefills: Prefills | None = None,
) -> pd.DataFrame:
    """Component ms of ``preset`` as one episode dimension grows (others at ``base``); rows ``key=value``."""
    prefills = prefills if prefills is not None else Prefills()  # the points share encoder and references
    rows = {}
    for key, values in grid.items():
        for value in values:
            # img_size scales the whole frames; the preset decides the training window (seed: none)
            extra = {**store_dir_for(base, value), "train_window": 0} if key == "img_size" else {}
            cfg = config_from_dict({key: value, **extra}, source=f"scaling {key}", base=base)
            report = profile_entries([preset], cfg, steps=steps, warmup=warmup, prefills=prefills)[preset]
            rows[f"{key}={value}"] = {c: report["components"][c]["ms"] for c in COMPONENTS}
    return pd.DataFrame.from_dict(rows, orient="index")
