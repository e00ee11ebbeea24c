"""Run the numbered notebooks headless with papermill, one params file per notebook and profile.

``run_notebooks(["05_train_stage2"], profile="demo", out_dir="outputs/demo")`` executes
``notebooks/05_train_stage2.ipynb`` with ``params/demo/05_train_stage2.yaml`` (plus ``run_dir``) and
leaves ``outputs/demo/05_train_stage2/{05_train_stage2.ipynb, params.yaml, metrics.json, *.png}``; the
notebook writes its own metrics and figures, the runner the executed notebook and the params it used.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import yaml

from refdet_core.config import read_yaml, unknown_key_error
from refdet_core.io import atomic_write_text

logger = logging.getLogger(__name__)

NOTEBOOKS = ("01_data_cache", "02_model_params", "03_profile", "04_optimize", "05_train_stage2", "06_validate")
PROFILES = ("demo", "smoke", "full")


class NotebookError(RuntimeError):
    """A notebook failed or could not be started; the message names the notebook (and cell)."""


def project_root() -> Path:
    """The folder holding ``notebooks/`` and ``params/`` (the repository root)."""
    here = Path.cwd()
    for folder in (here, *here.parents):
        if (folder / "notebooks").is_dir() and (folder / "params").is_dir():
            return folder
    return Path(__file__).resolve().parents[1]


def _resolve(names: list[str] | None, root: Path) -> list[str]:
    available = sorted(p.stem for p in (root / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not names:
        return available
    out = []
    for name in names:
        stem = Path(name).stem
        matches = [a for a in available if a == stem or a.startswith(stem + "_") or a.split("_", 1)[0] == stem]
        if len(matches) != 1:
            raise NotebookError(f"unknown notebook '{name}'; available: {', '.join(available)}")
        out.append(matches[0])
    return out


def notebook_params(notebook: str, profile: str, run_dir: Path, root: Path) -> dict[str, Any]:
    """The params of one notebook for one profile, checked against the notebook's parameters cell."""
    import papermill

    path = root / "params" / profile / f"{notebook}.yaml"
    params = read_yaml(path)
    declared = papermill.inspect_notebook(str(root / "notebooks" / f"{notebook}.ipynb"))
    for key in params:
        if key not in declared:
            error = unknown_key_error(key, source=str(path))
            raise NotebookError(f"{error} (parameters of {notebook}: {', '.join(declared)})")
    params["run_dir"] = str(run_dir)
    return params


def run_notebook(notebook: str, *, profile: str, run_dir: Path, root: Path) -> dict[str, Any]:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    params = notebook_params(notebook, profile, run_dir, root)
    out = run_dir / notebook
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "params.yaml", yaml.safe_dump(params, sort_keys=False))
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(root / "notebooks" / f"{notebook}.ipynb"),
            str(out / f"{notebook}.ipynb"),
            parameters=params,
            kernel_name="python3",
            cwd=str(root),
            progress_bar=False,
            log_output=False,
        )
    except PapermillExecutionError as err:
        raise NotebookError(
            f"{notebook} failed in cell {err.exec_count} ({err.ename}: {str(err.evalue).splitlines()[0][:300]}); "
            f"executed notebook: {out / f'{notebook}.ipynb'}"
        ) from None
    return {"notebook": notebook, "seconds": time.perf_counter() - start, "out_dir": str(out)}


def run_notebooks(
    names: list[str] | None = None, *, profile: str = "demo", out_dir: str | Path | None = None
) -> list[dict[str, Any]]:
    """Execute notebooks in order; the first failure stops the run with a NotebookError."""
    if profile not in PROFILES:
        raise NotebookError(f"unknown profile '{profile}'; choose one of {', '.join(PROFILES)}")
    root = project_root()
    run_dir = Path(out_dir) if out_dir else root / "outputs" / profile
    run_dir = run_dir.resolve()
    # tqdm reads TQDM_* defaults from the environment: a slow refresh keeps papermill output readable
    os.environ.setdefault("TQDM_MININTERVAL", "15")
    results = []
    for notebook in _resolve(names, root):
        logger.info("running %s (%s profile) -> %s", notebook, profile, run_dir / notebook)
        print(f"{notebook}: running ({profile} profile)", flush=True)
        results.append(run_notebook(notebook, profile=profile, run_dir=run_dir, root=root))
    return results
