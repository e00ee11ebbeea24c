"""04's chosen set: bench it against ``seed``, draw it, and write it as the params snippet that 05 reads.

The snippet is ``<run_dir>/04_optimize/fast_params.yaml``: the config keys of ``seed`` plus the chosen options,
which 05's ``fast_params`` parameter points at. Headless runs choose with 04's ``options`` parameter, a person
with the checkbox panel; both go through ``bench_choice`` so the file always holds the last set benched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from refdet_core import viz
from refdet_core.io import atomic_write_text
from refdet_core.speed import options as registry
from refdet_core.speed.bench import run_bench
from refdet_core.speed.setup import Prefills

logger = logging.getLogger(__name__)

SNIPPET = "fast_params.yaml"


@dataclass
class Choice:
    names: list[str]
    bench: dict[str, Any]
    figure: Any
    snippet: dict[str, Any]
    path: Path

    @property
    def speedup(self) -> float:
        return float(self.bench["speedup"].get(chosen_entry(self.names), float("nan")))

    def summary(self) -> str:
        return f"{len(self.names)} options at {self.speedup:.2f}x seed; params snippet for 05: {self.path}"


def chosen_entry(names: list[str]) -> str:
    return "+".join(["seed", *names])


def save_choice(run: Any, names: list[str], bench: dict[str, Any], figure: Any = None) -> Choice:
    """Write ``names`` as the params snippet for 05 and record them in ``metrics.json``."""
    snippet = registry.params_snippet(run.cfg, names)
    path = run.path(SNIPPET)
    atomic_write_text(path, yaml.safe_dump(snippet, sort_keys=False))
    run.save_metrics(chosen=list(names), chosen_bench=bench, fast_params=snippet)
    logger.info("chosen set %s written to %s", names, path)
    return Choice(list(names), bench, figure, snippet, path)


def bench_choice(
    run: Any,
    names: list[str],
    *,
    params: str | Path,
    episodes: int,
    repeats: int,
    title: str = "",
    prefills: Prefills | None = None,
) -> Choice:
    """Bench ``seed`` against ``seed + names``, save the chart and the snippet; ``names`` must not be empty."""
    registry.check_names(names, registry.OPTIONS, "option")
    assert names, "tick at least one option"
    bench = run_bench(
        ["seed", chosen_entry(names)], [], episodes=episodes, repeats=repeats, params=params, prefills=prefills
    )
    speedups = {"seed": bench["speedup"]["seed"], "chosen": bench["speedup"][chosen_entry(names)]}
    figure = viz.chosen_vs_seed(speedups, names, title=title or "training episodes/s vs seed")
    run.save_figure(figure, "chosen_vs_seed")
    return save_choice(run, names, bench, figure)
