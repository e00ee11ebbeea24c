"""The folders training writes: a run folder and its checkpoint folder, what each may hold, and the checks (and
the cleaning of what killed runs left) before anything is written. No torch here, so `refdet train` refuses a
wrong ``-o`` before the model code loads.
"""

from __future__ import annotations

import re
from pathlib import Path

from refdet_core.destination import check_destination, clean_leftovers, foreign_entries, recover_old

WEIGHTS = "model.safetensors"
STATE = "state.pt"
META = "meta.json"
CONFIG = "config.yaml"
FILES = (WEIGHTS, CONFIG, META, STATE)  # a checkpoint folder


def checkpoint_foreign(folder: Path) -> list[str]:
    """Entries of ``folder`` that are no checkpoint's (none where the weights and meta are: a checkpoint)."""
    if {WEIGHTS, META} <= {p.name for p in folder.iterdir()}:
        return []
    return foreign_entries(folder, lambda n: n in FILES)


def is_complete(folder: Path) -> bool:
    return folder.is_dir() and all((folder / n).is_file() for n in (WEIGHTS, CONFIG, META))


def prepare_checkpoint_dir(path: str | Path, *, force: bool = False) -> None:
    """Before a first save: clean what killed saves left beside ``path`` and refuse a foreign folder there."""
    path = Path(path)
    clean_leftovers(path.parent, [path.name], legacy_checkpoint=True)
    recover_old(path, is_complete)
    check_destination(path, what="checkpoint folder", foreign=checkpoint_foreign, force=force)


RUN_FILES = (
    "config.yaml",
    "history.csv",
    "train_result.json",
    "checkpoint",
    "params.yaml",
    "metrics.json",
    "train.log",
    "train_params.yaml",
)  # the last two: 05 training in a subprocess (train/launch.py)


# besides RUN_FILES: TensorBoard events, a crashed save's copy, and what notebook 05 adds to its run folder
_RUN_EXTRA = re.compile(r"events\.out\.tfevents\..*|\.checkpoint\.(old|[a-z0-9_]{8})|\d\d_\w+\.ipynb|[\w-]+\.(png|csv)")


def run_folder_foreign(folder: Path) -> list[str]:
    """Entries of ``folder`` that a training run does not write (a notebook's run folder included)."""
    return foreign_entries(folder, lambda n: n in RUN_FILES or bool(_RUN_EXTRA.fullmatch(n)))


def prepare_run_dir(out: Path, *, force: bool = False, clean: bool = True) -> None:
    """Before training: refuse a folder of other files (every rank, so that all of them stop) and, with
    ``clean`` (rank 0), remove what killed runs left in ``out``."""
    check_destination(out, what="run folder", foreign=run_folder_foreign, force=force)
    if not clean:
        check_destination(out / "checkpoint", what="checkpoint folder", foreign=checkpoint_foreign, force=force)
        return
    clean_leftovers(out, RUN_FILES)
    prepare_checkpoint_dir(out / "checkpoint", force=force)
