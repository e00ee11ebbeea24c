"""RefDet: support encoder -> prototypes; query -> YOLOv8n P2-P5 -> fusion -> dual head.

``prepare_query`` and ``prepare_support`` are the only places where images are normalised (the ImageNet
mean/std of the support path is applied inside the support encoder, on top of ``prepare_support``).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from refdet_core.config import ConfigError, ModelConfig
from refdet_core.models.backbone import YoloBackbone, load_ultralytics_state_dict, read_ultralytics_file, scale_channels
from refdet_core.models.fusion import FUSION
from refdet_core.models.head import HEAD_MODES, DualHead, HeadOutput
from refdet_core.models.match import ReferenceMatch
from refdet_core.models.reid import CropReid
from refdet_core.models.support_encoder import ENCODERS, Prototypes, SupportEncoder

log = logging.getLogger(__name__)

QUERY_STRIDE = 32  # the query size must be a multiple of the coarsest stride


def validate_model_names(cfg: ModelConfig) -> None:
    """Unknown encoder / fusion / head mode -> ConfigError naming the valid choices (before any weights exist)."""
    choices = {"encoder": (cfg.encoder, tuple(ENCODERS)), "fusion": (cfg.fusion, tuple(FUSION))}
    choices["head_mode"] = (cfg.head_mode, HEAD_MODES)
    for key, (value, valid) in choices.items():
        if value not in valid:
            raise ConfigError(f"key '{key}': unknown {key} {value!r}; choose one of {', '.join(valid)}")
    if len(cfg.proto_dims) != 4:
        raise ConfigError(f"proto_dims needs 4 values (P2..P5), got {list(cfg.proto_dims)}")
    if cfg.ref_match and (cfg.match_size <= 0 or cfg.match_size % QUERY_STRIDE):
        raise ConfigError(
            f"match_size {cfg.match_size} must be a positive multiple of {QUERY_STRIDE} (it goes through the backbone)"
        )
    if cfg.encoder_patch not in (16, 32):
        raise ConfigError(f"encoder_patch {cfg.encoder_patch} not supported; choose 16 (native) or 32 (resampled)")


def validate_model_config(cfg: ModelConfig, *, img_size: int, support_size: int) -> None:
    """Names as ``validate_model_names``; sizes: query a multiple of 32, support a multiple of the patch."""
    validate_model_names(cfg)
    if img_size <= 0 or img_size % QUERY_STRIDE:
        raise ConfigError(f"img_size {img_size} must be a positive multiple of {QUERY_STRIDE} (the P5 stride)")
    if support_size <= 0 or support_size % cfg.encoder_patch:
        raise ConfigError(
            f"support_size {support_size} must be a positive multiple of the encoder patch {cfg.encoder_patch}"
        )


def _to_unit_float(x: torch.Tensor, what: str) -> torch.Tensor:
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    assert x.is_floating_point(), f"{what} must be uint8 (0..255) or float in [0, 1], got {x.dtype}"
    return x


def prepare_query(x: torch.Tensor) -> torch.Tensor:
    """Query frames (B, 3, S, S): uint8 -> float / 255 (YOLOv8's convention); float in [0, 1] passes."""
    assert x.dim() == 4 and x.shape[1] == 3, f"query must be (B, 3, S, S), got {tuple(x.shape)}"
    assert x.shape[-1] % QUERY_STRIDE == 0 and x.shape[-2] % QUERY_STRIDE == 0, (
        f"query size {tuple(x.shape[-2:])} must be a multiple of {QUERY_STRIDE}"
    )
    return _to_unit_float(x, "query")


def prepare_support(x: torch.Tensor) -> torch.Tensor:
    """Reference images (N, K, 3, S, S): uint8 -> float / 255; float in [0, 1] passes (ImageNet stats: encoder)."""
    assert x.dim() == 5 and x.shape[2] == 3, f"support must be (N, K, 3, S, S), got {tuple(x.shape)}"
    return _to_unit_float(x, "support")


class RefDet(nn.Module):
    """YOLOv8n-RefDet.

    Args:
        cfg: the model section of the config.
        num_base_classes: classes of the standard head (object types); may be 0 in ``prototype`` mode.
        pretrained: False skips reading ``encoder_weights`` / ``backbone_weights`` (a checkpoint loads after).
    """

    def __init__(self, cfg: ModelConfig, *, num_base_classes: int, pretrained: bool = True) -> None:
        super().__init__()
        validate_model_names(cfg)
        if cfg.head_mode != "prototype" and num_base_classes < 1:
            raise ValueError(f"head_mode {cfg.head_mode!r} needs num_base_classes >= 1, got {num_base_classes}")
        self.cfg = cfg
        dims = tuple(cfg.proto_dims) if cfg.use_p2 else tuple(cfg.proto_dims[1:])
        self.support_encoder = SupportEncoder(
            name=cfg.encoder,
            proto_dims=dims,
            weights=cfg.encoder_weights,
            encoder_kwargs=cfg.encoder_kwargs,
            patch=cfg.encoder_patch,
            trainable_blocks=cfg.trainable_blocks,
            int8=cfg.int8_encoder,
            colour_bins=cfg.colour_bins,
            pretrained=pretrained,
        )
        self.backbone = YoloBackbone(width=cfg.width, depth=cfg.depth, use_p2=cfg.use_p2)
        if cfg.backbone_weights and pretrained:
            sd = read_ultralytics_file(cfg.backbone_weights)
            load_ultralytics_state_dict(self.backbone, sd, source=cfg.backbone_weights)
        self.fusion = FUSION[cfg.fusion](in_channels=self.backbone.out_channels, proto_dims=dims)
        self.head = DualHead(
            in_channels=self.fusion.out_channels,
            proto_dims=dims,
            strides=self.backbone.strides,
            num_classes=num_base_classes,
            reg_max=cfg.reg_max,
            mode=cfg.head_mode,
            hidden=4 * scale_channels(128, cfg.width),  # the fused P2 width, also when P2 is off
        )
        self.match = None
        if cfg.ref_match and cfg.head_mode != "standard":
            self.match = ReferenceMatch(in_channels=self.backbone.out_channels, dim=cfg.match_dim, size=cfg.match_size)
        # the crop re-ID network: trained after the detector, on its proposals (train/reid.py); inference only
        # scores the candidates with it, it takes no part in the detector's forward
        self.reid = CropReid(size=cfg.crop_reid_size, width=cfg.crop_reid_width) if cfg.crop_reid else None
        self._cache: Prototypes | None = None

    def encode_support(self, support: torch.Tensor) -> Prototypes:
        """(N, K, 3, Ss, Ss) uint8 or float -> Prototypes, per_scale (N, D_s) and, with ``ref_match``, the match
        templates (N, K, D) per scale; gradients reach trainable parts."""
        support = prepare_support(support)
        protos = self.support_encoder(support)
        if self.match is not None:
            protos.templates = self.match.templates(self.backbone, support)
        return protos

    def forward_features(self, query: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, S, S) uint8 or float -> per scale (B, C_s, S / stride_s, S / stride_s), P2..P5 or P3..P5."""
        return self.backbone(prepare_query(query))

    def prototypes(
        self, support: torch.Tensor | None = None, *, tokens: torch.Tensor | None = None, use_cache: bool = False
    ) -> Prototypes | None:
        """What the references give the query path; None in ``standard`` mode.

        From ``support`` images (N, K, 3, Ss, Ss); from ``tokens`` (N, K, T, E), frozen-prefix encoder tokens of a
        support-feature cache (the trainable blocks and projections still run here, so gradients reach them;
        the match path of ``ref_match`` still needs ``support`` beside them); or, with ``use_cache``, what
        ``set_reference_images`` encoded.
        """
        if self.head.mode == "standard":
            return None
        if use_cache:
            if support is not None or tokens is not None:
                raise ValueError("pass either support images (or tokens) or use_cache=True, not both")
            if self._cache is None:
                raise RuntimeError("use_cache=True but no references are cached; call set_reference_images first")
            return self._cache
        if tokens is None:
            if support is None:
                raise ValueError(f"head_mode {self.head.mode!r} needs support images (or use_cache=True)")
            return self.encode_support(support)
        protos = self.support_encoder.from_frozen(tokens.flatten(0, 1), k=tokens.shape[1])
        if self.match is not None:
            assert support is not None, "ref_match needs the support images beside the support tokens"
            protos.templates = self.match.templates(self.backbone, prepare_support(support))
        return protos

    def fuse(self, feats: list[torch.Tensor], protos: Prototypes | None) -> list[torch.Tensor]:
        """Backbone maps + prototypes -> fused maps per scale (the fusion's channels)."""
        return self.fusion(feats, None if protos is None else protos.per_scale)

    def detect(self, fused: list[torch.Tensor], feats: list[torch.Tensor], protos: Prototypes | None) -> HeadOutput:
        """The head on the fused maps; with ``ref_match`` the match logit of the backbone maps joins the scores."""
        out = self.head(fused, None if protos is None else protos.per_scale)
        if self.match is not None:
            out.scores = out.scores + self.match.scores(feats, protos.templates)
        return out

    def forward(
        self,
        query: torch.Tensor,
        support: torch.Tensor | None = None,
        *,
        use_cache: bool = False,
        support_tokens: torch.Tensor | None = None,
        reid_targets: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None,
    ) -> HeadOutput:
        """query (B, 3, S, S); support (N, K, 3, Ss, Ss), or ``use_cache=True`` after ``set_reference_images``,
        or ``support_tokens`` from a support-feature cache (see ``prototypes``). ``reid_targets``, the frames'
        (boxes, labels) in training, adds the re-identification crops of the ``reid`` loss (with ``ref_match``)."""
        protos = self.prototypes(support, tokens=support_tokens, use_cache=use_cache)
        feats = self.forward_features(query)
        out = self.detect(self.fuse(feats, protos), feats, protos)
        if reid_targets is not None:
            self.add_reid_pairs(out, query, protos, reid_targets)
        return out

    def add_reid_pairs(
        self, out: HeadOutput, query: torch.Tensor, protos: Prototypes, targets: tuple[list, list]
    ) -> HeadOutput:
        """The crops of the ``reid`` loss into ``out`` (``ReferenceMatch.training_pairs``); nothing without
        ``ref_match``."""
        if self.match is not None:
            out.reid_cos, out.reid_labels = self.match.training_pairs(
                self.backbone, prepare_query(query), out, *targets, protos.templates
            )
        return out

    @torch.no_grad()
    def set_reference_images(self, support: torch.Tensor) -> Prototypes:
        """Encode (N, K, 3, Ss, Ss) references once (no gradients) for later ``forward(..., use_cache=True)``."""
        self._cache = self.encode_support(support).detach()
        return self._cache

    def clear_cache(self) -> None:
        self._cache = None
