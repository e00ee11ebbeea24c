"""ONNX export: onnxruntime equals PyTorch, and the prototypes are a real input of the query graph."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from refdet_core.config import config_from_dict  # noqa: E402
from refdet_core.eval.export import compare_onnx, example_inputs, export_onnx, proto_names  # noqa: E402
from refdet_core.models.refdet import RefDet  # noqa: E402
from refdet_core.train.checkpoint import save_checkpoint  # noqa: E402

SIZE = 64
TINY = {
    "img_size": SIZE,
    "support_size": SIZE,
    "k_shot": 3,
    "encoder_kwargs": {"depth": 2, "embed_dim": 64, "num_heads": 2, "img_size": SIZE},
    "width": 0.125,
    "proto_dims": [8, 16, 24, 32],
}


def tiny_model(**overrides) -> RefDet:
    cfg = config_from_dict({**TINY, **overrides}, source="test")
    torch.manual_seed(0)
    return RefDet(cfg.model, num_base_classes=2).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[RefDet, dict[str, Path]]:
    model = tiny_model()
    return model, export_onnx(model, tmp_path_factory.mktemp("onnx"), img_size=SIZE, support_size=SIZE, k_shot=3)


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_onnx_matches_pytorch(exported) -> None:
    model, paths = exported
    diffs = compare_onnx(model, paths, img_size=SIZE, support_size=SIZE, k_shot=3, batch=3)  # export used batch 2
    assert set(diffs) == {"proto_p2", "proto_p3", "proto_p4", "proto_p5", "boxes", "scores"}
    assert max(diffs.values()) < 1e-4, diffs


def test_prototypes_are_an_input_not_constants(exported) -> None:
    """Other references -> other prototypes -> other scores (the original baked random prototypes in)."""
    model, paths = exported
    query, support_a = example_inputs(model, img_size=SIZE, support_size=SIZE, k_shot=3, seed=3)
    _, support_b = example_inputs(model, img_size=SIZE, support_size=SIZE, k_shot=3, seed=4)
    sup, qry = session(paths["support"]), session(paths["query"])
    names = proto_names(model)
    protos_a = sup.run(names, {"support": support_a.numpy()})
    protos_b = sup.run(names, {"support": support_b.numpy()})
    scores_a = qry.run(["scores"], {"query": query.numpy(), **dict(zip(names, protos_a))})[0]
    scores_b = qry.run(["scores"], {"query": query.numpy(), **dict(zip(names, protos_b))})[0]
    assert np.abs(scores_a - scores_b).max() > 1e-4
    with torch.no_grad():
        ref_b = model(query, support_b).scores.sigmoid().numpy()
    np.testing.assert_allclose(scores_b, ref_b, atol=1e-4)


def test_several_prototypes_at_once(exported) -> None:
    """N is dynamic in both graphs: N = 2 videos give (B, A, 2) scores equal to PyTorch's."""
    model, paths = exported
    query, s1 = example_inputs(model, img_size=SIZE, support_size=SIZE, k_shot=3, seed=5)
    _, s2 = example_inputs(model, img_size=SIZE, support_size=SIZE, k_shot=3, seed=6)
    support = torch.cat([s1, s2])  # (2, K, 3, Ss, Ss)
    names = proto_names(model)
    protos = session(paths["support"]).run(names, {"support": support.numpy()})
    assert [p.shape[0] for p in protos] == [2] * 4
    boxes, scores = session(paths["query"]).run(
        ["boxes", "scores"], {"query": query.numpy(), **dict(zip(names, protos))}
    )
    with torch.no_grad():
        out = model(query, support)
    assert scores.shape == tuple(out.scores.shape) and scores.shape[-1] == 2
    np.testing.assert_allclose(scores, out.scores.sigmoid().numpy(), atol=1e-4)
    np.testing.assert_allclose(boxes, out.boxes().numpy(), atol=1e-4)


def test_export_from_checkpoint_without_p2(tmp_path: Path) -> None:
    model = tiny_model(use_p2=False)
    cfg = config_from_dict({**TINY, "use_p2": False}, source="test")
    ckpt = save_checkpoint(tmp_path / "ckpt", model=model, cfg=cfg, meta={"base_classes": ["a", "b"]})
    paths = export_onnx(ckpt, tmp_path / "onnx")  # sizes from the checkpoint's config
    manifest = json.loads(paths["manifest"].read_text())
    assert manifest["img_size"] == SIZE and manifest["k_shot"] == 3
    assert list(manifest["support"]["outputs"]) == ["proto_p3", "proto_p4", "proto_p5"]
    assert [i.name for i in session(paths["query"]).get_inputs()] == ["query", "proto_p3", "proto_p4", "proto_p5"]
    diffs = compare_onnx(model, paths, img_size=SIZE, support_size=SIZE, k_shot=3)
    assert max(diffs.values()) < 1e-4, diffs


def test_standard_head_cannot_export(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="standard"):
        export_onnx(tiny_model(head_mode="standard"), tmp_path, img_size=SIZE, support_size=SIZE)


def test_colour_cue_exports(tmp_path: Path) -> None:
    model = tiny_model(colour_bins=3, head_mode="prototype")
    paths = export_onnx(model, tmp_path, img_size=SIZE, support_size=SIZE, k_shot=3)
    diffs = compare_onnx(model, paths, img_size=SIZE, support_size=SIZE, k_shot=3, batch=2)
    assert max(diffs.values()) < 1e-4, diffs


def test_export_leaves_the_callers_model_as_it_was(tmp_path: Path) -> None:
    """Mode, weights and outputs of the exported model object are the same before and after export."""
    model = tiny_model().train()
    query, support = example_inputs(model, img_size=SIZE, support_size=SIZE, k_shot=3, seed=7)
    modes = {n: m.training for n, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        before = model.eval()(query, support).scores.clone()
    model.train()
    export_onnx(model, tmp_path, img_size=SIZE, support_size=SIZE, k_shot=3)
    compare_onnx(model, {"query": tmp_path / "query.onnx", "support": tmp_path / "support.onnx"},
                 img_size=SIZE, support_size=SIZE, k_shot=3)  # fmt: skip
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        after = model.eval()(query, support).scores
    assert torch.equal(before, after)


def test_checkpoint_export_uses_the_inference_img_size(tmp_path: Path) -> None:
    """A checkpoint that trained on 64 px windows of 128 px frames exports at 128: what inference feeds."""
    over = {"img_size": 2 * SIZE, "train_window": SIZE}
    cfg = config_from_dict({**TINY, **over}, source="test")
    ckpt = save_checkpoint(tmp_path / "ckpt", model=tiny_model(), cfg=cfg, meta={"base_classes": ["a", "b"]})
    paths = export_onnx(ckpt, tmp_path / "onnx")
    assert json.loads(paths["manifest"].read_text())["img_size"] == 2 * SIZE
    shape = session(paths["query"]).get_inputs()[0].shape
    assert shape[1:] == [3, 2 * SIZE, 2 * SIZE]


def test_export_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from refdet_core.cli import main

    cfg = config_from_dict(TINY, source="test")
    ckpt = save_checkpoint(tmp_path / "ckpt", model=tiny_model(), cfg=cfg, meta={"base_classes": ["a", "b"]})
    assert main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "onnx"), "--check"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["img_size"] == SIZE and summary["max_abs_diff"] < 1e-4
    assert (tmp_path / "onnx" / "query.onnx").is_file() and (tmp_path / "onnx" / "support.onnx").is_file()
    assert main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "bad"), "--size", "70"]) == 2
    assert "multiple of 32" in capsys.readouterr().err


@pytest.mark.parametrize("match_size", [32, 64])  # references downsampled 2x, and kept at their size
def test_reference_match_exports(tmp_path: Path, match_size: int) -> None:
    """ref_match: the match templates are support-graph outputs and query-graph inputs, equal to PyTorch's."""
    model = tiny_model(ref_match=True, match_size=match_size, head_mode="prototype")
    paths = export_onnx(model, tmp_path, img_size=SIZE, support_size=SIZE, k_shot=3)
    diffs = compare_onnx(model, paths, img_size=SIZE, support_size=SIZE, k_shot=3)
    assert {"match_p3", "match_p5", "scores"} <= set(diffs) and max(diffs.values()) < 1e-4, diffs


def test_match_size_must_fit_the_backbone() -> None:
    from refdet_core.config import ConfigError

    with pytest.raises(ConfigError, match="match_size 48"):
        tiny_model(ref_match=True, match_size=48, head_mode="prototype")
