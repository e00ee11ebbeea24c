"""`refdet bench --inference`: the same checkpoint over the same videos per backend, with the accuracy guard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime")

from refdet_core.cli import main  # noqa: E402
from refdet_core.config import config_from_dict  # noqa: E402
from refdet_core.models.refdet import RefDet  # noqa: E402
from refdet_core.train.checkpoint import save_checkpoint  # noqa: E402

TINY = {"img_size": 64, "support_size": 32, "encoder_kwargs": {"depth": 2, "embed_dim": 64, "num_heads": 2,
        "img_size": 32}, "width": 0.125, "proto_dims": [8, 16, 24, 32], "head_mode": "prototype"}  # fmt: skip


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = config_from_dict(TINY, source="test")
    torch.manual_seed(0)
    model = RefDet(cfg.model, num_base_classes=0)
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "ckpt", model=model, cfg=cfg, meta={"base_classes": []})


def test_inference_bench_reports_every_backend(ckpt: Path, demo_root: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["bench", "--inference", "--ckpt", str(ckpt), "--data", str(demo_root), "--backend", "onnxruntime",
            "--batch", "4", "--json"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["backends"]) == {"torch", "onnxruntime"}
    assert report["img_size"] == 64 and report["frames"] > 0 and report["decode_ms_per_frame"] > 0
    assert report["device"] == "cpu" and report["providers"]["torch"] == ["torch"]
    assert report["providers"]["onnxruntime"][0] == "CPUExecutionProvider"
    for row in report["backends"].values():
        assert row["frames_per_s"] > 0 and row["rss_peak_mb"] > 0
        assert {"model", "candidates", "post"} <= set(row["ms_per_frame"])
    guard = report["backends"]["onnxruntime"]["st_iou_diff_vs_torch_fp32"]
    assert abs(guard) <= 0.01, "the exported graphs must give torch's tracks"
    assert report["backends"]["torch"]["st_iou_diff_vs_torch_fp32"] == 0.0


def test_unknown_backend_is_one_line(ckpt: Path, demo_root: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["bench", "--inference", "--ckpt", str(ckpt), "--data", str(demo_root), "--backend", "tensorrt"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown backend 'tensorrt'" in err[0]


def test_inference_bench_detect_every_entries(ckpt: Path, demo_root: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["bench", "--inference", "--ckpt", str(ckpt), "--data", str(demo_root), "--backend", "torch",
            "--detect-every", "1", "--detect-every", "3", "--batch", "4", "--json"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    rows = report["backends"]
    assert set(rows) == {"torch", "torch/every3"} and rows["torch/every3"]["detect_every"] == 3
    assert rows["torch"]["detect_every"] == 1 and all(r["frames_per_s"] > 0 for r in rows.values())


def test_predict_backend_onnxruntime_gives_torchs_submission(
    ckpt: Path, demo_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from refdet_core.eval.submission import read_submission

    subs = {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / f"{backend}.json"
        argv = ["predict", "--data", str(demo_root), "--ckpt", str(ckpt), "--out", str(out), "--backend", backend,
                "--enter", "0", "--batch", "4", "-q"]  # fmt: skip
        assert main(argv) == 0
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["backend"] == backend
        subs[backend] = read_submission(out)
    assert sorted(subs["torch"]) == sorted(subs["onnxruntime"])
    close = total = 0
    for vid, track in subs["torch"].items():
        other = subs["onnxruntime"][vid]
        assert sorted(track) == sorted(other), f"{vid}: other frames"  # enter 0 keeps every frame in both
        for f, box in track.items():
            total += 1
            close += max(abs(a - b) for a, b in zip(box[:4], other[f][:4])) <= 1.0
    assert total > 0 and close >= 0.95 * total, f"only {close} of {total} boxes agree within 1 px"


def test_predict_backend_errors_are_one_line(ckpt: Path, demo_root: Path, tmp_path: Path, capsys) -> None:
    from refdet_core.cli import PREDICT_BACKENDS
    from refdet_core.eval.predict import BACKENDS

    assert PREDICT_BACKENDS == BACKENDS
    base = ["predict", "--data", str(demo_root), "--ckpt", str(ckpt), "--out", str(tmp_path / "s.json")]
    with pytest.raises(SystemExit) as exit_info:  # argparse's choices
        main([*base, "--backend", "tensorrt"])
    assert exit_info.value.code == 2 and "invalid choice: 'tensorrt'" in capsys.readouterr().err
    assert main([*base, "--backend", "onnxruntime", "--precision", "bf16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "runs fp32 graphs" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "s.json").exists()


def test_inference_bench_runs_only_what_was_asked(ckpt: Path, demo_root: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["bench", "--inference", "--ckpt", str(ckpt), "--data", str(demo_root), "--backend", "onnxruntime",
            "--detect-every", "1", "--detect-every", "2", "--batch", "4", "--json"]  # fmt: skip
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out)["backends"]
    assert set(rows) == {"torch", "onnxruntime", "onnxruntime/every2"}  # torch every frame only: the guard


def test_validate_backend_onnxruntime_scores_like_torch(
    ckpt: Path, demo_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """06's protocol on the exported graphs (`refdet validate --backend onnxruntime`, notebook 06's `backend`):
    every evaluated frame gets torch's candidates, so every arm scores as with torch."""
    import numpy as np

    from refdet_core.data.layout import read_layout
    from refdet_core.eval import validate
    from refdet_core.eval.predict import load_backends
    from refdet_core.eval.video import layout_ground_truth

    layout = read_layout(demo_root)
    ids = layout.labelled_ids[:3]
    gt = layout_ground_truth(layout, ids)
    predictors = load_backends(ckpt, ["torch", "onnxruntime"], work=tmp_path, batch=4)
    reports = {
        name: validate.validate(p, demo_root, eval_ids=ids[:2], tune_ids=ids[2:], gt=gt, swap=False)
        for name, p in predictors.items()
    }
    for vid in ids[:2]:
        ours, theirs = (reports[n]["results"][vid].candidates for n in ("onnxruntime", "torch"))
        assert theirs.scores.max() > 0, "a model that finds nothing would agree trivially"
        np.testing.assert_allclose(ours.scores, theirs.scores, atol=1e-3)
        np.testing.assert_allclose(ours.reid, theirs.reid, atol=1e-3)
    for arm, scores in reports["torch"]["arms"].items():
        assert reports["onnxruntime"]["arms"][arm]["mean_st_iou"] == pytest.approx(scores["mean_st_iou"], abs=0.01)
    argv = ["validate", "--ckpt", str(ckpt), "--data", str(demo_root), "--device", "cpu", "--batch", "4",
            "--backend", "onnxruntime", "--no-swap", "-q", "--json"]  # fmt: skip
    assert main(argv) == 0 and "mean_st_iou" in json.loads(capsys.readouterr().out)
