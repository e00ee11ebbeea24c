"""Glue shared by the numbered notebooks: their parameters, their run folder, their saved results.

A notebook's second cell is ``run = start_run("05_train_stage2", globals())``: it collects the values of
the parameters cell (the names papermill sees), builds the typed config from the keys that are config
fields, and creates ``<run_dir>/<notebook>/`` holding the resolved params and config. Results go
through ``run.save_metrics`` / ``run.save_figure`` / ``run.save_table`` so tests can read them.
"""

from __future__ import annotations

import ast
import json
import logging
import platform
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import yaml

from refdet_core.config import (
    FLAT_KEYS,
    ConfigError,
    RefDetConfig,
    atomic_write_json,
    atomic_write_text,
    config_from_dict,
    config_items,
    read_yaml,
    require_data_root,
)
from refdet_core.runner import project_root

logger = logging.getLogger(__name__)


def versions(
    packages: tuple[str, ...] = (
        "torch",
        "torchvision",
        "timm",
        "opencv-python-headless",
        "papermill",
        "ipywidgets",
        "refdet_core",
    ),
) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def declared_params(notebook: str) -> list[str]:
    """Names in the notebook's ``parameters`` cell, as papermill reads them."""
    import papermill

    path = project_root() / "notebooks" / f"{notebook}.ipynb"
    return list(papermill.inspect_notebook(str(path)))


def notebook_only_keys(notebooks: tuple[str, ...] | None = None) -> set[str]:
    """Parameters of the numbered notebooks (default: all) that are no config key (``run_dir``, ``steps``, ...);
    a params file may hold these besides config keys. Empty where the notebooks are not installed."""
    from refdet_core.runner import NOTEBOOKS

    keys: set[str] = set()
    for name in notebooks or NOTEBOOKS:
        path = project_root() / "notebooks" / f"{name}.ipynb"
        if path.is_file():
            keys.update(_parameters_cell_names(path))
    return keys - FLAT_KEYS


def _parameters_cell_names(path: Path) -> list[str]:
    """Names assigned in the cell tagged ``parameters`` (what papermill injects over), read without papermill."""
    cells = json.loads(path.read_text())["cells"]
    cell = next((c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if cell is None:
        return []
    source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
    names = []
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        names += [t.id for t in targets if isinstance(t, ast.Name)]
    return names


def params_file_config(path: str | Path, *, notebooks: tuple[str, ...] | None = None) -> RefDetConfig:
    """The config of a params YAML, strictly: ``data_root`` must be set, parameters of ``notebooks`` (default:
    all) are skipped, any other key that is no config key is an error naming it. Imports no model code, so
    a bad file fails in well under a second."""
    data = read_yaml(path)
    require_data_root(data, str(path))
    items = config_items(data)
    extra = [k for k in data if k not in items]
    unknown = [k for k in extra if k not in notebook_only_keys(notebooks)] if extra else []
    if unknown:
        raise ConfigError(f"{path}: unknown key '{unknown[0]}'")
    return config_from_dict(items, source=str(path))


@dataclass
class NotebookRun:
    name: str
    out: Path
    params: dict[str, Any]
    cfg: RefDetConfig
    metrics: dict[str, Any] = field(default_factory=dict)

    def path(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)

    def save_metrics(self, **metrics: Any) -> Path:
        """Merge ``metrics`` into ``metrics.json`` (written atomically)."""
        self.metrics.update(metrics)
        path = self.out / "metrics.json"
        atomic_write_json(path, json.loads(json.dumps(self.metrics, default=_jsonable)))
        return path

    def save_figure(self, fig: Any, name: str) -> Path:
        path = self.out / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        return path

    def save_table(self, df: Any, name: str) -> Path:
        path = self.out / f"{name}.csv"
        atomic_write_text(path, df.to_csv(index=True))
        return path

    def previous(self, notebook: str, *parts: str) -> Path:
        """A file written by an earlier notebook of the same run (e.g. 05's checkpoint for 06)."""
        return Path(self.params["run_dir"]) / notebook / Path(*parts)


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def start_run(notebook: str, namespace: dict[str, Any]) -> NotebookRun:
    """Collect the notebook's parameters from ``namespace``, build the config, create the run folder."""
    names = declared_params(notebook)
    missing = [n for n in names if n not in namespace]
    assert not missing, f"parameters cell of {notebook} did not define {missing}"
    params = {n: namespace[n] for n in names}
    cfg = config_from_dict({k: v for k, v in params.items() if k in FLAT_KEYS}, source=f"parameters of {notebook}")
    out = Path(params.get("run_dir") or "outputs/interactive") / notebook
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "params.yaml", yaml.safe_dump(params, sort_keys=False))
    cfg.save(out / "config.yaml")
    logger.info("%s: run folder %s", notebook, out)
    return NotebookRun(name=notebook, out=out, params=params, cfg=cfg)
