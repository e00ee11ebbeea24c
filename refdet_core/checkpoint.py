"""Reading a checkpoint folder: ``model.safetensors`` + ``config.yaml`` + ``meta.json`` (+ ``state.pt``).

``model.safetensors`` holds the weights; ``config.yaml`` the resolved config; ``meta.json`` what inference
needs besides (base classes, epoch, metrics); ``state.pt`` the optimizer, scheduler, scaler and RNG states
for an exact resume. Training writes the folder (``train/checkpoint.py: save_checkpoint``); inference, export
and resuming read it through the functions here.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from refdet_core.config import SECTIONS, DataConfig, RefDetConfig, config_from_dict, read_yaml
from refdet_core.destination import old_path
from refdet_core.folders import CONFIG, META, STATE, WEIGHTS, is_complete
from refdet_core.models.refdet import RefDet

STATE_KEYS = ("optimizer", "scheduler", "scaler", "rng", "trainer", "history")


class CheckpointError(ValueError):
    """A checkpoint folder that is missing, incomplete or does not fit the model."""


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model under DDP / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


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


def _upgrade_window(data: dict[str, Any]) -> None:
    """Earlier ``img_size`` was the training query, ``frame_size`` (0 = img_size) the whole frame and
    ``crop_native`` cut the queries from those frames: now ``img_size`` is the whole frame, ``train_window`` the
    training crop."""
    if "frame_size" not in data and "crop_native" not in data:
        return
    query = data.get("img_size", DataConfig.img_size)
    frame, crop = data.pop("frame_size", 0), data.pop("crop_native", False)
    data["img_size"] = frame or query
    data["train_window"] = query if crop and frame else 0


def upgrade_saved_config(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config (nested as ``RefDetConfig.save`` writes it, or flat) with the keys of earlier versions
    translated (``config.REPLACED``): ``frame_size`` and ``crop_native`` become ``img_size`` and
    ``train_window``, ``seed`` becomes ``random_seed``. The same run trains on the same crops at the same sizes."""
    out = {k: dict(v) if k in SECTIONS and isinstance(v, dict) else v for k, v in saved.items()}
    data = out["data"] if isinstance(out.get("data"), dict) else out
    train = out["train"] if isinstance(out.get("train"), dict) else out
    _upgrade_window(data)
    if "seed" in train:
        train["random_seed"] = train.pop("seed")
    return out


def read_saved_config(path: str | Path) -> RefDetConfig:
    """The resolved config a checkpoint (or run folder) saved, written by this or an earlier version."""
    return config_from_dict(upgrade_saved_config(read_yaml(path)), source=str(path))


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], RefDetConfig, dict[str, Any]]:
    """Weights, resolved config and meta of a checkpoint folder (or of its ``model.safetensors``)."""
    path = _check_folder(Path(path))
    try:
        weights = load_file(str(path / WEIGHTS))
    except Exception as err:  # safetensors raises several types for a corrupt file
        raise CheckpointError(f"{path / WEIGHTS}: unreadable weights ({err})") from None
    cfg = read_saved_config(path / CONFIG)
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
    weights, cfg, meta = read_checkpoint(path)
    model_cfg = replace(cfg.model, encoder=meta.get("encoder_variant") or cfg.model.encoder)
    n_base = cfg.model.num_base_classes or len(meta.get("base_classes", []))
    model = RefDet(model_cfg, num_base_classes=n_base, pretrained=False)
    load_weights(model, weights, source=str(path))
    return model, cfg, meta
