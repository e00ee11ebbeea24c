"""AdamW parameter groups, the warmup + cosine schedule (in optimizer steps) and the precision choice."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from refdet_core.config import SpeedConfig, TrainConfig

NO_DECAY_WORDS = ("temperature", "logit_scale", "scale", "pos_embed", "cls_token", "reg_token", "bias")


def _no_decay(name: str, param: nn.Parameter) -> bool:
    """Norm weights, biases and temperatures are not decayed (ndim <= 1 covers norms and biases)."""
    return param.ndim <= 1 or any(word in name.rsplit(".", 1)[-1] for word in NO_DECAY_WORDS)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel (or any ``.module`` wrapper), else the model itself."""
    while isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
        model = model.module
    return model


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """One group per (top-level module, decay) with the module's LR multiplier from ``cfg.lr_mult``.

    Names are the unwrapped model's: under DDP every name would start with ``module.`` and all parameters
    would fall into one group, losing the multipliers.
    """
    groups: dict[tuple[str, bool], dict] = {}
    for name, param in unwrap(model).named_parameters():
        if not param.requires_grad:
            continue
        module = name.split(".", 1)[0]
        decay = not _no_decay(name, param)
        key = (module, decay)
        if key not in groups:
            mult = cfg.lr_mult.get(module, 1.0)
            groups[key] = {
                "params": [],
                "names": [],
                "lr_mult": mult,
                "lr": cfg.lr * mult,
                "weight_decay": cfg.weight_decay if decay else 0.0,
                "module": module,
            }
        groups[key]["params"].append(param)
        groups[key]["names"].append(name)
    return list(groups.values())


def make_optimizer(model: nn.Module, cfg: TrainConfig, *, fused: bool = False) -> torch.optim.AdamW:
    groups = param_groups(model, cfg)
    for g in groups:
        g.pop("names")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), fused=fused or None)


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """Linear warmup (the first step already has a non-zero LR), then cosine down to ``min_lr_ratio``."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = min(cfg.warmup_steps, max(total_steps // 5, 0))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps=total_steps, warmup_steps=warmup, min_lr_ratio=cfg.min_lr_ratio)
    )


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    # on CPU bf16 pays off only with AMX or AVX512-BF16; without them it runs slower than fp32
    return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()


def resolve_precision(speed: SpeedConfig, device: torch.device) -> str:
    """'auto' -> bf16 where the hardware has it, else fp16 on CUDA and fp32 on CPU."""
    if speed.precision != "auto":
        return speed.precision
    if bf16_supported(device):
        return "bf16"
    return "fp16" if device.type == "cuda" else "fp32"


AUTOCAST_DTYPES: Mapping[str, torch.dtype | None] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
