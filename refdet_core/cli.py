"""The ``refdet`` command. Each subcommand is a thin wrapper over a library function.

Bad input exits with status 2 and one line on stderr; ``--json`` prints one JSON object on stdout.
Set ``REFDET_DEBUG=1`` to get the traceback instead of the one-line error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# user-facing errors: (module, class name). An error can only come from a module that is loaded, so the handler
# looks them up in sys.modules and never imports anything: the error path stays as fast as the failing command
USER_ERRORS = (
    ("refdet_core.config", "ConfigError"),
    ("refdet_core.destination", "DestinationError"),
    ("refdet_core.data.layout", "LayoutError"),
    ("refdet_core.demo", "DemoError"),
    ("refdet_core.data.frames", "VideoError"),
    ("refdet_core.data.store", "StoreError"),
    ("refdet_core.eval.submission", "SubmissionError"),
    ("refdet_core.eval.submission", "AnnotationError"),
    ("refdet_core.checkpoint", "CheckpointError"),
    ("refdet_core.train.trainer", "TrainingStopped"),
    ("refdet_core.runner", "NotebookError"),
    ("refdet_core.speed.options", "OptionError"),
    ("refdet_core.eval.export", "ExportError"),
    ("refdet_core.eval.predict", "BackendError"),
)

# eval/predict.py's BACKENDS, spelled here so that `--help` and a wrong choice import no torch (a test keeps them equal)
PREDICT_BACKENDS = ("torch", "torch-bf16", "onnxruntime", "onnxruntime-int8")


def _user_error_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [FileNotFoundError, NotADirectoryError, IsADirectoryError]
    for module, name in USER_ERRORS:
        error = getattr(sys.modules.get(module), name, None)
        if error is not None:
            types.append(error)
    return tuple(types)


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line error of every other bad input (usage stays under ``--help``)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"refdet: error: {message} (see `{self.prog} --help`)\n")


def _quiet_video_logs() -> None:
    """OpenCV and FFmpeg write their own lines on stderr for a corrupt video; the one-line error says it."""
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    os.environ.setdefault("OPENCV_VIDEOIO_DEBUG", "0")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _emit(obj: dict[str, Any], as_json: bool, text: Callable[[dict[str, Any]], str]) -> None:
    if as_json:
        print(json.dumps(obj, default=float))
    else:
        print(text(obj))


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header]] + [[f"{c:,}" if isinstance(c, int) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


# ---------------------------------------------------------------- data
def cmd_data_demo(args: argparse.Namespace) -> None:
    from refdet_core.demo import write_demo

    width, height = args.size
    summary = write_demo(
        args.out,
        videos=args.videos,
        frames=args.frames,
        train_frames=args.train_frames,
        val_videos=args.val_videos,
        tune_videos=args.tune_videos,
        seed=args.seed,
        width=width,
        height=height,
        fps=args.fps,
        workers=args.workers,
    )
    counts = ", ".join(f"{len(summary[k])} {k}" for k in ("train", "val", "tune"))
    print(f"wrote demo set to {args.out}: {counts} videos ({len(summary['empty'])} without the target)")
    print(f"splits in {Path(args.out) / 'splits.json'}; `refdet data check {args.out}` lists every video")


def _check_text(obj: dict[str, Any]) -> str:
    keys = ("frames", "fps", "width", "height", "annotated_frames", "boxes", "references")
    rows = [[vid, *(v[k] for k in keys)] for vid, v in obj["videos"].items()]
    t = obj["totals"]
    rows.append(["total", t["frames"], "", "", "", t["annotated_frames"], t["boxes"], t["references"]])
    return _table(rows, ["video", *keys])


def cmd_data_check(args: argparse.Namespace) -> None:
    from refdet_core.data.layout import check_layout

    _emit(check_layout(args.root), args.json, _check_text)


def cmd_cache_build(args: argparse.Namespace) -> None:
    from refdet_core.config import config_from_dict, load_config, parse_override
    from refdet_core.data.store import build_store

    overrides = dict(parse_override(c) for c in args.c)
    cfg = load_config(args.params, overrides) if args.params else config_from_dict(overrides, source="-c")
    stats = build_store(args.root, args.out, cfg, force=args.force)
    _emit(stats, args.json, lambda s: "\n".join(f"{k}: {v}" for k, v in s.items()))


# ---------------------------------------------------------------- model
def cmd_params(args: argparse.Namespace) -> None:
    from refdet_core.config import config_from_dict, load_config, parse_override

    overrides = dict(parse_override(c) for c in args.c)
    cfg = load_config(args.params, overrides) if args.params else config_from_dict(overrides, source="-c")
    from refdet_core.models.params import param_summary  # torch loads only once the config is known good

    def text(s: dict[str, Any]) -> str:
        rows = [[name, m["total"], m["trainable"], m["frozen"]] for name, m in s["modules"].items()]
        rows.append(["total", s["total"], s["trainable"], s["total"] - s["trainable"]])
        budget = f"\n{s['total'] / 50e6:.1%} of the 50 M budget"
        return _table(rows, ["module", "total", "trainable", "frozen"]) + budget

    _emit(param_summary(cfg), args.json, text)


def _weights_text(r: dict[str, Any]) -> str:
    lines = [f"{k}: {r[k]}" for k in ("file", "format", "variant", "loaded")]
    for key in ("missing", "unexpected", "mismatched", "ignored"):
        shown = ", ".join(list(r[key])[:5]) + (", ..." if len(r[key]) > 5 else "")
        lines.append(f"{key}: {len(r[key])}" + (f" ({shown})" if shown else ""))
    return "\n".join(lines)


def cmd_weights_check(args: argparse.Namespace) -> None:
    from refdet_core.models.weights import WeightsError, check_weights

    report = check_weights(args.file, encoder=args.encoder)
    _emit(report, args.json, _weights_text)
    bad = {k: len(report[k]) for k in ("missing", "unexpected", "mismatched") if report[k]}
    if bad:
        counts = ", ".join(f"{n} {k}" for k, n in bad.items())
        raise WeightsError(f"{args.file}: does not load into {report['variant']} ({counts})")


def cmd_weights_convert(args: argparse.Namespace) -> None:
    from refdet_core.models.backbone import convert_ultralytics

    s = convert_ultralytics(args.src, args.out)
    print(f"wrote {s['out']}: {s['tensors']} tensors, {s['backbone_tensors']} of them the backbone's")


# ---------------------------------------------------------------- train / predict / score
DEFAULT_RUN_DIR = Path("outputs") / "train"  # refdet train without -o


def _check_params_file(path: str | None, notebooks: tuple[str, ...] | None = None) -> None:
    """A bad params file fails here, before torch and the model code load."""
    if path:
        from refdet_core.config import params_file_config

        params_file_config(path, notebooks=notebooks)


def cmd_train(args: argparse.Namespace) -> None:
    from refdet_core.folders import prepare_run_dir

    _check_params_file(args.params, ("05_train_stage2",))
    out = Path(args.out or DEFAULT_RUN_DIR)
    prepare_run_dir(out, force=args.force, clean=False)  # before torch loads
    from refdet_core.train.run import train_from_params

    result = train_from_params(args.params, out_dir=out, resume=args.resume, force=args.force)
    if result is not None:
        print(json.dumps(result, default=float))


def cmd_predict(args: argparse.Namespace) -> None:
    from refdet_core.eval.submission import check_submission_path

    check_submission_path(args.out, force=args.force)  # before torch and the model load
    from refdet_core.eval.predict import predict_to_submission

    summary = predict_to_submission(
        args.data,
        args.ckpt,
        args.out,
        backend=args.backend,
        device=args.device,
        batch=args.batch,
        precision=args.precision,
        enter=args.enter,
        colour_check=False if args.no_colour_check else None,
        detect_every=args.detect_every,
        progress=not args.quiet,
        partial=args.allow_truncated,
        force=args.force,
    )
    print(json.dumps(summary, default=float))


def cmd_validate(args: argparse.Namespace) -> None:
    from refdet_core.checkpoint import read_checkpoint
    from refdet_core.data.layout import read_layout, read_tune_ids
    from refdet_core.device import pick_device
    from refdet_core.eval import validate, video
    from refdet_core.eval.predict import load_backends

    _, ckpt_cfg, meta = read_checkpoint(args.ckpt)
    layout = read_layout(args.data)
    train_ids, val_ids = video.validation_split(layout, ckpt_cfg.data, meta)
    tune_ids = read_tune_ids(args.data, layout.labelled_ids) or train_ids
    gt = video.layout_ground_truth(layout, layout.labelled_ids)
    with tempfile.TemporaryDirectory(prefix="refdet-validate-") as work:
        predictor = load_backends(
            args.ckpt, [args.backend], work=Path(work), device=pick_device(args.device), batch=args.batch
        )[args.backend]
        report = validate.validate(
            predictor, args.data, eval_ids=val_ids, tune_ids=tune_ids, gt=gt, swap=not args.no_swap,
            progress=not args.quiet,
        )  # fmt: skip
    out = validate.summary(report)

    def text(s: dict[str, Any]) -> str:
        arms = [("full pipeline", s["st_iou"])] + [(a, s[f"{a}_st_iou"]) for a in validate.ARMS if a != "full"]
        arms.append(("reference swap", s["reference_swap_st_iou"]))
        rows = [
            [
                name,
                f"{sum(v.values()) / max(len(v), 1):.4f}",
                *(f"{v.get(vid, float('nan')):.3f}" for vid in s["videos"]),
            ]
            for name, v in arms
        ]
        return _table(rows, ["arm", "mean", *s["videos"]]) + f"\nsettings chosen on: {', '.join(s['tune_videos'])}"

    _emit(out, args.json, text)


def cmd_score(args: argparse.Namespace) -> None:
    from refdet_core.eval.submission import score_files

    def text(s: dict[str, Any]) -> str:
        rows = [[vid, f"{v:.4f}"] for vid, v in s["videos"].items()]
        rows.append(["mean", f"{s['mean_st_iou']:.4f}"])
        return _table(rows, ["video", "st_iou"])

    _emit(score_files(args.gt, args.pred, allow_missing=args.allow_missing), args.json, text)


def cmd_export(args: argparse.Namespace) -> None:
    from refdet_core.eval.export import export_onnx

    paths = export_onnx(args.ckpt, args.out, img_size=args.size)
    manifest = json.loads(Path(paths["manifest"]).read_text())
    summary = {"out": str(args.out), **{k: str(v) for k, v in paths.items()}, "img_size": manifest["img_size"]}
    if args.check:
        from refdet_core.eval.export import compare_onnx, load_for_export

        model, size, support, k = load_for_export(args.ckpt, args.size)
        diffs = compare_onnx(model, paths, img_size=size, support_size=support, k_shot=k)
        summary["max_abs_diff"] = max(diffs.values())
    print(json.dumps(summary, default=float))


# ---------------------------------------------------------------- speed
def cmd_profile(args: argparse.Namespace) -> None:
    _check_params_file(args.params)
    from refdet_core.speed.profiler import profile_from_params

    report = profile_from_params(args.params, steps=args.steps, warmup=args.warmup, trace=args.trace)

    def text(r: dict[str, Any]) -> str:
        rows = [[k, f"{v['ms']:.1f}", f"{v['pct']:.1f}"] for k, v in r["components"].items()]
        return _table(rows, ["component", "ms", "%"]) + f"\nepisodes/s: {r['episodes_per_s']:.3f}"

    _emit(report, args.json, text)


DEMO_CKPT = Path("outputs/demo/05_train_stage2/checkpoint")  # what `make demo` trains


def _inference_inputs(args: argparse.Namespace) -> tuple[Path, Path]:
    """(checkpoint, data root) of ``bench --inference``: flags, else a 06 params file's run_dir/data_root, else
    the demo run's checkpoint and data."""
    ckpt, data = args.ckpt, args.data
    if args.params:
        from refdet_core.config import read_yaml

        params = read_yaml(args.params)
        data = data or params.get("data_root")
        run_dir = params.get("run_dir")
        ckpt = ckpt or (Path(run_dir) / "05_train_stage2" / "checkpoint" if run_dir else None)
    return Path(ckpt or DEMO_CKPT), Path(data or "data/demo")


def _inference_text(r: dict[str, Any]) -> str:
    stages = sorted({k for b in r["backends"].values() for k in b["ms_per_frame"]})
    rows = [
        [name, f"{b['frames_per_s']:.2f}", *(f"{b['ms_per_frame'].get(k, 0):.1f}" for k in stages),
         f"{b['rss_peak_mb']:.0f}", f"{b['mean_st_iou']:.4f}", f"{b['st_iou_diff_vs_torch_fp32']:+.4f}"]
        for name, b in r["backends"].items()
    ]  # fmt: skip
    head = ["backend", "frames/s", *(f"{k} ms" for k in stages), "RSS MB", "ST-IoU", "vs torch"]
    return (
        _table(rows, head)
        + f"\n{r['frames']} frames at {r['img_size']} px; decode alone {r['decode_ms_per_frame']:.1f} ms/frame"
    )


def _bench_inputs(params: str | None) -> tuple[Path | None, list[Path]]:
    """(params file, 04 metrics files) of a training bench: ``-p``, else the demo profile's 04 params file
    (else the bench's own demo sizes); the accuracy of lossy options from 04's full, then demo run."""
    from refdet_core.runner import project_root

    root = project_root()
    default = root / "params" / "demo" / "04_optimize.yaml"
    chosen = Path(params) if params else (default if default.is_file() else None)
    return chosen, [root / "outputs" / profile / "04_optimize" / "metrics.json" for profile in ("full", "demo")]


def cmd_bench(args: argparse.Namespace) -> None:
    if args.inference:
        from refdet_core.device import pick_device
        from refdet_core.speed.inference import run_inference_bench

        ckpt, data = _inference_inputs(args)
        report = run_inference_bench(
            ckpt,
            data,
            backends=args.backend or ["torch", "onnxruntime"],
            batch=args.batch,
            repeats=args.repeats or 1,
            detect_every=args.detect_every or [1],
            device=pick_device(args.device),
        )
        _emit(report, args.json, _inference_text)
        return
    params, accuracy_files = _bench_inputs(args.params)
    _check_params_file(params)
    from refdet_core.speed.bench import run_bench

    report = run_bench(
        presets=args.preset or ["seed", "fast"],
        options=args.option or [],
        episodes=args.episodes,
        repeats=args.repeats or 3,
        params=params,
        accuracy_files=accuracy_files,
    )

    def text(r: dict[str, Any]) -> str:
        rows = [
            [
                name,
                f"{p['episodes_per_s']:.3f}",
                f"{p['epoch_s_projected'] / 60:.1f}",
                f"{r['speedup'].get(name, float('nan')):.2f}x",
            ]
            for name, p in r["presets"].items()
        ]
        return _table(rows, ["preset", "episodes/s", "epoch min (projected)", "vs seed"])

    _emit(report, args.json, text)


# ---------------------------------------------------------------- notebooks
def cmd_run(args: argparse.Namespace) -> None:
    from refdet_core.runner import run_notebooks

    results = run_notebooks(args.notebooks or None, profile=args.profile, out_dir=args.out)
    for r in results:
        print(f"{r['notebook']}: ok in {r['seconds']:.0f} s -> {r['out_dir']}")


def _width_height(text: str) -> tuple[int, int]:
    """``"1280x720"`` -> (1280, 720)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected WIDTHxHEIGHT, e.g. 1280x720") from None
    return width, height


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="refdet", description="YOLOv8n-RefDet: data, training, profiling, validation")
    p.add_argument("-v", "--verbose", action="store_true", help="log INFO messages to stderr")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="demo data and layout checks").add_subparsers(dest="data_command", required=True)
    d = data.add_parser("demo", help="write the demo set in the challenge layout")
    d.add_argument("out")
    d.add_argument("--videos", type=int, default=8)
    d.add_argument("--frames", type=int, default=150, help="frames per validation video (and training video)")
    d.add_argument("--train-frames", type=int, default=None, help="frames per training video (default --frames)")
    d.add_argument("--val-videos", type=int, default=None, help="held-out videos (default a quarter)")
    d.add_argument(
        "--tune-videos", type=int, default=0, help="held-out videos to choose settings on (splits.json 'tune')"
    )
    d.add_argument("--seed", type=int, default=0)
    d.add_argument(
        "--size", type=_width_height, default=(640, 360), metavar="WxH", help="frame size (challenge videos: 1280x720)"
    )
    d.add_argument("--fps", type=int, default=25)
    d.add_argument("--workers", type=int, default=None, help="processes writing videos (default: one per core)")
    d.set_defaults(func=cmd_data_demo)
    d = data.add_parser("check", help="validate a challenge layout and summarise it")
    d.add_argument("root")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_data_check)

    cache = sub.add_parser("cache", help="frame store").add_subparsers(dest="cache_command", required=True)
    c = cache.add_parser("build", help="decode each video once into the frame store")
    c.add_argument("root")
    c.add_argument("--out", required=True)
    c.add_argument("--json", action="store_true")
    c.add_argument("-p", "--params", help="params YAML (img_size, store_bg_share, store_format ...)")
    c.add_argument("-c", action="append", default=[], metavar="KEY=VALUE", help="config override")
    c.add_argument("--force", action="store_true", help="replace DIR even when it holds something else")
    c.set_defaults(func=cmd_cache_build)

    c = sub.add_parser("params", help="parameter breakdown per module")
    c.add_argument("--json", action="store_true")
    c.add_argument("-p", "--params", help="params YAML")
    c.add_argument("-c", action="append", default=[], metavar="KEY=VALUE", help="config override")
    c.set_defaults(func=cmd_params)

    weights = sub.add_parser("weights", help="check and convert pretrained weight files")
    w = weights.add_subparsers(dest="weights_command", required=True)
    c = w.add_parser("check", help="does a DINOv3 file (Meta's .pth, timm's, transformers' model.safetensors) load?")
    c.add_argument("file", help="weights file, or a transformers model folder")
    c.add_argument("--encoder", default=None, help="encoder to check against (default: the one of the file's width)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_weights_check)
    c = w.add_parser("convert", help="Ultralytics yolov8n .pt -> .safetensors that loads without ultralytics")
    c.add_argument("src", help="Ultralytics checkpoint, e.g. yolov8n.pt (reading it needs ultralytics)")
    c.add_argument("out", help="output .safetensors")
    c.set_defaults(func=cmd_weights_convert)

    c = sub.add_parser("train", help="train without a notebook (runs under torchrun too)")
    c.add_argument("-p", "--params", required=True)
    c.add_argument("-o", "--out", default=None)
    c.add_argument("--resume", default=None, metavar="CKPT")
    c.add_argument("--force", action="store_true", help="write into DIR even when it holds files of no run")
    c.set_defaults(func=cmd_train)

    c = sub.add_parser(
        "predict",
        help="whole-video inference -> challenge submission",
        description="Every frame of every video of a challenge layout -> one submission JSON. The post-processing, "
        "candidate selection and precision saved beside the checkpoint (by notebook 06: inference.json) apply; "
        "the flags below override them.",
    )
    c.add_argument(
        "--data", required=True, help="challenge layout root: samples/<video_id>/{object_images,drone_video.mp4}"
    )
    c.add_argument("--ckpt", required=True, help="checkpoint folder written by training (05 or refdet train)")
    c.add_argument("--out", required=True, help="submission JSON to write (atomically)")
    c.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1 ...")
    c.add_argument("--batch", type=int, default=8, help="frames per forward pass (default 8)")
    c.add_argument(
        "--backend",
        choices=PREDICT_BACKENDS,
        default="torch",
        help="how the network runs: eager PyTorch (default), PyTorch in bf16, or onnxruntime with the exported "
        "graphs (exported first, about 30 s; onnxruntime-int8: INT8 weights); `refdet bench --inference` compares them",
    )
    c.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default=None,
        help="autocast precision (default: the saved one, else fp32)",
    )
    c.add_argument(
        "--enter",
        type=float,
        default=None,
        help="score that starts an interval (default: the saved one; where 06 chose relative scores, "
        "1 - the margin below the video's best); leave keeps its ratio",
    )
    c.add_argument("--no-colour-check", action="store_true", help="pick each frame's box by the detector's score alone")
    c.add_argument(
        "--detect-every",
        type=_positive,
        default=1,
        metavar="K",
        help="run the model on every K-th frame and interpolate the boxes between (default 1: every frame)",
    )
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    c.add_argument(
        "--allow-truncated",
        action="store_true",
        help="a video that stops decoding early is a warning (the frames decoded are covered), not an error",
    )
    c.add_argument("--force", action="store_true", help="replace --out even when it is not a submission")
    c.set_defaults(func=cmd_predict)

    c = sub.add_parser(
        "export",
        help="ONNX graphs of a checkpoint: references -> prototypes, frame + prototypes -> boxes and scores",
    )
    c.add_argument("--ckpt", required=True, help="checkpoint folder (model.safetensors, config.yaml, meta.json)")
    c.add_argument("--out", required=True, help="folder for support.onnx, query.onnx and export.json")
    c.add_argument(
        "--size", type=int, default=None, help="frame letterbox size (default: the size inference uses, whole frames)"
    )
    c.add_argument("--check", action="store_true", help="run both graphs in onnxruntime and compare with PyTorch")
    c.set_defaults(func=cmd_export)

    c = sub.add_parser("validate", help="notebook 06's protocol: settings chosen on tuning videos, every arm scored")
    c.add_argument("--ckpt", required=True, help="checkpoint folder")
    c.add_argument("--data", required=True, help="challenge layout root with annotations")
    c.add_argument("--device", default="auto", help="auto, cpu or cuda")
    c.add_argument("--batch", type=int, default=8, help="frames per forward pass")
    c.add_argument(
        "--backend", choices=PREDICT_BACKENDS, default="torch", help="how the network runs (as in `refdet predict`)"
    )
    c.add_argument("--no-swap", action="store_true", help="skip the reference-swap control")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_validate)
    c = sub.add_parser("score", help="ST-IoU of a submission against annotations")
    c.add_argument("--gt", required=True)
    c.add_argument("--pred", required=True)
    c.add_argument("--allow-missing", action="store_true", help="score videos missing from --pred as empty (a warning)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_score)

    c = sub.add_parser("profile", help="per-component timing of a full training step")
    c.add_argument("-p", "--params", required=True)
    c.add_argument("--json", action="store_true")
    c.add_argument("--steps", type=_positive, default=5)
    c.add_argument("--warmup", type=int, default=2)
    c.add_argument("--trace", default=None, help="write a torch.profiler trace to this file")
    c.set_defaults(func=cmd_profile)

    c = sub.add_parser("bench", help="side-by-side training throughput of presets and options")
    c.add_argument("--preset", action="append", help="seed, fast, ... (repeatable)")
    c.add_argument("--option", action="append", help="registry option on top of seed (repeatable)")
    c.add_argument("--episodes", type=_positive, default=4, help="measured episodes per repeat")
    c.add_argument("--repeats", type=_positive, default=None, help="interleaved rounds (default 3; 1 with --inference)")
    c.add_argument("-p", "--params", default=None, help="params YAML for data root and sizes (--inference: a 06 file)")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.add_argument("--inference", action="store_true", help="whole-video inference per backend instead of training")
    c.add_argument("--backend", action="append", help=f"with --inference: {', '.join(PREDICT_BACKENDS)} (repeatable)")
    c.add_argument("--ckpt", default=None, help=f"with --inference: checkpoint folder (default {DEMO_CKPT})")
    c.add_argument("--data", default=None, help="with --inference: challenge layout root (default data/demo)")
    c.add_argument("--batch", type=_positive, default=8, help="with --inference: frames per forward pass")
    c.add_argument(
        "--device", default="cpu", help="with --inference: cpu (default), cuda, cuda:1, auto (CUDA when available)"
    )
    c.add_argument(
        "--detect-every",
        type=_positive,
        action="append",
        metavar="K",
        help="with --inference: also run each backend on every K-th frame only (repeatable; default 1)",
    )
    c.set_defaults(func=cmd_bench)

    c = sub.add_parser("run", help="run notebooks headless with papermill")
    c.add_argument("notebooks", nargs="*", help="names like 01_data_cache (default: all)")
    c.add_argument("--profile", default="demo", choices=["demo", "smoke", "full"])
    c.add_argument("-o", "--out", default=None, help="run folder (default outputs/<profile>)")
    c.set_defaults(func=cmd_run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.verbose:
        _quiet_video_logs()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if os.environ.get("REFDET_DEBUG"):
        args.func(args)
        return 0
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("refdet: interrupted", file=sys.stderr)
        return 130
    except _user_error_types() as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if isinstance(err, OSError) and getattr(err, "filename", None):
            msg = f"{Path(err.filename)}: {err.strerror or 'not found'}"
        print(f"refdet: error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
