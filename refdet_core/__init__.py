"""YOLOv8n-RefDet: reference-based detection in drone video."""

__version__ = "0.1.0"
