"""Pretrained weights from the files users download: DINOv3 in three layouts, YOLOv8n from Ultralytics.

The support encoder is timm's DINOv3 (an Eva model). Its weights come in three layouts of the same ViT:

- ``meta``: Meta's release, e.g. ``dinov3_vits16_pretrain_lvd1689m-08c60483.pth``: ``cls_token``,
  ``storage_tokens``, ``mask_token``, ``patch_embed.proj``, ``blocks.N.attn.qkv.{weight,bias,bias_mask}``,
  ``blocks.N.ls1.gamma``, ``blocks.N.mlp.fc1`` (SwiGLU: ``w1/w2/w3``), ``norm``, ``rope_embed.periods``.
- ``timm``: timm's ``vit_*_dinov3[_qkvb]``: ``reg_token``, ``blocks.N.gamma_1``, ``blocks.N.attn.q_bias/v_bias``.
- ``hf``: transformers' ``DINOv3ViTModel`` (``model.safetensors``, alone or in its folder): ``embeddings.*``,
  ``layer.N.attention.{q,k,v,o}_proj``, ``layer.N.layer_scale1.lambda1``, ``layer.N.mlp.{up,down}_proj``.

All three become timm's keys. Meta's ViT-S/16 has a query and a value bias (``bias_mask`` zeroes the key part),
which timm's plain ``vit_small_patch16_dinov3`` has no place for: ``encoder_variant`` then picks the ``_qkvb``
twin, so the biases are loaded, never dropped. A file loads completely or raises WeightsError naming the file
and the first missing / unexpected keys.
"""

from __future__ import annotations

import errno
import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from refdet_core.config import ConfigError

log = logging.getLogger(__name__)

FORMATS = ("meta", "timm", "hf")
HF_FILES = ("model.safetensors", "pytorch_model.bin")  # what a transformers model folder holds
# source keys inference has no use for: pretraining-only tokens and norms, heads of other tasks
IGNORED_PREFIXES = ("mask_token", "embeddings.mask_token", "local_cls_norm.", "head.", "projectors.")
META_RENAMES = (
    ("storage_tokens", "reg_token"),
    (".ls1.gamma", ".gamma_1"),
    (".ls2.gamma", ".gamma_2"),
    (".mlp.w1.", ".mlp.fc1_g."),  # SwiGLU: w1 is gated by the activation, w2 is the value, w3 projects back
    (".mlp.w2.", ".mlp.fc1_x."),
    (".mlp.w3.", ".mlp.fc2."),
)
HF_RENAMES = (
    ("embeddings.cls_token", "cls_token"),
    ("embeddings.register_tokens", "reg_token"),
    ("embeddings.patch_embeddings.", "patch_embed.proj."),
    (".attention.o_proj.", ".attn.proj."),
    (".layer_scale1.lambda1", ".gamma_1"),
    (".layer_scale2.lambda1", ".gamma_2"),
    (".mlp.gate_proj.", ".mlp.fc1_g."),
    (".mlp.down_proj.", ".mlp.fc2."),
)
# (embed dim, SwiGLU MLP) -> refdet encoder name, for checking a file without a config
ENCODER_BY_SHAPE = {
    (192, False): "vit_tiny_patch16_dinov3_qkvb",
    (384, False): "vit_small_patch16_dinov3",
    (384, True): "vit_small_plus_patch16_dinov3",
}
QKVB = "_qkvb"
SHOWN = 3  # keys named in a one-line error


class WeightsError(ConfigError):
    """A weights file that cannot be read, has an unknown layout or does not fit the model; names the file."""


def short_reason(err: BaseException) -> str:
    """The first sentence of an exception's message (torch's read errors run to several)."""
    text = str(err).strip()
    return text.splitlines()[0].split(". ")[0].rstrip(".") if text else type(err).__name__


def unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint object -> its state dict of tensors (under model_ema / model / state_dict / module if nested)."""
    for key in ("model_ema", "model", "state_dict", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    if not tensors:
        raise WeightsError(f"{path}: holds no state dict of tensors")
    if all(k.startswith("module.") for k in tensors):  # saved from a DistributedDataParallel wrapper
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin`` file, or of a transformers model folder.

    Missing file -> FileNotFoundError; unreadable (truncated, not a checkpoint) -> WeightsError, one line.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        found = [path / name for name in HF_FILES if (path / name).is_file()]
        if not found:
            raise WeightsError(f"{path}: a folder without {' or '.join(HF_FILES)}")
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "weights file not found", str(path))
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (
        OSError,
        RuntimeError,
        ValueError,
        EOFError,
        IndexError,
        KeyError,
        pickle.UnpicklingError,
        SafetensorError,
    ) as err:
        raise WeightsError(f"{path}: not a readable weights file ({short_reason(err)})") from err
    return unwrap_state_dict(obj, path)


def detect_format(sd: dict[str, torch.Tensor]) -> str | None:
    """The layout ("meta", "timm" or "hf") from the key names alone; None when it is none of them."""
    if "storage_tokens" in sd or any(k.endswith((".ls1.gamma", ".attn.qkv.bias")) for k in sd):
        return "meta"
    if any(k.startswith(("embeddings.", "layer.")) for k in sd):
        return "hf"
    if "reg_token" in sd or "cls_token" in sd or any(k.endswith(".gamma_1") for k in sd):
        return "timm"
    return None


@dataclass
class EncoderWeights:
    """A DINOv3 file converted to timm's keys. ``ignored``: source keys inference does not use."""

    path: str
    format: str
    state_dict: dict[str, torch.Tensor]
    ignored: list[str] = field(default_factory=list)
    rope_periods: torch.Tensor | None = None  # Meta's stored RoPE periods, checked against the encoder's

    @property
    def has_qkv_bias(self) -> bool:
        return any(k.endswith(".attn.q_bias") for k in self.state_dict)


def _renamed(key: str, renames: tuple[tuple[str, str], ...]) -> str:
    for old, new in renames:
        key = key.replace(old, new)
    return key


def _q_v_bias(stem: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, path: str) -> dict[str, torch.Tensor]:
    """timm's attention holds a query and a value bias; its key bias is a zero buffer, so a real one cannot load."""
    if k.abs().max() > 0:
        raise WeightsError(f"{path}: {stem}: a non-zero key bias, which timm's DINOv3 attention cannot hold")
    return {f"{stem}.q_bias": q, f"{stem}.v_bias": v}


def _from_meta(sd: dict[str, torch.Tensor], path: str) -> EncoderWeights:
    out: dict[str, torch.Tensor] = {}
    weights = EncoderWeights(path, "meta", out)
    for key, value in sd.items():
        if key.endswith(".qkv.bias"):
            mask = sd.get(key + "_mask")  # 1 over q and v, 0 over k: the bias the model really adds
            q, k, v = (value if mask is None else value * mask.to(value.dtype)).chunk(3)
            out.update(_q_v_bias(key[: -len(".qkv.bias")], q, k, v, path))
        elif key == "rope_embed.periods":
            weights.rope_periods = value
            weights.ignored.append(key)
        elif key.endswith(".qkv.bias_mask") or key.startswith(IGNORED_PREFIXES):
            weights.ignored.append(key)
        else:
            out[_renamed(key, META_RENAMES)] = value
    return weights


def _hf_attention(sd: dict[str, torch.Tensor], layer: str, path: str, ignored: list[str]) -> dict[str, torch.Tensor]:
    """``layer.N.attention.{q,k,v}_proj`` -> ``blocks.N.attn.qkv.weight`` and the q / v biases."""
    stem = "blocks." + layer[len("layer.") :] + ".attn"
    weight = [sd.get(f"{layer}.attention.{p}_proj.weight") for p in "qkv"]
    out = {f"{stem}.qkv.weight": torch.cat(weight)} if all(w is not None for w in weight) else {}
    bias = [sd.get(f"{layer}.attention.{p}_proj.bias") for p in "qkv"]
    if bias[0] is not None and bias[2] is not None:
        k = torch.zeros_like(bias[0]) if bias[1] is None else bias[1]
        out.update(_q_v_bias(stem, bias[0], k, bias[2], path))
        if bias[1] is not None:
            ignored.append(f"{layer}.attention.k_proj.bias")
    return out


def _from_hf(sd: dict[str, torch.Tensor], path: str) -> EncoderWeights:
    out: dict[str, torch.Tensor] = {}
    weights = EncoderWeights(path, "hf", out)
    gated = any(".mlp.gate_proj." in k for k in sd)
    up = (".mlp.up_proj.", ".mlp.fc1_x." if gated else ".mlp.fc1.")
    layers = sorted({k.split(".attention.")[0] for k in sd if k.startswith("layer.") and ".attention." in k})
    for layer in layers:
        out.update(_hf_attention(sd, layer, path, weights.ignored))
    for key, value in sd.items():
        if key.startswith(IGNORED_PREFIXES):
            weights.ignored.append(key)
        elif not any(f".attention.{p}_proj." in key for p in "qkv"):
            name = "blocks." + key[len("layer.") :] if key.startswith("layer.") else key
            out[_renamed(name, (*HF_RENAMES, up))] = value
    return weights


def read_encoder_weights(path: str | Path) -> EncoderWeights:
    """A DINOv3 file in any of the three layouts -> EncoderWeights with timm's keys (WeightsError if none)."""
    sd = read_tensors(path)
    fmt = detect_format(sd)
    if fmt == "meta":
        return _from_meta(sd, str(path))
    if fmt == "hf":
        return _from_hf(sd, str(path))
    if fmt == "timm":
        kept = {k: v for k, v in sd.items() if not k.startswith(IGNORED_PREFIXES)}
        return EncoderWeights(str(path), "timm", kept, [k for k in sd if k not in kept])
    first = ", ".join(list(sd)[:SHOWN])
    raise WeightsError(f"{path}: not a DINOv3 ViT in Meta's, timm's or transformers' layout (first keys: {first})")


def encoder_variant(name: str, weights: EncoderWeights) -> str:
    """The timm model of ``name`` that holds the file: its ``_qkvb`` twin when the file has q/v biases (and back)."""
    if weights.has_qkv_bias == name.endswith(QKVB):
        return name
    twin = name + QKVB if weights.has_qkv_bias else name[: -len(QKVB)]
    if not timm.is_model(twin):
        has = "has" if weights.has_qkv_bias else "has no"
        raise WeightsError(f"{weights.path}: {has} q/v biases, unlike {name}, and timm has no {twin} to hold it")
    log.info("%s: %s q/v biases -> encoder variant %s", weights.path, "with" if weights.has_qkv_bias else "no", twin)
    return twin


def infer_encoder(weights: EncoderWeights) -> str:
    """The refdet encoder name for the file's width and MLP kind (for checks without a config)."""
    token = weights.state_dict.get("cls_token")
    if token is None:
        raise WeightsError(f"{weights.path}: no cls_token, so not a whole DINOv3 ViT")
    swiglu = any(".mlp.fc1_g." in k for k in weights.state_dict)
    name = ENCODER_BY_SHAPE.get((int(token.shape[-1]), swiglu))
    if name is None:
        kind = f"width {token.shape[-1]}{' (SwiGLU)' if swiglu else ''}"
        raise WeightsError(f"{weights.path}: a ViT of {kind} is none of {', '.join(ENCODER_BY_SHAPE.values())}")
    return name


def match_keys(model: nn.Module, weights: EncoderWeights) -> dict[str, Any]:
    """``{"loaded": n, "missing": [...], "unexpected": [...], "mismatched": {key: "file vs model"}}``."""
    own, sd = model.state_dict(), weights.state_dict
    shapes = {k: (tuple(v.shape), tuple(own[k].shape)) for k, v in sd.items() if k in own}
    mismatched = {k: f"{a} vs {b}" for k, (a, b) in shapes.items() if a != b}
    rope, periods = getattr(getattr(model, "rope", None), "periods", None), weights.rope_periods
    if periods is not None and rope is not None:
        if periods.shape != rope.shape or not torch.allclose(periods.float(), rope.float(), rtol=1e-4):
            mismatched["rope_embed.periods"] = "RoPE periods differ from the encoder's"
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    loaded = sum(1 for k in own if k in sd and k not in mismatched)
    return {"loaded": loaded, "missing": missing, "unexpected": unexpected, "mismatched": mismatched}


def _fit_error(weights: EncoderWeights, variant: str, report: dict[str, Any]) -> WeightsError:
    parts = [
        f"{len(report[k])} {label} ({', '.join(list(report[k])[:SHOWN])})"
        for k, label in (("missing", "missing"), ("unexpected", "unexpected"), ("mismatched", "of another shape"))
        if report[k]
    ]
    return WeightsError(f"{weights.path}: {weights.format}-format weights do not fit {variant}: {'; '.join(parts)}")


def load_encoder_weights(model: nn.Module, weights: EncoderWeights, *, variant: str) -> dict[str, Any]:
    """Load every encoder tensor from ``weights`` or raise WeightsError (one line); returns ``match_keys``."""
    report = match_keys(model, weights)
    if report["missing"] or report["unexpected"] or report["mismatched"]:
        raise _fit_error(weights, variant, report)
    model.load_state_dict(weights.state_dict, strict=True)
    log.info("%s: %d tensors (%s format) loaded into %s", weights.path, report["loaded"], weights.format, variant)
    return report


def check_weights(path: str | Path, *, encoder: str | None = None) -> dict[str, Any]:
    """What ``refdet weights check`` reports: format, variant, loaded / missing / unexpected keys of a DINOv3 file
    against a full-size encoder (``encoder`` None: the refdet encoder of the file's width)."""
    weights = read_encoder_weights(path)
    variant = encoder_variant(encoder or infer_encoder(weights), weights)
    model = timm.create_model(variant, pretrained=False, num_classes=0, img_size=256)
    report = match_keys(model, weights)
    return {"file": str(path), "format": weights.format, "variant": variant, **report, "ignored": weights.ignored}
