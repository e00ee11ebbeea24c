"""Side-by-side training throughput of presets and options, in one process, interleaved and repeated.

Every entry (a preset, or ``seed+<option>``) gets its training setup built once. After an untimed warm-up
(compilation, support-cache prefill, worker start), rounds run round-robin: entry A ``episodes`` training
steps, entry B, ..., ``repeats`` times; each round starts a fresh loader iterator with one untimed step, so a
worker's prefetch never runs while another entry is timed. Reported: median episodes/s per entry, the ratio to
``seed``, and the projected epoch time of the original's workload (2,075 episodes of 2-way x 4-query = 16,595 query
frames) at the sizes measured. The accuracy guard checks exact/close options (``guard.py``); lossy ones carry
the accuracy change notebook 04 measured, read from the ``metrics.json`` files the caller names.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from refdet_core import memory
from refdet_core.config import RefDetConfig, config_from_params, params_file_config
from refdet_core.speed.guard import run_guard
from refdet_core.speed.options import OPTIONS, PRESETS, OptionError, cpu_cores, entry_config, fast_options
from refdet_core.speed.setup import Prefills, build_setup, endless, prefill_support_cache

logger = logging.getLogger(__name__)

ORIGINAL_QUERY_FRAMES = 16_595  # query frames of the original's epoch
ORIGINAL_EPISODES = 2_075  # ceil(16,595 / (2-way x 4-query))
DEMO_BASE = {"data_root": "data/demo", "img_size": 320, "store_bg_share": 0.5, "cache_mb": 512, "n_way": 2,
             "n_query": 4, "device": "auto"}  # fmt: skip


def base_config(params: str | Path | None) -> RefDetConfig:
    """Data root and sizes: a params YAML (config keys and notebook parameters), else ``DEMO_BASE``."""
    return config_from_params(DEMO_BASE, source="demo") if params is None else params_file_config(params)


def entry_names(presets: list[str], options: list[str]) -> list[str]:
    for name in presets:
        if name.split("+")[0] not in PRESETS:
            raise OptionError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    for name in options:
        if name not in OPTIONS:
            raise OptionError(f"unknown option {name!r}; choose from {', '.join(OPTIONS)}")
    names = list(dict.fromkeys([*presets, *(f"seed+{o}" for o in options)]))
    assert names, "nothing to bench: give at least one preset or option"
    return names


def _sync(setup: Any) -> None:
    if setup.trainer.device.type == "cuda":
        torch.cuda.synchronize(setup.trainer.device)


def run_round(setup: Any, episodes: int, epoch: int) -> float:
    """A fresh loader iterator, one untimed step, then ``episodes`` timed steps; returns seconds."""
    memory.apply(setup.cfg.speed.keep_memory)  # process-wide, so set per entry
    setup.model.train()
    batches = endless(setup.trainer.loader, start_epoch=epoch)
    try:
        setup.trainer.train_step(next(batches), epoch)
        _sync(setup)
        start = time.perf_counter()
        for _ in range(episodes):
            setup.trainer.train_step(next(batches), epoch)
        _sync(setup)
        return time.perf_counter() - start
    finally:
        batches.close()


def _param_counts(model: torch.nn.Module) -> dict[str, int]:
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def _build(names: list[str], base: RefDetConfig, warmup: int, prefills: Prefills) -> dict[str, dict[str, Any]]:
    built = {}
    # bars stay when done (no leave=False): a closed notebook bar shows "Loading widget..." after a page reload
    for name in tqdm(names, desc="build + warm-up"):
        cfg = entry_config(name, base)
        setup = build_setup(cfg)
        prefill = prefill_support_cache(setup, prefills)
        start = time.perf_counter()
        if warmup:
            run_round(setup, warmup - 1, epoch=0)
        built[name] = {"setup": setup, "prefill_s": prefill, "warmup_s": time.perf_counter() - start, "times": []}
    return built


def _entry_report(name: str, entry: dict[str, Any], episodes: int) -> dict[str, Any]:
    setup = entry["setup"]
    eps = [episodes / t for t in entry["times"]]
    median = statistics.median(eps)
    cfg = setup.cfg
    cache = setup.support_cache
    return {
        "episodes_per_s": median,
        "epoch_s_projected": ORIGINAL_EPISODES / median,
        "step_ms": 1e3 / median,
        "episodes_per_s_repeats": eps,
        "prefill_s": entry["prefill_s"],
        "warmup_s": entry["warmup_s"],
        **_param_counts(setup.model),
        "settings": {
            k: cfg.flat()[k]
            for k in (
                "loader",
                "img_size",
                "train_window",
                "support_size",
                "support_cache",
                "trainable_blocks",
                "precision",
                "num_workers",
                "channels_last",
                "compile",
                "fused_adamw",
            )
        },  # fmt: skip
        "support_cache": cache.stats() if cache is not None else None,
    }


def accuracy_from(names: list[str], metrics_files: Sequence[str | Path]) -> dict[str, Any]:
    """Accuracy change of lossy options as notebook 04 measured it: the ``accuracy`` entries of the first of
    ``metrics_files`` (04's ``metrics.json`` files) that has each option; files that do not exist are skipped."""
    out: dict[str, Any] = {}
    for path in map(Path, metrics_files):
        if path.is_file():
            acc = json.loads(path.read_text()).get("accuracy", {})
            for name in names:
                if name in acc and name not in out:
                    out[name] = {**acc[name], "source": str(path)}
    for name in names:
        out.setdefault(name, {"source": None, "note": "not measured yet: run notebook 04 (demo profile)"})
    return out


def run_bench(
    presets: list[str] | tuple[str, ...] = ("seed", "fast"),
    options: list[str] | tuple[str, ...] = (),
    episodes: int = 4,
    repeats: int = 3,
    params: str | Path | None = None,
    *,
    warmup: int = 1,
    guard: bool = True,
    accuracy_files: Sequence[str | Path] = (),
    prefills: Prefills | None = None,
) -> dict[str, Any]:
    """Bench presets and ``seed+<option>`` entries side by side; see the module docstring.

    ``params``: the params YAML of the data root and sizes (default ``DEMO_BASE``); ``accuracy_files``: 04's
    ``metrics.json`` files that the accuracy change of lossy entries is read from (first match wins);
    ``prefills``: earlier support-cache prefills to reuse (a notebook passes one across its benches).

    Returns:
        ``{"presets": {name: {"episodes_per_s", "epoch_s_projected", ...}}, "speedup": {name: ratio_to_seed},
        "projection": {...}, "guard": {...}, "accuracy": {...}, "machine": {...}}``.
    """
    assert episodes >= 1 and repeats >= 1, f"need episodes >= 1 and repeats >= 1, got {episodes}, {repeats}"
    names = entry_names(list(presets), list(options))
    base = base_config(params)
    load_before = os.getloadavg()
    built = _build(names, base, warmup, prefills if prefills is not None else Prefills())
    for r in tqdm(range(repeats), desc="bench rounds"):
        for entry in built.values():
            entry["times"].append(run_round(entry["setup"], episodes, epoch=r + 1))
    report = {name: _entry_report(name, entry, episodes) for name, entry in built.items()}
    device = built[names[0]]["setup"].trainer.device
    involved = _involved_options(names, device)
    result = {
        "presets": report,
        "speedup": {n: r["episodes_per_s"] / report["seed"]["episodes_per_s"] for n, r in report.items()}
        if "seed" in report
        else {},
        "projection": _projection(base),
        "guard": run_guard([o for o in involved if OPTIONS[o].exactness != "lossy"], base) if guard else {},
        "accuracy": accuracy_from([o for o in involved if OPTIONS[o].exactness == "lossy"], accuracy_files),
        "fast_options": fast_options(device),
        "machine": machine_info(device, load_before),
        "episodes": episodes,
        "repeats": repeats,
        "warmup": warmup,
    }
    for entry in built.values():
        entry["setup"].trainer.loader = None  # drop persistent workers now
    return result


def _involved_options(names: list[str], device: torch.device) -> list[str]:
    found: list[str] = []
    for name in names:
        head, *extra = name.split("+")
        found += (fast_options(device) if head == "fast" else []) + extra
    return list(dict.fromkeys(found))


def _projection(base: RefDetConfig) -> dict[str, Any]:
    d = base.data
    return {
        "episodes": ORIGINAL_EPISODES,
        "query_frames": ORIGINAL_QUERY_FRAMES,
        "measured_at": {"img_size": d.img_size, "n_way": d.n_way, "n_query": d.n_query},
        "note": (
            f"epoch_s_projected = {ORIGINAL_EPISODES} episodes / measured episodes/s, measured with {d.n_way}-way x "
            f"{d.n_query}-query episodes of {d.img_size} px frames (whole for seed; entries with crop_window "
            "train half-size windows of them; support size per preset); the original's epoch ran at 640 px, so "
            "this projects the original's episode count at the measured sizes only"
        ),
    }


def machine_info(device: torch.device, load_before: tuple[float, float, float]) -> dict[str, Any]:
    cpu = "unknown"
    if Path("/proc/cpuinfo").is_file():
        lines = [ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")]
        cpu = lines[0].split(":", 1)[1].strip() if lines else cpu
    return {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": cpu,
        "cores": cpu_cores(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_before": list(load_before),
        "load_after": list(os.getloadavg()),
    }
