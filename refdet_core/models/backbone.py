"""YOLOv8n backbone and neck as plain modules, returning P2-P5 (no detection head).

Layout of Ultralytics' ``yolov8n.yaml`` (layer index in brackets), channels at width 0.25:

    stem1 [0] 16@/2 -> stem2 [1] 32@/4 -> c2f_p2 [2] -> down_p3 [3] -> c2f_p3 [4] 64@/8 -> down_p4 [5]
    -> c2f_p4 [6] 128@/16 -> down_p5 [7] -> c2f_p5 [8] -> sppf [9] 256@/32
    neck: td_p4 [12] (up P5 + c2f_p4), td_p3 [15] (up td_p4 + c2f_p3) = P3 out, pan_p4 [18], pan_p5 [21]

P2 is one extra top-down step (up P3 + c2f_p2 -> C2f), as in ``yolov8-p2``, on a side branch so that
P3-P5 stay exactly those of yolov8n and an Ultralytics ``yolov8n`` state dict loads unchanged.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import pickle
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from refdet_core.models.weights import WeightsError, read_tensors, short_reason, unwrap_state_dict

log = logging.getLogger(__name__)

BASE_CHANNELS = (64, 128, 256, 512, 1024)  # yolov8 channels at width 1.0 (stem, P2, P3, P4, P5)
MAX_CHANNELS = 1024  # yolov8n's max_channels

# Ultralytics yolov8n layer index -> our module name (layers 10, 11, 13, 14, 17, 20 are upsample/concat; 22 = Detect)
ULTRALYTICS_LAYERS: dict[int, str] = {
    0: "stem1",
    1: "stem2",
    2: "c2f_p2",
    3: "down_p3",
    4: "c2f_p3",
    5: "down_p4",
    6: "c2f_p4",
    7: "down_p5",
    8: "c2f_p5",
    9: "sppf",
    12: "td_p4",
    15: "td_p3",
    16: "pan_down_p3",
    18: "pan_p4",
    19: "pan_down_p4",
    21: "pan_p5",
}


def scale_channels(c: int, width: float) -> int:
    """Channels at a width multiple, rounded up to a multiple of 8 (YOLOv8's rule)."""
    return int(math.ceil(min(c, MAX_CHANNELS) * width / 8) * 8)


def scale_depth(n: int, depth: float) -> int:
    return max(round(n * depth), 1)


class ConvBNAct(nn.Module):
    """Conv (no bias) + BatchNorm + SiLU. (B, c_in, H, W) -> (B, c_out, H / stride, W / stride)."""

    def __init__(self, *, c_in: int, c_out: int, k: int = 1, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """Two 3x3 ConvBNAct with an optional residual. (B, c, H, W) -> (B, c, H, W)."""

    def __init__(self, *, c: int, shortcut: bool) -> None:
        super().__init__()
        self.cv1 = ConvBNAct(c_in=c, c_out=c, k=3)
        self.cv2 = ConvBNAct(c_in=c, c_out=c, k=3)
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """CSP block: split, n bottlenecks on one half, concat all, 1x1. (B, c_in, H, W) -> (B, c_out, H, W)."""

    def __init__(self, *, c_in: int, c_out: int, n: int, shortcut: bool) -> None:
        super().__init__()
        self.c = c_out // 2
        self.cv1 = ConvBNAct(c_in=c_in, c_out=2 * self.c)
        self.cv2 = ConvBNAct(c_in=(2 + n) * self.c, c_out=c_out)
        self.m = nn.ModuleList(Bottleneck(c=self.c, shortcut=shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = list(self.cv1(x).chunk(2, dim=1))
        for block in self.m:
            parts.append(block(parts[-1]))
        return self.cv2(torch.cat(parts, dim=1))


class SPPF(nn.Module):
    """Spatial pyramid pooling (fast): three chained 5x5 max-pools. (B, c_in, H, W) -> (B, c_out, H, W)."""

    def __init__(self, *, c_in: int, c_out: int, k: int = 5) -> None:
        super().__init__()
        hidden = c_in // 2
        self.cv1 = ConvBNAct(c_in=c_in, c_out=hidden)
        self.cv2 = ConvBNAct(c_in=4 * hidden, c_out=c_out)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.m(y[-1]))
        return self.cv2(torch.cat(y, dim=1))


def _up_cat(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """Nearest 2x upsample of ``x`` concatenated with ``skip`` on channels."""
    return torch.cat([F.interpolate(x, scale_factor=2.0, mode="nearest"), skip], dim=1)


class YoloBackbone(nn.Module):
    """YOLOv8 backbone + FPN/PAN neck.

    Args:
        width: width multiple (n = 0.25).
        depth: depth multiple (n = 0.33).
        use_p2: also return the stride-4 P2 map.
    """

    def __init__(self, *, width: float = 0.25, depth: float = 0.33, use_p2: bool = True) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = (scale_channels(c, width) for c in BASE_CHANNELS)
        n3, n6 = scale_depth(3, depth), scale_depth(6, depth)
        self.use_p2 = use_p2
        self.stem1 = ConvBNAct(c_in=3, c_out=c1, k=3, stride=2)
        self.stem2 = ConvBNAct(c_in=c1, c_out=c2, k=3, stride=2)
        self.c2f_p2 = C2f(c_in=c2, c_out=c2, n=n3, shortcut=True)
        self.down_p3 = ConvBNAct(c_in=c2, c_out=c3, k=3, stride=2)
        self.c2f_p3 = C2f(c_in=c3, c_out=c3, n=n6, shortcut=True)
        self.down_p4 = ConvBNAct(c_in=c3, c_out=c4, k=3, stride=2)
        self.c2f_p4 = C2f(c_in=c4, c_out=c4, n=n6, shortcut=True)
        self.down_p5 = ConvBNAct(c_in=c4, c_out=c5, k=3, stride=2)
        self.c2f_p5 = C2f(c_in=c5, c_out=c5, n=n3, shortcut=True)
        self.sppf = SPPF(c_in=c5, c_out=c5)
        # neck: top-down (FPN) then bottom-up (PAN); outputs keep the backbone's c3, c4, c5
        self.td_p4 = C2f(c_in=c5 + c4, c_out=c4, n=n3, shortcut=False)
        self.td_p3 = C2f(c_in=c4 + c3, c_out=c3, n=n3, shortcut=False)
        self.pan_down_p3 = ConvBNAct(c_in=c3, c_out=c3, k=3, stride=2)
        self.pan_p4 = C2f(c_in=c3 + c4, c_out=c4, n=n3, shortcut=False)
        self.pan_down_p4 = ConvBNAct(c_in=c4, c_out=c4, k=3, stride=2)
        self.pan_p5 = C2f(c_in=c4 + c5, c_out=c5, n=n3, shortcut=False)
        self.td_p2 = C2f(c_in=c3 + c2, c_out=c2, n=n3, shortcut=False) if use_p2 else None
        self.out_channels: tuple[int, ...] = (c2, c3, c4, c5) if use_p2 else (c3, c4, c5)
        self.strides: tuple[int, ...] = (4, 8, 16, 32) if use_p2 else (8, 16, 32)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, S, S) float in [0, 1] -> [P2 (B, c2, S/4, S/4),] P3 (B, c3, S/8, ...), P4 (S/16), P5 (S/32)."""
        p2 = self.c2f_p2(self.stem2(self.stem1(x)))
        p3 = self.c2f_p3(self.down_p3(p2))
        p4 = self.c2f_p4(self.down_p4(p3))
        p5 = self.sppf(self.c2f_p5(self.down_p5(p4)))
        t4 = self.td_p4(_up_cat(p5, p4))
        n3 = self.td_p3(_up_cat(t4, p3))
        n4 = self.pan_p4(torch.cat([self.pan_down_p3(n3), t4], dim=1))
        n5 = self.pan_p5(torch.cat([self.pan_down_p4(n4), p5], dim=1))
        if self.td_p2 is None:
            return [n3, n4, n5]
        return [self.td_p2(_up_cat(n3, p2)), n3, n4, n5]


def map_ultralytics_keys(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename Ultralytics ``model.<i>.<rest>`` keys to ours; returns (mapped, skipped keys)."""
    mapped: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for key, value in sd.items():
        parts = key.split(".")
        if parts[0] == "model" and len(parts) > 2 and parts[1].isdigit() and int(parts[1]) in ULTRALYTICS_LAYERS:
            mapped[".".join([ULTRALYTICS_LAYERS[int(parts[1])], *parts[2:]])] = value
        else:
            skipped.append(key)
    return mapped, skipped


def load_ultralytics_state_dict(
    backbone: YoloBackbone, sd: dict[str, torch.Tensor], *, source: str = "Ultralytics state dict"
) -> list[str]:
    """Load an Ultralytics yolov8n ``DetectionModel`` state dict into ``backbone``.

    Every layer of ours that exists in yolov8n must be present with the same shape (else WeightsError naming
    ``source``); the Detect head is skipped and the P2 branch stays as initialised. Returns our keys left untouched.
    """
    mapped, skipped = map_ultralytics_keys(sd)
    own = backbone.state_dict()
    bad = [k for k, v in mapped.items() if k not in own or own[k].shape != v.shape]
    if bad:
        raise WeightsError(f"{source}: does not fit this backbone (width/depth?): first bad keys {bad[:3]}")
    missing = [k for k in own if k not in mapped and not k.startswith("td_p2.")]
    if missing:
        raise WeightsError(f"{source}: lacks {len(missing)} backbone keys of yolov8n, e.g. {missing[:3]}")
    backbone.load_state_dict(mapped, strict=False)
    log.info("%s: loaded %d tensors (%d skipped: detect head / extras)", source, len(mapped), len(skipped))
    return [k for k in own if k not in mapped]


def read_ultralytics_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file (plain tensors, e.g. from ``convert_ultralytics``) or a ``.pt``:
    a plain state dict, or an Ultralytics checkpoint whose ``ema`` / ``model`` entry is a pickled module
    (reading that needs ``ultralytics`` installed; without it, WeightsError says so in one line)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_tensors(path)
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "weights file not found", str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)  # Ultralytics .pt files hold pickled modules
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] != "ultralytics":
            raise
        raise WeightsError(
            f"{path}: an Ultralytics checkpoint; reading it needs the optional package ultralytics "
            f"(pip install ultralytics), or convert it once where that is installed: "
            f"refdet weights convert {path.name} {path.stem}.safetensors"
        ) from err
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise WeightsError(f"{path}: not a readable checkpoint ({short_reason(err)})") from err
    if isinstance(obj, dict):  # Ultralytics writes the module under "ema" (training) or "model" (YOLO.save)
        module = next((obj[k] for k in ("ema", "model") if isinstance(obj.get(k), nn.Module)), None)
        if module is not None:
            return {k: v.float() if v.is_floating_point() else v for k, v in module.state_dict().items()}
    return unwrap_state_dict(obj, path)


def convert_ultralytics(src: str | Path, out: str | Path) -> dict[str, int | str]:
    """An Ultralytics yolov8n ``.pt`` -> ``out`` (.safetensors) of plain fp32 tensors, keys unchanged, so that it
    loads without ``ultralytics``. Checked against the backbone first; written atomically."""
    from safetensors.torch import save_file

    out = Path(out)
    if out.suffix != ".safetensors":
        raise WeightsError(f"{out}: the converted file must end in .safetensors")
    sd = {k: v.detach().contiguous().clone() for k, v in read_ultralytics_file(src).items()}
    untouched = load_ultralytics_state_dict(YoloBackbone(), sd, source=str(src))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    save_file(sd, str(tmp), metadata={"source": Path(src).name, "format": "ultralytics DetectionModel state dict"})
    os.replace(tmp, out)
    loaded = len(YoloBackbone().state_dict()) - len(untouched)
    return {"source": str(src), "out": str(out), "tensors": len(sd), "backbone_tensors": loaded}
