"""The optimization registry: every speed option as one named entry, and the ``seed`` and ``fast`` presets.

Each ``Option`` says what it changes (as config overrides applied with ``config_from_dict(..., base=cfg)``),
where it applies (``cpu``, ``gpu`` or ``both``) and whether it keeps the numbers: ``exact`` (same numbers),
``close`` (within ``tolerance``, relative, on the loss of a fixed episode before and after one step) or
``lossy`` (a different computation; its accuracy change is measured by a short training run in 04).

``seed`` is the original system's choices (seek reader, fp32, 512 px references, no caches, half the encoder
trains, whole frames); ``fast`` is resolved on the machine it runs on (``fast_options``). Both build the same
architecture with the same parameter count; they differ in how it is fed and computed, in which encoder blocks
train (``freeze_encoder``) and in what a training query shows (``crop_window``: a half-size window of the whole
frame); those lossy entries are in ``fast`` on measured accuracy (docs/speed.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from refdet_core.config import RefDetConfig, config_from_dict
from refdet_core.train.optim import bf16_supported

APPLIES = ("cpu", "gpu", "both")
EXACTNESS = ("exact", "close", "lossy")


class OptionError(ValueError):
    """An unknown option or preset name; the message lists the valid choices."""


Overrides = Mapping[str, Any] | Callable[[RefDetConfig], Mapping[str, Any]]


@dataclass(frozen=True)
class Option:
    """One optimization: ``apply(cfg)`` returns a new config with ``overrides`` on top of ``cfg``."""

    name: str
    description: str
    applies: str
    exactness: str
    overrides: Overrides = field(default_factory=dict)
    tolerance: float = 0.0  # relative loss difference allowed for "close" entries

    def __post_init__(self) -> None:
        assert self.applies in APPLIES, f"{self.name}: applies must be one of {APPLIES}, got {self.applies!r}"
        assert self.exactness in EXACTNESS, f"{self.name}: exactness must be one of {EXACTNESS}"

    def resolve(self, cfg: RefDetConfig) -> dict[str, Any]:
        """The overrides this option makes on ``cfg`` (callables see the config, e.g. its sizes)."""
        return dict(self.overrides(cfg) if callable(self.overrides) else self.overrides)

    def apply(self, cfg: RefDetConfig) -> RefDetConfig:
        return config_from_dict(self.resolve(cfg), source=f"option {self.name}", base=cfg)


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _workers(cfg: RefDetConfig) -> dict[str, Any]:
    # one worker per spare core (the main process computes); at least one so reads overlap the step
    return {
        "num_workers": max(1, min(4, cpu_cores() - 1)),
        "pin_memory": torch.cuda.is_available(),
        "persistent_workers": True,
    }


def store_dir_for(cfg: RefDetConfig, size: int) -> dict[str, Any]:
    """The ``store_dir`` override for whole frames of ``size`` px (``img_size``): none for the default folders
    (already named by size), a suffixed folder for a named store, so that another size never rebuilds (and
    evicts) it."""
    if cfg.data.store_dir and size != cfg.data.img_size:
        return {"store_dir": f"{cfg.data.store_dir.rstrip('/')}_{size}"}
    return {}


def _smaller_query(cfg: RefDetConfig) -> dict[str, Any]:
    """Training queries 0.8x: the window when training on windows (the frames stay), else the whole frames."""
    size = max(32, int(cfg.data.query_size * 0.8) // 32 * 32)  # 640 -> 512, 320 -> 256
    if cfg.data.train_window:
        return {"train_window": size}
    return {"img_size": size, **store_dir_for(cfg, size)}


def whole_frames(cfg: RefDetConfig) -> dict[str, Any]:
    """Overrides that make training queries whole frames at the config's ``img_size`` (no windows)."""
    return {"train_window": 0}


def _crop_window(cfg: RefDetConfig) -> dict[str, Any]:
    """Half-size training windows cut from the whole frames (``train_window``). ``img_size`` is restated, so that
    a params snippet (``params_snippet``) carries the frame size its windows were cut from."""
    frame = cfg.data.img_size
    return {"img_size": frame, "train_window": max(32, frame // 2 // 32 * 32)}  # 640 -> 320 windows, 320 -> 160


_ENTRIES = (
    Option("frame_store", "frames from the decoded frame store (memmap + shared LRU) instead of a new "
           "VideoCapture + seek per sample", "both", "exact", {"loader": "store"}),
    Option("support_cache", "frozen encoder prefix computed once per reference video and augmentation variant "
           "and reused (instead of re-encoding the references every episode); support augmentation draws from "
           "support_variants fixed variants", "both", "exact", {"support_cache": True}),
    Option("freeze_encoder", "all DINOv3 blocks frozen (the original trained the last 6); same parameters, the "
           "support cache then covers the whole encoder", "both", "lossy", {"trainable_blocks": 0}),
    Option("bf16", "bf16 autocast (GPU, or CPU with AMX / AVX512-BF16; slower than fp32 elsewhere)", "both",
           "close", {"precision": "bf16"}, tolerance=0.05),
    Option("channels_last", "channels_last memory format for the YOLO CNN", "both", "close",
           {"channels_last": True}, tolerance=1e-3),
    Option("compile", "torch.compile of backbone, fusion and head (static episode shapes)", "both", "close",
           {"compile": True}, tolerance=1e-3),
    Option("fused_adamw", "fused AdamW kernel: one kernel per step instead of per-tensor ops, and a non-finite "
           "step skipped on the device (no host read per step)", "both", "close", {"fused_adamw": True},
           tolerance=1e-4),
    Option("workers", "DataLoader workers sized to the cores, persistent, pinned memory on CUDA", "both",
           "exact", _workers),
    Option("keep_memory", "freed memory stays in the process heap (glibc mallopt: no per-block mmap, no trim), "
           "so steps stop re-faulting their activations page by page", "cpu", "exact", {"keep_memory": True}),
    Option("cache_sizes", "frame LRU 2 GiB instead of 512 MiB", "both", "exact", {"cache_mb": 2048}),
    Option("support_256", "references at 256 px instead of the original's 512 (4x fewer encoder tokens)", "both",
           "lossy", {"support_size": 256}),
    Option("small_encoder", "DINOv3 ViT-Tiny instead of ViT-S (different architecture and parameter count)",
           "both", "lossy", {"encoder": "vit_tiny_patch16_dinov3_qkvb"}),
    Option("int8_encoder", "INT8 dynamic quantization of the frozen encoder blocks", "cpu", "lossy",
           {"int8_encoder": True}),
    Option("cheaf", "CHEAF fusion instead of PSALM (different architecture)", "both", "lossy", {"fusion": "cheaf"}),
    Option("query_512", "training query resolution 0.8x (640 -> 512; at a 320 profile 256): the window when "
           "training on windows, else the whole frames", "both", "lossy",
           _smaller_query),
    Option("skip_p2", "no P2 (stride-4) level in fusion and head", "both", "lossy", {"use_p2": False}),
    Option("crop_window", "train on half-size windows cut from the whole letterboxed frames (train_window: "
           "objects keep the scale inference sees; 4x fewer query pixels, less background per step)", "both",
           "lossy", _crop_window),
    Option("loss_schedule", "dynamic loss schedule: contrastive weights halved after epoch 0", "both", "lossy",
           {"contrastive_decay_epoch": 0, "contrastive_decay": 0.5}),
    Option("wiou_v1", "WIoU v1 box loss instead of v3 (no focusing)", "both", "lossy", {"box_loss": "wiou_v1"}),
    Option("num_aug_1", "one augmented variant per frame per epoch instead of the original's 3", "both", "lossy",
           {"num_aug": 1}),
)  # fmt: skip

OPTIONS: dict[str, Option] = {o.name: o for o in _ENTRIES}

SEED_OVERRIDES: dict[str, Any] = {  # the original system's choices
    "loader": "seek",
    "support_size": 512,
    "support_cache": False,
    "precision": "fp32",
    "num_workers": 1,
    "persistent_workers": False,
    "channels_last": False,
    "compile": False,
    "fused_adamw": False,
    "num_aug": 3,
    "cache_mb": 512,
    "keep_memory": False,
}
# crop_window is lossy and in fast on the strength of a paired training run (docs/speed.md, crop_window): 320 px
# windows of 640 px frames scored the validation videos as whole 640 px frames did, at 3.4x the training speed
FAST_ALWAYS = ("frame_store", "support_cache", "freeze_encoder", "support_256", "crop_window", "workers",
               "cache_sizes")  # fmt: skip


def fast_options(device: torch.device | str | None = None) -> list[str]:
    """The options of the ``fast`` preset on ``device`` (default: CUDA when available, else CPU)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    names = list(FAST_ALWAYS)
    if bf16_supported(device):
        names.append("bf16")
    names.append("channels_last")  # oneDNN's NHWC convolutions; measure with `refdet bench --option channels_last`
    if device.type == "cpu":
        names.append("keep_memory")  # the CUDA caching allocator already keeps GPU memory
    names.append("fused_adamw")
    if device.type == "cuda":  # on this CPU compile built for 5 min and ran at 0.90x (docs/speed.md)
        names.append("compile")
    return names


PRESETS = ("seed", "fast")


def check_names(names: Iterable[str], valid: Iterable[str], what: str) -> list[str]:
    valid = list(valid)
    names = list(names)
    for name in names:
        if name not in valid:
            raise OptionError(f"unknown {what} {name!r}; choose from {', '.join(valid)}")
    return names


def seed_config(base: RefDetConfig) -> RefDetConfig:
    """The ``seed`` preset (the original system's choices): ``SEED_OVERRIDES``, and half the encoder blocks train
    (6 of ViT-S's 12; tiny test encoders: half theirs).

    The original trained on whole frames: a base that cuts training windows (``train_window``) is put back to
    whole frames at its ``img_size``, so that ``crop_window`` is measured against whole frames whatever the base.
    """
    extra = {
        "pin_memory": torch.cuda.is_available() and base.train.device != "cpu",
        "trainable_blocks": int(base.model.encoder_kwargs.get("depth", 12)) // 2,
        **whole_frames(base),
    }
    return config_from_dict({**SEED_OVERRIDES, **extra}, source="preset seed", base=base)


def apply_options(cfg: RefDetConfig, names: Iterable[str]) -> RefDetConfig:
    for name in check_names(names, OPTIONS, "option"):
        cfg = OPTIONS[name].apply(cfg)
    return cfg


def preset_config(name: str, base: RefDetConfig, *, device: torch.device | str | None = None) -> RefDetConfig:
    """``seed`` or ``fast`` on top of ``base`` (which gives data root and sizes)."""
    check_names([name], PRESETS, "preset")
    original = seed_config(base)
    return original if name == "seed" else apply_options(original, fast_options(device))


def entry_config(name: str, base: RefDetConfig) -> RefDetConfig:
    """A bench entry: a preset name, or ``seed+opt1+opt2`` (options on top of the seed preset)."""
    head, *extra = name.split("+")
    if head not in PRESETS:
        raise OptionError(f"unknown preset {head!r}; choose from {', '.join(PRESETS)}")
    return apply_options(preset_config(head, base), extra)


def option_table() -> list[dict[str, Any]]:
    """One row per option: name, applies, exactness, tolerance, description (for 04's table)."""
    return [
        {"name": o.name, "applies": o.applies, "exactness": o.exactness, "tolerance": o.tolerance,
         "description": o.description}
        for o in OPTIONS.values()
    ]  # fmt: skip


def params_snippet(base: RefDetConfig, names: Iterable[str]) -> dict[str, Any]:
    """Config keys of the ``seed`` preset + ``names`` that a training params file (notebook 05) should set."""
    original = seed_config(base)
    cfg = apply_options(original, names).flat()
    keys = list(SEED_OVERRIDES) + ["pin_memory", "trainable_blocks"]
    for name in names:
        keys += list(OPTIONS[name].resolve(original))
    return {k: (list(cfg[k]) if isinstance(cfg[k], tuple) else cfg[k]) for k in dict.fromkeys(keys)}
