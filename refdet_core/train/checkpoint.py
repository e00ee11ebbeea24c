"""Checkpoints as a folder: ``model.safetensors`` + ``config.yaml`` + ``meta.json`` + ``state.pt``.

``model.safetensors`` holds the weights; ``config.yaml`` the resolved config; ``meta.json`` what inference
needs besides (base classes, epoch, metrics); ``state.pt`` the optimizer, scheduler, scaler and RNG states
for an exact resume. The folder is written under a temporary name and renamed into place, so an
interrupted run always leaves the last complete checkpoint intact.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from refdet_core.config import RefDetConfig, atomic_write_json, load_config
from refdet_core.destination import file_mode, make_temp_dir, old_path, replace_dir
from refdet_core.train.folders import CONFIG, META, STATE, WEIGHTS, is_complete, prepare_checkpoint_dir

STATE_KEYS = ("optimizer", "scheduler", "scaler", "rng", "trainer", "history")


class CheckpointError(ValueError):
    """A checkpoint folder that is missing, incomplete or does not fit the model."""


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


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model under DDP / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


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


def _check_folder(path: Path) -> Path:
    if path.is_file() and path.name == WEIGHTS:
        path = path.parent
    if not path.is_dir():
        old = old_path(path)
        if is_complete(old):  # a crash between the two renames of save_checkpoint
            return old
        raise CheckpointError(f"{path}: no such checkpoint folder")
    for name in (WEIGHTS, CONFIG, META):
        if not (path / name).is_file():
            raise CheckpointError(f"{path}: incomplete checkpoint, {name} is missing")
    return path


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads((path / META).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path / META}: not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path / META}: expected a JSON object, got {type(meta).__name__}")
    return meta


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], RefDetConfig, dict[str, Any]]:
    """Weights, resolved config and meta of a checkpoint folder (or of its ``model.safetensors``)."""
    path = _check_folder(Path(path))
    try:
        weights = load_file(str(path / WEIGHTS))
    except Exception as err:  # safetensors raises several types for a corrupt file
        raise CheckpointError(f"{path / WEIGHTS}: unreadable weights ({err})") from None
    cfg = load_config(path / CONFIG)
    return weights, cfg, _read_meta(path)


def read_training_state(path: str | Path) -> dict[str, Any]:
    path = _check_folder(Path(path))
    if not (path / STATE).is_file():
        raise CheckpointError(f"{path}: no {STATE}, cannot resume from a weights-only checkpoint")
    try:
        state = torch.load(path / STATE, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError, AttributeError, ImportError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path / STATE}: unreadable training state, truncated or corrupt ({first})") from None
    missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path / STATE}: not a training state (missing {missing[0]!r})")
    return state


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor], *, source: str = "checkpoint") -> None:
    """Load ``weights`` into ``model``; ``CheckpointError`` when they come from a model of another shape."""
    try:
        missing, unexpected = unwrap(model).load_state_dict(weights, strict=False)
    except RuntimeError as err:  # size mismatches: a checkpoint of another config
        detail = next((ln.strip() for ln in str(err).splitlines() if "size mismatch" in ln), str(err).splitlines()[0])
        raise CheckpointError(f"{source}: weights do not fit the model, another config? ({detail})") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not fit the model (missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})"
        )


def model_from_checkpoint(path: str | Path) -> tuple[Any, RefDetConfig, dict[str, Any]]:
    """(RefDet with the checkpoint's weights, config, meta) of a checkpoint folder.

    The model is built as the encoder variant it trained as (``meta["encoder_variant"]``: a file with q/v biases
    makes the ``_qkvb`` variant) without reading ``encoder_weights`` / ``backbone_weights`` again: the checkpoint
    holds every weight, and those files need not exist where the checkpoint is used.
    """
    from dataclasses import replace

    from refdet_core.models.refdet import RefDet

    weights, cfg, meta = read_checkpoint(path)
    model_cfg = replace(cfg.model, encoder=meta.get("encoder_variant") or cfg.model.encoder)
    n_base = cfg.model.num_base_classes or len(meta.get("base_classes", []))
    model = RefDet(model_cfg, num_base_classes=n_base, pretrained=False)
    load_weights(model, weights, source=str(path))
    return model, cfg, meta
