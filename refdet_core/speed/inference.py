"""Whole-video inference bench: one checkpoint, the same videos, several backends side by side in one process.

Each backend runs every video end to end (decode included) in turn, interleaved over ``repeats`` rounds so that
machine noise falls on all of them alike. Reported per backend: frames/s end to end, ms per frame in each stage
(model, candidates with their colour match, post-processing; decoding runs in a reader thread beside the model,
so its own cost is measured apart, alone), peak RSS while the backend ran, and the mean ST-IoU with its
difference from ``torch`` in fp32 (the accuracy guard).

Backends: ``eval/predict.py``'s ``BACKENDS``, the ones ``refdet predict --backend`` runs (``torch`` here in
fp32). With ``detect_every`` values besides 1, each backend also runs as ``<backend>/every<k>``: the model on
every k-th frame only (``eval/keyframes.py``).
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from refdet_core.checkpoint import read_checkpoint
from refdet_core.data.layout import read_layout
from refdet_core.eval.predict import load_backends
from refdet_core.eval.video import VideoPredictor, evaluate, frame_batches, layout_ground_truth, validation_split

log = logging.getLogger(__name__)

RSS_EVERY_S = 0.1


class RssPeak:
    """Peak resident set size (MB) sampled by a thread while the context is open."""

    def __enter__(self) -> RssPeak:
        import psutil

        self.proc, self.peak_mb, self.stop = psutil.Process(), 0.0, threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.stop.is_set():
            self.peak_mb = max(self.peak_mb, self.proc.memory_info().rss / 2**20)
            self.stop.wait(RSS_EVERY_S)

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()
        self.peak_mb = max(self.peak_mb, self.proc.memory_info().rss / 2**20)


def decode_ms_per_frame(video_path: str | Path, img_size: int) -> float:
    """Decoding and letterboxing alone, ms per frame (the reader thread's work, measured without the model)."""
    t0, n = time.perf_counter(), 0
    for batch in frame_batches(video_path, img_size, 16):
        n += len(batch.frames)
    return (time.perf_counter() - t0) * 1e3 / max(n, 1)


def warm_up(predictor: VideoPredictor, reference_paths: Sequence[str | Path]) -> None:
    """One untimed batch, so that one-off costs (kernel selection, allocations) stay out of the figures."""
    predictor.set_references(reference_paths)
    predictor.detect(np.zeros((predictor.batch, predictor.img_size, predictor.img_size, 3), dtype=np.uint8))
    predictor.stage_s.clear()


def _one_pass(predictor: VideoPredictor, layout: Any, video_ids: Sequence[str]) -> tuple[dict, float, float]:
    """Every video through one predictor -> (results, wall seconds, peak RSS MB)."""
    with RssPeak() as rss:
        t0 = time.perf_counter()
        results = {
            v: predictor.predict_video(layout.videos[v].video_path, layout.videos[v].reference_paths, video_id=v)
            for v in video_ids
        }
        seconds = time.perf_counter() - t0
    return results, seconds, rss.peak_mb


def run_inference_bench(
    ckpt: str | Path,
    data_root: str | Path,
    *,
    backends: Sequence[str] = ("torch", "onnxruntime"),
    video_ids: Sequence[str] | None = None,
    batch: int = 8,
    repeats: int = 1,
    detect_every: Sequence[int] = (1,),
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Whole-video inference of ``ckpt`` over ``video_ids`` (default: the checkpoint's validation videos) per
    backend and ``detect_every`` value, interleaved over ``repeats`` rounds.

    Returns:
        ``{"backends": {name: {"frames_per_s", "ms_per_frame": {stage: ms}, "rss_peak_mb", "mean_st_iou",
        "st_iou_diff_vs_torch_fp32"}}, "img_size", "frames", "videos", "decode_ms_per_frame", "threads", "device",
        "providers" (per entry: onnxruntime's execution providers, or ["torch"])}``.
    """
    assert repeats >= 1 and batch >= 1, f"repeats {repeats} and batch {batch} must be >= 1"
    assert all(k >= 1 for k in detect_every), f"detect_every values must be >= 1, got {list(detect_every)}"
    _, cfg, meta = read_checkpoint(ckpt)
    layout = read_layout(data_root)
    ids = list(video_ids) if video_ids else validation_split(layout, cfg.data, meta)[1]
    names = list(dict.fromkeys(["torch", *backends]))  # torch fp32 is the guard's reference
    with tempfile.TemporaryDirectory(prefix="refdet-inference-") as work:
        predictors = load_backends(ckpt, names, work=Path(work), device=device, batch=batch, precision="fp32")
        entries = entry_names(backends, detect_every)  # torch at k > 1 only if asked
        runs: dict[str, list] = {e: [] for e in entries}
        for predictor in predictors.values():
            warm_up(predictor, layout.videos[ids[0]].reference_paths)
        for r in range(repeats):
            # bars stay when done (no leave=False): a closed notebook bar shows "Loading widget..." after a reload
            for entry, (name, k) in tqdm(entries.items(), desc=f"inference round {r + 1}/{repeats}", unit="pass"):
                predictor = predictors[name]
                predictor.stage_s.clear()
                predictor.detect_every = k
                results, seconds, rss = _one_pass(predictor, layout, ids)
                runs[entry].append((results, seconds, rss, dict(predictor.stage_s)))
    gt = layout_ground_truth(layout, [v for v in ids if v in layout.labelled_ids])
    frames = sum(len(r.frames) for r in runs["torch"][0][0].values())
    report = {e: _summary(runs[e], gt, frames) for e in entries}
    for entry, row in report.items():
        row["st_iou_diff_vs_torch_fp32"] = row["mean_st_iou"] - report["torch"]["mean_st_iou"]
        row["detect_every"] = entries[entry][1]
    size = predictors["torch"].img_size
    return {
        "backends": report,
        "img_size": size,  # whole frames letterboxed to this size
        "videos": ids,
        "frames": frames,
        "decode_ms_per_frame": decode_ms_per_frame(layout.videos[ids[0]].video_path, size),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "providers": {e: getattr(predictors[n], "providers", ["torch"]) for e, (n, _) in entries.items()},
    }


def entry_names(backends: Sequence[str], detect_every: Sequence[int]) -> dict[str, tuple[str, int]]:
    """``{entry: (backend, k)}``: ``torch`` at k = 1 always (the guard's reference), then every backend at every
    k; k = 1 keeps the backend's name, others are ``<backend>/every<k>``."""
    out = {"torch": ("torch", 1)}
    for name in backends:
        for k in dict.fromkeys(detect_every):
            out[name if k == 1 else f"{name}/every{k}"] = (name, k)
    return out


def _summary(runs: list, gt: dict, frames: int) -> dict[str, Any]:
    """Median frames/s over the rounds, stage ms per frame of that round, peak RSS, ST-IoU of the first round."""
    order = sorted(range(len(runs)), key=lambda i: runs[i][1])
    results, seconds, _, stages = runs[order[len(order) // 2]]
    scores = evaluate(results, gt) if gt else {"mean_st_iou": float("nan")}
    return {
        "frames_per_s": frames / seconds,
        "ms_per_frame": {k: v * 1e3 / frames for k, v in sorted(stages.items())},
        "rss_peak_mb": max(r[2] for r in runs),
        "mean_st_iou": scores["mean_st_iou"],
    }
