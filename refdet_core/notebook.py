"""Glue shared by the numbered notebooks: their parameters, their run folder, their saved results.

A notebook's second cell is ``run = start_run("05_train_stage2", globals())``: it collects the values of
the parameters cell (the names papermill sees), builds the typed config from the keys that are config
fields, and creates ``<run_dir>/<notebook>/`` holding the resolved params and config. Results go
through ``run.save_metrics`` / ``run.save_figure`` / ``run.save_table`` so tests can read them.

Relative paths in the parameters (``data_root``, ``run_dir``, ...) mean the project root, whatever the kernel's
working directory (JupyterLab starts kernels in ``notebooks/``, papermill and ``refdet run`` at the root);
``start_run`` resolves them, writes the resolved values back into the notebook's namespace, and checks the
inputs before it creates anything. Switches left at ``None`` (``interactive``, ``live_plot``) mean "on in a
live kernel, off under papermill".
"""

from __future__ import annotations

import json
import logging
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import yaml

from refdet_core.config import ConfigError, RefDetConfig, config_from_params, read_yaml
from refdet_core.io import atomic_write_json, atomic_write_text
from refdet_core.runner import project_root

logger = logging.getLogger(__name__)

# parameters naming a file or folder; relative values are relative to the project root
PATH_PARAMS = ("run_dir", "data_root", "store_dir", "fast_params", "encoder_weights", "backbone_weights")
FILE_PARAMS = ("fast_params", "encoder_weights", "backbone_weights")
# switches whose ``None`` means "on in a live kernel"
AUTO_SWITCHES = ("interactive", "live_plot")


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


def resolve_path(value: str, root: Path) -> str:
    """``value`` relative to ``root`` (absolute and empty values unchanged, ``~`` expanded)."""
    if not value:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else root / path)


def live_kernel() -> bool:
    """True in a kernel driven by a person's front end (JupyterLab, Notebook, VS Code), False under papermill.

    Front ends that a person uses answer ``input()``, so their execute requests allow stdin; papermill's
    (nbclient's) never do. Outside any kernel (a script, pytest) this is False.
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    kernel = getattr(get_ipython(), "kernel", None)
    if kernel is None:
        return False
    parent = kernel.get_parent() if hasattr(kernel, "get_parent") else {}
    return bool((parent or {}).get("content", {}).get("allow_stdin", False))


class _CellOutput(logging.StreamHandler):
    """Writes to the current ``sys.stdout``: in a notebook, plain text under the running cell (stderr is red)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    @property
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


def show_logs_in_cells(level: int = logging.WARNING) -> None:
    """In a kernel, show the package's log records at ``level`` and above as plain cell output (not red stderr);
    ``logs.warn_once`` keeps warnings that every model built repeats to one line per process."""
    log = logging.getLogger("refdet_core")
    if "ipykernel" not in sys.modules or any(isinstance(h, _CellOutput) for h in log.handlers):
        return
    handler = _CellOutput()
    handler.setLevel(level)
    log.addHandler(handler)


def _resolved_params(notebook: str, namespace: dict[str, Any]) -> dict[str, Any]:
    names = declared_params(notebook)
    missing = [n for n in names if n not in namespace]
    assert not missing, f"parameters cell of {notebook} did not define {missing}"
    params = {n: namespace[n] for n in names}
    root = project_root()
    for key in PATH_PARAMS:
        if isinstance(params.get(key), str):
            params[key] = resolve_path(params[key], root)
    if "run_dir" in params:
        params["run_dir"] = params["run_dir"] or str(root / "outputs" / "interactive")
    for key in AUTO_SWITCHES:
        if key in params and params[key] is None:
            params[key] = live_kernel()
    return params


def check_inputs(notebook: str, params: dict[str, Any], needs: Sequence[tuple[str, ...]] = ()) -> None:
    """The files and folders the notebook reads exist; raises ConfigError naming the key and the path."""
    where = f"parameters of {notebook}"
    root = params.get("data_root")
    if root and not params.get("demo_if_missing") and not Path(root, "samples").is_dir():
        raise ConfigError(
            f"{where}: key 'data_root': {root} has no samples/ folder "
            "(run 01_data_cache first, or point data_root at a folder in the challenge layout)"
        )
    for key in FILE_PARAMS:
        if params.get(key) and not Path(params[key]).is_file():
            raise ConfigError(f"{where}: key '{key}': no such file {params[key]}")
    for parts in needs:
        path = Path(params["run_dir"], *parts)
        if not path.exists():
            raise ConfigError(f"{where}: {path} is missing (run {parts[0]} first with the same run_dir)")


def start_run(notebook: str, namespace: dict[str, Any], *, needs: Sequence[tuple[str, ...]] = ()) -> NotebookRun:
    """Collect the notebook's parameters from ``namespace``, build the config, create the run folder.

    Path parameters are resolved against the project root and auto switches decided, and both are written
    back into ``namespace``; ``needs`` are paths under ``run_dir`` an earlier notebook wrote (e.g.
    ``("05_train_stage2", "checkpoint")``). Nothing is created before these inputs are checked. A
    ``fast_params`` file (04's snippet) goes on top of the parameters; the run folder's ``params.yaml`` holds
    the parameters with its values, and ``config.yaml`` is the one resolved config they give.
    """
    show_logs_in_cells()
    params = _resolved_params(notebook, namespace)
    cfg = config_from_params(params, source=f"parameters of {notebook}", notebooks=(notebook,))
    check_inputs(notebook, params, needs)
    namespace.update(params)
    if params.get("fast_params"):
        snippet = read_yaml(params["fast_params"])
        cfg = config_from_params(snippet, source=params["fast_params"], notebooks=(), base=cfg)
        namespace.update({k: v for k, v in snippet.items() if k in params})
        params = {**params, **snippet}
    out = Path(params["run_dir"]) / notebook
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "params.yaml", yaml.safe_dump(params, sort_keys=False))
    cfg.save(out / "config.yaml")
    logger.info("%s: run folder %s", notebook, out)
    return NotebookRun(name=notebook, out=out, params=params, cfg=cfg)
