"""Writing a checkpoint folder (its format and reading: ``refdet_core/checkpoint.py``) and the RNG states a resume
restores. The folder is written under a temporary name and renamed into place, so an interrupted run always
leaves the last complete checkpoint intact.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from refdet_core.checkpoint import read_checkpoint, unwrap  # noqa: F401 (read_checkpoint: notebook 06 imports it here)
from refdet_core.config import RefDetConfig
from refdet_core.destination import file_mode, make_temp_dir, replace_dir
from refdet_core.folders import CONFIG, META, STATE, WEIGHTS, prepare_checkpoint_dir
from refdet_core.io import atomic_write_json


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    cfg: RefDetConfig,
    meta: dict[str, Any],
    state: dict[str, Any] | None = None,
    force: bool = False,
) -> Path:
    """Write the checkpoint folder atomically (replacing an older checkpoint at ``path``).

    Refuses (``DestinationError``) a ``path`` that holds anything but a checkpoint, unless ``force``.
    """
    path = Path(path)
    prepare_checkpoint_dir(path, force=force)
    tmp = make_temp_dir(path.parent, path.name)
    try:
        tensors = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
        save_file(tensors, str(tmp / WEIGHTS))
        cfg.save(tmp / CONFIG)
        atomic_write_json(tmp / META, meta)
        if state is not None:
            torch.save(state, tmp / STATE)
        for file in tmp.iterdir():  # safetensors writes 0600 whatever the umask
            os.chmod(file, file_mode())
        replace_dir(tmp, path)
    except BaseException:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
