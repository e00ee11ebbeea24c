"""ONNX export for edge devices: the query path with the prototypes as inputs, and the support encoder apart.

The original exported one graph with prototypes computed from a random support tensor and folded in as
constants, so its graph ignored the real references. Here the references are an input of their own graph:

``support.onnx``
    input ``support`` uint8 (N, K, 3, Ss, Ss) (N dynamic, K fixed at export) -> outputs ``proto_p2`` ..
    ``proto_p5`` float32 (N, D_s), one per scale (``proto_p3`` .. ``proto_p5`` for a model without P2).
    Run it once per video.
``query.onnx``
    inputs ``query`` uint8 (B, 3, S, S) (letterboxed RGB frames, B dynamic) and the prototypes ``proto_p2`` ..
    ``proto_p5`` float32 (N, D_s) exactly as ``support.onnx`` returns them (N dynamic) -> outputs ``boxes``
    float32 (B, A, 4) decoded xyxy in letterbox px and ``scores`` float32 (B, A, N) sigmoid probabilities.
    One input per scale (not one concatenated vector) because the scales have different widths: the outputs of
    the encoder graph feed the query graph by name, with no slicing in between.

Decoded outputs keep the runner trivial (per frame: argmax of ``scores[:, :, 0]``, its box, undo the letterbox),
and the DFL decode is the same ``dfl_decode`` that training and ``eval/video.py`` use. Normalisation (``/ 255``
for the query, ``/ 255`` and ImageNet stats for the references) happens inside the graphs, through
``prepare_query`` / ``prepare_support``, so a runner feeds raw uint8 pixels. Anchors are constants of
``query.onnx``: its image size is fixed at export.
"""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from refdet_core.checkpoint import model_from_checkpoint
from refdet_core.io import atomic_write_json
from refdet_core.models.refdet import RefDet
from refdet_core.models.support_encoder import Prototypes

log = logging.getLogger(__name__)

OPSET = 18


def proto_names(model: RefDet) -> list[str]:
    """Input / output names of what the references give: the per-scale prototypes ``proto_p2`` .. ``proto_p5``
    (P3..P5 without P2), then, with ``ref_match``, the match templates ``match_p2`` .. ``match_p5``."""
    first = 2 if model.cfg.use_p2 else 3
    levels = range(first, first + len(model.head.strides))
    return [f"proto_p{i}" for i in levels] + ([f"match_p{i}" for i in levels] if model.match is not None else [])


def reference_tensors(model: RefDet, support: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors named by ``proto_names``, from (N, K, 3, Ss, Ss) references."""
    protos = model.encode_support(support)
    return (*protos.per_scale, *protos.templates)


class QueryGraph(nn.Module):
    """query uint8 (B, 3, S, S) + prototypes per scale (N, D_s) [+ match templates per scale (N, K, D)] ->
    boxes (B, A, 4) xyxy px, scores (B, A, N)."""

    def __init__(self, model: RefDet) -> None:
        super().__init__()
        self.model = model

    def forward(self, query: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.model.head.strides)
        protos = Prototypes(list(tensors[:n]), list(tensors[n:]))
        feats = self.model.forward_features(query)
        out = self.model.detect(self.model.fuse(feats, protos), feats, protos)
        return out.boxes(), out.scores.sigmoid()


class SupportGraph(nn.Module):
    """support uint8 (N, K, 3, Ss, Ss) -> per-scale prototypes (N, D_s) [+ match templates (N, K, D)]."""

    def __init__(self, model: RefDet) -> None:
        super().__init__()
        self.model = model

    def forward(self, support: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return reference_tensors(self.model, support)


def example_inputs(
    model: RefDet, *, img_size: int, support_size: int, k_shot: int, batch: int = 2, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random uint8 query (B, 3, S, S) and support (1, K, 3, Ss, Ss)."""
    g = torch.Generator().manual_seed(seed)
    query = torch.randint(0, 256, (batch, 3, img_size, img_size), dtype=torch.uint8, generator=g)
    support = torch.randint(0, 256, (1, k_shot, 3, support_size, support_size), dtype=torch.uint8, generator=g)
    return query, support


class ExportError(ValueError):
    """A model or size that cannot be exported; the message says why."""


def frozen_copy(model: RefDet) -> RefDet:
    """An eval-mode CPU copy: export and comparison never change the caller's model (its mode, device, or
    weights; ``torch.onnx.export`` sets ``training`` on the module it traces)."""
    return copy.deepcopy(model).eval().cpu()


def _load(ckpt_or_model: str | Path | RefDet, img_size: int | None, support_size: int | None, k_shot: int | None):
    """(an eval-mode copy of the model, img_size, support_size, k_shot); a checkpoint's sizes are those that
    inference uses: whole frames at ``img_size`` (not the training window ``train_window``)."""
    if isinstance(ckpt_or_model, RefDet):
        assert img_size and support_size, "img_size and support_size are needed when exporting a model object"
        return frozen_copy(ckpt_or_model), img_size, support_size, k_shot or 3

    model, cfg, _ = model_from_checkpoint(ckpt_or_model)
    size = img_size or cfg.data.img_size
    return model.eval(), size, support_size or cfg.data.support_size, k_shot or cfg.data.k_shot


def load_for_export(ckpt: str | Path, img_size: int | None = None) -> tuple[RefDet, int, int, int]:
    """(eval-mode model, img_size, support_size, k_shot) of a checkpoint folder, sizes as ``export_onnx`` uses."""
    return _load(ckpt, img_size, None, None)


def _export(module: nn.Module, args: tuple, path: Path, names: dict[str, Any], opset: int) -> None:
    with warnings.catch_warnings():
        # Shape asserts and static sizes become constants of the trace: intended (sizes are fixed at export).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        _export_traced(module, args, path, names, opset)
    import onnx

    onnx.checker.check_model(onnx.load(str(path)))


def _export_traced(module: nn.Module, args: tuple, path: Path, names: dict[str, Any], opset: int) -> None:
    torch.onnx.export(
        module,
        args,
        str(path),
        input_names=names["inputs"],
        output_names=names["outputs"],
        dynamic_axes=names["dynamic"],
        opset_version=opset,
        do_constant_folding=True,
        dynamo=False,  # the TorchScript exporter handles the timm encoder and dynamic axes without extra work
    )


def _io_names(protos: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Input/output names and dynamic axes of the support graph and of the query graph."""
    support_names = {
        "inputs": ["support"],
        "outputs": protos,
        "dynamic": {"support": {0: "n"}, **{p: {0: "n"} for p in protos}},
    }
    query_names = {
        "inputs": ["query", *protos],
        "outputs": ["boxes", "scores"],
        "dynamic": {
            "query": {0: "batch"},
            **{p: {0: "n"} for p in protos},
            "boxes": {0: "batch"},
            "scores": {0: "batch", 2: "n"},
        },
    }
    return support_names, query_names


def _manifest(dims: dict[str, list], *, img_size: int, support_size: int, k_shot: int, opset: int) -> dict[str, Any]:
    """``export.json``: sizes, names and shapes of both graphs (``dims``: prototype name -> shape after N)."""
    return {
        "img_size": img_size,
        "support_size": support_size,
        "k_shot": k_shot,
        "opset": opset,
        "support": {
            "inputs": {"support": ["n", k_shot, 3, support_size, support_size]},
            "outputs": {p: ["n", *d] for p, d in dims.items()},
        },
        "query": {
            "inputs": {
                "query": ["batch", 3, img_size, img_size],
                **{p: ["n", *d] for p, d in dims.items()},
            },
            "outputs": {"boxes": ["batch", "anchors", 4], "scores": ["batch", "anchors", "n"]},
        },
        "dtypes": {
            "query": "uint8",
            "support": "uint8",
            "prototypes": "float32",
            "boxes": "float32 xyxy letterbox px",
            "scores": "float32 sigmoid",
        },
    }


def export_onnx(
    ckpt_or_model: str | Path | RefDet,
    out_dir: str | Path,
    *,
    img_size: int | None = None,
    support_size: int | None = None,
    k_shot: int | None = None,
    opset: int = OPSET,
) -> dict[str, Path]:
    """Write ``query.onnx``, ``support.onnx`` and ``export.json`` (names, shapes, sizes) to ``out_dir``.

    ``ckpt_or_model``: a checkpoint folder (sizes default to those inference uses: its whole-frame size) or a
    RefDet (sizes required). The caller's model is not changed: a copy is traced.

    Returns:
        ``{"query": path, "support": path, "manifest": path}``.
    """
    model, img_size, support_size, k_shot = _load(ckpt_or_model, img_size, support_size, k_shot)
    if model.head.mode == "standard":
        raise ExportError("ONNX export needs the prototype path; the model's head_mode is 'standard'")
    if getattr(model.support_encoder, "int8", False):
        raise ExportError("the INT8 (dynamically quantized) encoder does not export to ONNX; export the fp32 model")
    if img_size % 32:
        raise ExportError(f"export size {img_size} must be a multiple of 32 (the stride of P5)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    protos = proto_names(model)
    query, support = example_inputs(model, img_size=img_size, support_size=support_size, k_shot=k_shot)
    with torch.no_grad():
        example_protos = reference_tensors(model, support)
    paths = {"query": out / "query.onnx", "support": out / "support.onnx", "manifest": out / "export.json"}
    support_names, query_names = _io_names(protos)
    _export(SupportGraph(model), (support,), paths["support"], support_names, opset)
    _export(QueryGraph(model), (query, *example_protos), paths["query"], query_names, opset)
    dims = {p: [int(d) for d in t.shape[1:]] for p, t in zip(protos, example_protos)}
    manifest = _manifest(dims, img_size=img_size, support_size=support_size, k_shot=k_shot, opset=opset)
    atomic_write_json(paths["manifest"], manifest)
    log.info("exported %s and %s", paths["query"], paths["support"])
    return paths


def compare_onnx(
    model: RefDet,
    paths: dict[str, Path],
    *,
    img_size: int,
    support_size: int,
    k_shot: int,
    batch: int = 3,
    seed: int = 1,
) -> dict[str, float]:
    """Largest absolute difference between onnxruntime and PyTorch on random inputs, per output.

    The query graph is fed the prototypes that ``support.onnx`` computed, as a runner would.

    Returns:
        ``{"proto_p2": d, ..., "boxes": d, "scores": d}``.
    """
    import onnxruntime as ort

    model = frozen_copy(model)
    query, support = example_inputs(
        model, img_size=img_size, support_size=support_size, k_shot=k_shot, batch=batch, seed=seed
    )
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sup = ort.InferenceSession(str(paths["support"]), opts, providers=["CPUExecutionProvider"])
    qry = ort.InferenceSession(str(paths["query"]), opts, providers=["CPUExecutionProvider"])
    names = proto_names(model)
    ort_protos = sup.run(names, {"support": support.numpy()})
    ort_boxes, ort_scores = qry.run(["boxes", "scores"], {"query": query.numpy(), **dict(zip(names, ort_protos))})
    with torch.no_grad():
        ref_protos = reference_tensors(model, support)
        out = model(query, support)
    diffs = {n: float(np.abs(o - r.numpy()).max()) for n, o, r in zip(names, ort_protos, ref_protos)}
    diffs["boxes"] = float(np.abs(ort_boxes - out.boxes().numpy()).max())
    diffs["scores"] = float(np.abs(ort_scores - out.scores.sigmoid().numpy()).max())
    return diffs
