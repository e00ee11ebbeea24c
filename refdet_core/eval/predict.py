"""``refdet predict``: a checkpoint over every video of a layout, on the backend asked for -> one submission.

Backends (``BACKENDS``): ``torch`` (eager, fp32 unless the saved or asked precision says bf16), ``torch-bf16``
(bf16 autocast: pays only on CUDA with bf16 or a CPU with AMX / AVX512-BF16), ``onnxruntime`` (the graphs of
``eval/export.py``: the references through ``support.onnx`` once per video, each batch of frames through
``query.onnx`` with the prototypes as inputs; CUDA's provider where the device is a GPU and onnxruntime has it)
and ``onnxruntime-int8`` (the query graph with dynamically quantized weights). Every backend shares the torch
predictor's candidates, re-ID crops, colour rule, key frames and post-processing, so they differ only in how the
network runs; ``refdet bench --inference`` measures them side by side.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from refdet_core.data.layout import read_layout
from refdet_core.data.probe import check_decoded, expected_frames
from refdet_core.device import pick_device
from refdet_core.eval.candidates import reference_histograms, top_decoded_candidates
from refdet_core.eval.export import export_onnx, proto_names
from refdet_core.eval.submission import check_submission_path, write_submission
from refdet_core.eval.video import VideoPredictor, load_predictor, predict_layout, throughput, tracks

log = logging.getLogger(__name__)

BACKENDS = ("torch", "torch-bf16", "onnxruntime", "onnxruntime-int8")


class BackendError(ValueError):
    """A backend that does not exist or cannot run here (one line for the command line)."""


class OnnxPredictor(VideoPredictor):
    """A VideoPredictor whose network runs in onnxruntime: ``support.onnx`` once per video, ``query.onnx`` per batch
    with the prototypes as inputs; candidates, re-ID crops (the torch model's backbone), the colour rule and
    post-processing are the torch predictor's."""

    def __init__(self, base: VideoPredictor, support: Path, query: Path, *, threads: int = 0) -> None:
        import onnxruntime as ort

        vars(self).update(vars(base))
        self.stage_s = type(base.stage_s)(float)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        providers = ["CPUExecutionProvider"]
        if base.device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": base.device.index or 0}))
        self.support_session = ort.InferenceSession(str(support), opts, providers=providers)
        self.query_session = ort.InferenceSession(str(query), opts, providers=providers)
        self.providers = self.query_session.get_providers()
        self.names = proto_names(base.model)
        self.protos: dict[str, np.ndarray] = {}
        self.match_templates: list[torch.Tensor] = []  # the protos' match templates on the device, once per video

    @torch.inference_mode()
    def set_references(self, reference_paths: Sequence[str | Path]) -> None:
        refs = self.reference_tensor(reference_paths)
        self.ref_hist = reference_histograms(refs[0], self.check.bins)
        self.protos = dict(zip(self.names, self.support_session.run(self.names, {"support": refs.numpy()})))
        self.embed_references(refs)
        self.match_templates = [
            torch.from_numpy(v).to(self.device) for n, v in self.protos.items() if n.startswith("match_")
        ]

    def templates(self) -> list[torch.Tensor]:
        return self.match_templates

    def candidates_of(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t0 = time.perf_counter()
        feed = {"query": np.ascontiguousarray(x.cpu().numpy()), **self.protos}
        boxes, scores = self.query_session.run(["boxes", "scores"], feed)
        t1 = time.perf_counter()
        k, iou = self.check.candidates, self.check.nms_iou
        found = top_decoded_candidates(
            torch.from_numpy(boxes).to(self.device), torch.from_numpy(scores[..., 0]).to(self.device), k=k, iou=iou
        )
        self.stage_s["model"] += t1 - t0
        self.stage_s["candidates"] += time.perf_counter() - t1
        return found


def quantize_query(onnx_dir: Path) -> Path:
    """``query.int8.onnx``: the query graph with INT8 weights (onnxruntime's dynamic quantization)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = onnx_dir / "query.int8.onnx"
    quantize_dynamic(str(onnx_dir / "query.onnx"), str(out), weight_type=QuantType.QInt8)
    return out


def check_backend(name: str, precision: str | None = None) -> None:
    """BackendError for a backend that does not exist or cannot run at ``precision``."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    if name.startswith("onnxruntime") and precision == "bf16":
        raise BackendError(f"backend {name!r} runs fp32 graphs; bf16 precision is for the torch backends")


def load_backends(
    ckpt: str | Path,
    backends: Sequence[str],
    *,
    work: Path,
    device: str | torch.device = "cpu",
    batch: int = 8,
    precision: str | None = None,
    detect_every: int = 1,
    **settings: Any,
) -> dict[str, VideoPredictor]:
    """One predictor per backend over the same checkpoint and inference settings; the onnxruntime backends share
    one export of the graphs into ``work`` (which must outlive the predictors). ``precision`` applies to
    ``torch`` (the onnxruntime graphs are fp32: bf16 with them is a BackendError); ``settings`` (``post``,
    ``check``) go to ``load_predictor``."""
    for name in backends:
        check_backend(name, precision)
    out: dict[str, VideoPredictor] = {}
    graphs: dict[str, Path] = {}
    for name in backends:
        prec = "bf16" if name == "torch-bf16" else (precision if name == "torch" else "fp32")
        base = load_predictor(ckpt, device=device, batch=batch, precision=prec, detect_every=detect_every, **settings)
        if name.startswith("onnxruntime"):
            if not graphs:
                log.info("exporting the ONNX graphs of %s", ckpt)
                graphs = export_onnx(ckpt, work / "onnx")
            query = quantize_query(work / "onnx") if name.endswith("int8") else graphs["query"]
            base = OnnxPredictor(base, graphs["support"], query)
        out[name] = base
    return out


def predict_to_submission(
    data_root: str | Path,
    ckpt: str | Path,
    out_path: str | Path,
    *,
    backend: str = "torch",
    device: str = "auto",
    batch: int = 8,
    precision: str | None = None,
    enter: float | None = None,
    colour_check: bool | None = None,
    detect_every: int = 1,
    progress: bool = True,
    partial: bool = False,
    force: bool = False,
) -> dict:
    """``refdet predict``: every video of ``data_root`` -> challenge submission at ``out_path`` (atomic).

    Every video of the layout is in the file (``"detections": []`` when nothing is found). ``device`` "auto"
    picks CUDA when available. The checkpoint's saved inference settings apply (``load_predictor``); ``enter``
    (leave keeps its ratio to enter), ``colour_check`` and ``precision`` override them when given;
    ``detect_every`` k runs the model on every k-th frame only (``eval.keyframes``); ``backend`` is one of
    ``BACKENDS`` (the onnxruntime ones export the graphs first, into a temporary folder). ``out_path``, the
    backend and every video are checked before the model loads; a video that stops decoding early is an error
    naming it (``partial``: a warning, its frames decoded are covered). ``force`` replaces an ``out_path`` that is
    not a submission.

    Returns:
        ``{"videos", "frames", "seconds", "frames_per_s", "out", "postprocess", "selection", "precision",
        "detect_every", "backend"}``.
    """
    check_submission_path(out_path, force=force)
    check_backend(backend, precision)  # before any file or model is touched
    layout = read_layout(data_root, probe_video=False)
    expected = expected_frames(layout, sorted(layout.videos), partial=partial)
    with tempfile.TemporaryDirectory(prefix="refdet-predict-") as work:
        predictor = load_backends(
            ckpt,
            [backend],
            work=Path(work),
            device=pick_device(device),
            batch=batch,
            precision=precision,
            detect_every=detect_every,
        )[backend]
        if enter is not None:
            post = predictor.post
            ratio = post.leave / post.enter if post.enter > 0 else 0.6
            predictor.post = replace(post, enter=float(enter), leave=float(enter) * ratio)
        if colour_check is not None:
            predictor.check = replace(predictor.check, colour=bool(colour_check))
        results = predict_layout(data_root, predictor, progress=progress, frames_hint=expected)
    paths = {vid: layout.videos[vid].video_path for vid in results}
    check_decoded({vid: len(r.frames) for vid, r in results.items()}, expected, paths, partial=partial)
    write_submission(out_path, tracks(results), list(results))
    settings = {"postprocess": vars(predictor.post), "selection": vars(predictor.check)}
    extra = {"precision": predictor.precision, "detect_every": detect_every, "backend": backend}
    return {**throughput(results), "out": str(out_path), **settings, **extra}
