"""The model: DINOv3 support encoder, YOLOv8n backbone + neck, PSALM / CHEAF fusion, dual head, RefDet."""

from refdet_core.models.backbone import YoloBackbone, load_ultralytics_state_dict
from refdet_core.models.fusion import CHEAF, FUSION, PSALM
from refdet_core.models.head import HEAD_MODES, DualHead, HeadOutput, bbox_to_dist, dfl_decode, make_anchors
from refdet_core.models.refdet import RefDet, prepare_query, prepare_support, validate_model_config
from refdet_core.models.support_encoder import ENCODERS, Prototypes, SupportEncoder

__all__ = [
    "CHEAF",
    "ENCODERS",
    "FUSION",
    "HEAD_MODES",
    "PSALM",
    "DualHead",
    "HeadOutput",
    "Prototypes",
    "RefDet",
    "SupportEncoder",
    "YoloBackbone",
    "bbox_to_dist",
    "dfl_decode",
    "load_ultralytics_state_dict",
    "make_anchors",
    "prepare_query",
    "prepare_support",
    "validate_model_config",
]
