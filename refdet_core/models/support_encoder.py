"""DINOv3 support encoder (timm): reference images -> per-scale prototypes.

The encoder is split in two so a support-feature cache can store the frozen part:
``forward_frozen`` (ImageNet normalisation, patch embedding, prefix tokens, frozen blocks; no gradients) and
``forward_trainable`` (the last ``trainable_blocks`` blocks and the final norm). Per-scale projections map
[CLS, mean patch token] to the prototype dims; the mean over the K references keeps gradients.

``colour_bins > 0`` adds a parameter-free identity cue: a centre-weighted soft colour histogram of each reference
(``colour_histogram``), carried through the frozen part as one extra token (so the support-feature cache holds
it too) and projected per scale onto the prototype (``colour_proj``). A randomly initialised encoder's
[CLS, mean] features do not tell two instances of one kind apart; their colours do.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from refdet_core.config import ConfigError
from refdet_core.logs import warn_once
from refdet_core.models.weights import EncoderWeights, encoder_variant, load_encoder_weights, read_encoder_weights

log = logging.getLogger(__name__)

ENCODERS: dict[str, int] = {  # timm name -> native patch size; *_qkvb: with the q/v biases of Meta's files
    "vit_small_patch16_dinov3": 16,
    "vit_small_patch16_dinov3_qkvb": 16,
    "vit_small_plus_patch16_dinov3": 16,
    "vit_small_plus_patch16_dinov3_qkvb": 16,
    "vit_tiny_patch16_dinov3_qkvb": 16,
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SHAPE_KWARGS_SAFE = {"img_size", "drop_path_rate"}  # encoder_kwargs that keep pretrained weights loadable
COLOUR_GRID = 32  # references are average-pooled to about this side before the colour histogram
COLOUR_SIGMA = 0.2  # centre weighting of the histogram: Gaussian sigma as a share of the image side


def _axis(n: int, device: torch.device) -> torch.Tensor:
    """Cell centres of n cells across [-0.5, 0.5]."""
    return (torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n - 0.5


def colour_histogram(x: torch.Tensor, bins: int) -> torch.Tensor:
    """(M, 3, S, S) float in [0, 1] -> (M, bins**3) soft RGB histogram, centre-weighted, summing to 1.

    Each channel value spreads over its two nearest bin centres (linear weights), so the histogram changes
    smoothly with light; pixels are weighted by a centred Gaussian (the reference photos centre the object).
    Built from elementwise ops and matmuls only (exports to ONNX).
    """
    pool = max(1, int(x.shape[-1]) // COLOUR_GRID)  # a constant when exported (the support size is fixed)
    x = F.avg_pool2d(x.float(), pool)
    side_h, side_w = int(x.shape[-2]), int(x.shape[-1])
    x = x.flatten(2)  # (M, 3, P)
    centres = torch.linspace(0.0, 1.0, bins, device=x.device)
    w = (1.0 - (x.unsqueeze(-1) - centres).abs() * (bins - 1)).clamp_min(0.0)  # (M, 3, P, bins)
    joint = torch.einsum("mpi,mpj,mpk->mpijk", w[:, 0], w[:, 1], w[:, 2]).flatten(2)  # (M, P, bins^3)
    gy, gx = (torch.exp(-(_axis(n, x.device) ** 2) / (2 * COLOUR_SIGMA**2)) for n in (side_h, side_w))
    weight = (gy[:, None] * gx[None, :]).flatten()  # (P,)
    hist = torch.einsum("mpb,p->mb", joint, weight)
    return hist / hist.sum(dim=1, keepdim=True).clamp_min(1e-12)


@dataclass
class Prototypes:
    """Prototypes of the N episode videos: ``per_scale[s]`` is (N, D_s), P2..P5 (or P3..P5); ``templates[s]``
    (N, K, D) the references' match vectors (``models/match.py``; empty without ``ref_match``)."""

    per_scale: list[torch.Tensor]
    templates: list[torch.Tensor] = field(default_factory=list)

    @property
    def n(self) -> int:
        return self.per_scale[0].shape[0]

    def detach(self) -> Prototypes:
        return Prototypes([p.detach() for p in self.per_scale], [t.detach() for t in self.templates])


def cached_weights_path(name: str) -> str | None:
    """Path of the timm weights for ``name`` in the local Hugging Face cache, or None. Never downloads."""
    try:
        from huggingface_hub import try_to_load_from_cache

        hub_id = timm.models.get_pretrained_cfg(name).hf_hub_id
    except (ImportError, AttributeError, RuntimeError):
        return None
    if not hub_id:
        return None
    found = try_to_load_from_cache(hub_id, "model.safetensors")
    return found if isinstance(found, str) else None


class SupportEncoder(nn.Module):
    """DINOv3 ViT + per-scale prototype projections.

    Args:
        name: timm model name (a key of ``ENCODERS``).
        proto_dims: prototype dim per scale, e.g. (32, 64, 128, 256).
        weights: local weights file or transformers model folder, in Meta's, timm's or transformers' layout
            (see ``models/weights.py``); "" = timm cache when present, else random init (warned). A file with
            q/v biases makes the encoder ``name``'s ``_qkvb`` variant (``self.variant``) so that they load.
        encoder_kwargs: passed to ``timm.create_model`` (tests shrink the model: depth, embed_dim, ...).
        patch: patch size; differs from the native one -> the patch embedding is resampled.
        trainable_blocks: last blocks that train (0 = encoder frozen; projections always train).
        int8: INT8 dynamic quantization of the frozen blocks' Linear layers (CPU only).
        colour_bins: bins per channel of the colour histogram cue (0 = off; needs bins**3 <= embed dim).
        pretrained: False builds the architecture only (``weights`` is not read): a checkpoint loads after.
    """

    def __init__(
        self,
        *,
        name: str = "vit_small_patch16_dinov3",
        proto_dims: tuple[int, ...] = (32, 64, 128, 256),
        weights: str = "",
        encoder_kwargs: dict[str, Any] | None = None,
        patch: int = 16,
        trainable_blocks: int = 0,
        int8: bool = False,
        colour_bins: int = 0,
        pretrained: bool = True,
    ) -> None:
        super().__init__()
        if name not in ENCODERS:
            raise ConfigError(f"key 'encoder': unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")
        kwargs = {"img_size": 256, **(encoder_kwargs or {})}
        path = weights or (cached_weights_path(name) if set(kwargs) <= SHAPE_KWARGS_SAFE else None)
        loaded = read_encoder_weights(path) if path and pretrained else None
        self.variant = encoder_variant(name, loaded) if loaded else name  # the timm model that holds the file
        try:
            self.model = timm.create_model(self.variant, pretrained=False, num_classes=0, **kwargs)
        except TypeError as err:  # an encoder_kwargs key the timm model does not take
            raise ConfigError(f"key 'encoder_kwargs' {encoder_kwargs}: {err}") from None
        # pretrained=False: the weights come from elsewhere (a checkpoint), so nothing is read and nothing warned
        self.pretrained_source = self._load_weights(loaded) if pretrained else "not loaded"
        if patch != ENCODERS[name]:
            self.model.set_input_size(patch_size=(patch, patch))
        self.patch = patch
        depth = len(self.model.blocks)
        if not 0 <= trainable_blocks <= depth:
            raise ConfigError(f"key 'trainable_blocks' is {trainable_blocks}, must be in [0, {depth}] for {name}")
        self.n_frozen = depth - trainable_blocks
        self.trainable_blocks = trainable_blocks
        self.model.requires_grad_(False)
        for block in self.model.blocks[self.n_frozen :]:
            block.requires_grad_(True)
        self.model.norm.requires_grad_(trainable_blocks > 0)
        self.embed_dim = self.model.embed_dim
        self.num_prefix = self.model.num_prefix_tokens
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.proj = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(2 * self.embed_dim), nn.Linear(2 * self.embed_dim, d)) for d in proto_dims
        )
        self.colour_bins = colour_bins
        self.colour_proj = None
        if colour_bins:
            n_bins = colour_bins**3
            if colour_bins < 2 or n_bins > self.embed_dim:
                raise ValueError(
                    f"colour_bins={colour_bins} must be 0 or >= 2 with colour_bins**3 <= the encoder's embed dim "
                    f"{self.embed_dim}"
                )
            self.colour_proj = nn.ModuleList(nn.Linear(n_bins, d) for d in proto_dims)
        self.int8 = False
        if int8:
            self.quantize_frozen()

    def _load_weights(self, loaded: EncoderWeights | None) -> str:
        """Load every encoder tensor of ``loaded`` (WeightsError otherwise); returns its path or "random"."""
        if loaded is None:
            warn_once(log, "support encoder %s: no local weights and none in the timm cache; random init", self.variant)
            return "random"
        load_encoder_weights(self.model, loaded, variant=self.variant)
        return loaded.path

    def quantize_frozen(self) -> None:
        """INT8 dynamic quantization of the Linear layers of the frozen blocks (CPU inference of the prefix)."""
        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for block in self.model.blocks[: self.n_frozen]:
                quantize_dynamic(block, {nn.Linear}, dtype=torch.qint8, inplace=True)
        self.int8 = True

    def train(self, mode: bool = True) -> SupportEncoder:
        """The frozen part stays in eval mode; trainable blocks and projections follow ``mode``."""
        super().train(mode)
        self.model.eval()
        for block in self.model.blocks[self.n_frozen :]:
            block.train(mode)
        return self

    def _rope(self, n_tokens: int) -> torch.Tensor | None:
        if self.model.rope is None:
            return None
        side = math.isqrt(n_tokens - self.num_prefix)
        return self.model.rope.get_embed(shape=(side, side))

    @torch.no_grad()
    def forward_frozen(self, x: torch.Tensor) -> torch.Tensor:
        """(M, 3, S, S) float in [0, 1] -> tokens after the frozen blocks (M, prefix + (S/patch)^2, E)."""
        assert x.dim() == 4 and x.shape[1] == 3, f"support images must be (M, 3, S, S), got {tuple(x.shape)}"
        if self.int8 and x.is_cuda:
            raise ValueError("int8_encoder is a CPU option; the quantized encoder cannot run on CUDA")
        raw = x.float()
        x = (raw - self.mean) / self.std
        with torch.autocast(x.device.type, enabled=False) if self.int8 else contextlib.nullcontext():
            tokens = self.model.norm_pre(self.model._pos_embed(self.model.patch_embed(x))[0])
            rope = self._rope(tokens.shape[1])
            for block in self.model.blocks[: self.n_frozen]:
                tokens = block(tokens, rope=rope)
        if self.colour_bins:  # one extra token: the histogram in its first bins**3 channels
            hist = colour_histogram(raw, self.colour_bins)
            tokens = self._join_colour(tokens, hist)
        return tokens

    def _join_colour(self, tokens: torch.Tensor, hist: torch.Tensor) -> torch.Tensor:
        """Tokens (M, T, E) + histogram (M, bins**3) -> (M, T + 1, E): the histogram as a zero-padded last token."""
        return torch.cat([tokens, F.pad(hist, (0, self.embed_dim - hist.shape[1]))[:, None].to(tokens)], dim=1)

    def _split_colour(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Frozen-prefix tokens -> (encoder tokens, colour histogram (M, bins**3) or None)."""
        if not self.colour_bins:
            return tokens, None
        return tokens[:, :-1], tokens[:, -1, : self.colour_bins**3].float()

    def forward_trainable(self, tokens: torch.Tensor) -> torch.Tensor:
        """Frozen-prefix tokens (M, T, E) -> final normed tokens (M, T, E) through the trainable blocks.

        With the colour cue, the last token is the histogram: it bypasses the blocks and is returned last.
        """
        tokens, hist = self._split_colour(tokens)
        rope = self._rope(tokens.shape[1])
        for block in self.model.blocks[self.n_frozen :]:
            tokens = block(tokens, rope=rope)
        tokens = self.model.norm(tokens)
        if hist is not None:
            tokens = self._join_colour(tokens, hist)
        return tokens

    def project(self, tokens: torch.Tensor, k: int) -> Prototypes:
        """Final tokens (N*K, T, E) -> Prototypes with per_scale (N, D_s): mean over K of L2-normalised projections."""
        tokens, hist = self._split_colour(tokens)
        feat = torch.cat([tokens[:, 0], tokens[:, self.num_prefix :].mean(dim=1)], dim=-1)  # (N*K, 2E)
        cue = None if hist is None else hist.sqrt() * hist.shape[1] ** 0.5  # Hellinger map, norm sqrt(bins^3)
        per_scale = []
        for s, proj in enumerate(self.proj):
            out = proj(feat)
            if cue is not None:
                out = out + self.colour_proj[s](cue.to(out.dtype))
            emb = F.normalize(out.float(), dim=-1)  # (N*K, D)
            per_scale.append(emb.view(-1, k, emb.shape[-1]).mean(dim=1))  # (N, D)
        return Prototypes(per_scale)

    def from_frozen(self, frozen_tokens: torch.Tensor, *, k: int) -> Prototypes:
        """Cached frozen-prefix tokens (N*K, T, E) -> Prototypes (N, D_s) per scale, with gradients."""
        assert frozen_tokens.shape[0] % k == 0, f"{frozen_tokens.shape[0]} token sets do not split into K={k}"
        return self.project(self.forward_trainable(frozen_tokens), k)

    def forward(self, support: torch.Tensor) -> Prototypes:
        """(N, K, 3, S, S) float in [0, 1] -> Prototypes with per_scale (N, D_s)."""
        assert support.dim() == 5, f"support must be (N, K, 3, S, S), got {tuple(support.shape)}"
        return self.from_frozen(self.forward_frozen(support.flatten(0, 1)), k=support.shape[1])
