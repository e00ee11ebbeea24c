"""The torch device a config's ``device`` names (training, inference and export alike)."""

from __future__ import annotations

import torch

from refdet_core.config import ConfigError


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` is ``cuda:<local_rank>`` where CUDA is available, else the CPU; ``cuda*`` without CUDA raises."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"key 'device' is {name!r} but CUDA is not available here")
    return torch.device(name)
