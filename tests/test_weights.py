"""Pretrained-weight files: DINOv3 in Meta's, timm's and transformers' layouts, YOLOv8n from Ultralytics.

The DINOv3 files are built here with the real key names and shapes (Meta: ``dinov3/models/vision_transformer.py``
and ``dinov3/layers``; transformers: ``models/dinov3_vit/modeling_dinov3_vit.py``) and random values; tiny ones
check outputs against timm's own conversion, full-size ViT-S/16 ones check the key names end to end.
"""

from __future__ import annotations

import json
import sys
from copy import deepcopy
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from refdet_core.cli import main
from refdet_core.config import ModelConfig
from refdet_core.models.backbone import YoloBackbone, load_ultralytics_state_dict, read_ultralytics_file
from refdet_core.models.support_encoder import IMAGENET_MEAN, IMAGENET_STD, SupportEncoder
from refdet_core.models.weights import WeightsError, read_encoder_weights

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 32}
VITS = {"dim": 384, "depth": 12, "heads": 6}  # Meta's dinov3_vits16
VITS_QKVB_PARAMS = 21_596_160  # timm's vit_small_patch16_dinov3_qkvb (the plain variant: 21,586,944)


def meta_state_dict(*, dim: int = 32, depth: int = 2, heads: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """A DINOv3 ViT state dict as Meta's ``DinoVisionTransformer`` saves it (qkv bias with a k-bias mask, 4 storage
    tokens, layer scale, MLP ratio 4). The key part of ``qkv.bias`` is random too: only ``bias_mask`` zeroes it."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 0.2, offset: float = 0.0) -> torch.Tensor:
        return offset + scale * torch.randn(*shape, generator=g)

    head = dim // heads
    sd = {
        "cls_token": r(1, 1, dim),
        "storage_tokens": r(1, 4, dim),
        "mask_token": torch.zeros(1, dim),
        "patch_embed.proj.weight": r(dim, 3, 16, 16, scale=0.05),
        "patch_embed.proj.bias": r(dim),
        "rope_embed.periods": 100.0 ** (2 * torch.arange(head // 4, dtype=torch.float32) / (head // 2)),
    }
    mask = torch.ones(3 * dim)
    mask[dim : 2 * dim] = 0
    for i in range(depth):
        b = f"blocks.{i}."
        sd |= {
            b + "norm1.weight": r(dim, offset=1.0),
            b + "norm1.bias": r(dim),
            b + "attn.qkv.weight": r(3 * dim, dim),
            b + "attn.qkv.bias": r(3 * dim, scale=0.5),
            b + "attn.qkv.bias_mask": mask.clone(),
            b + "attn.proj.weight": r(dim, dim),
            b + "attn.proj.bias": r(dim),
            b + "ls1.gamma": r(dim, offset=0.5),
            b + "norm2.weight": r(dim, offset=1.0),
            b + "norm2.bias": r(dim),
            b + "mlp.fc1.weight": r(4 * dim, dim),
            b + "mlp.fc1.bias": r(4 * dim),
            b + "mlp.fc2.weight": r(dim, 4 * dim),
            b + "mlp.fc2.bias": r(dim),
            b + "ls2.gamma": r(dim, offset=0.5),
        }
    return sd | {"norm.weight": r(dim, offset=1.0), "norm.bias": r(dim)}


def meta_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Meta's keys -> transformers' DINOv3ViTModel keys, as its conversion script does (qkv split into q/k/v
    projections, no key bias, mask token (1, 1, D), no RoPE buffer)."""
    renames = {
        "attn.proj.": "attention.o_proj.",
        "ls1.gamma": "layer_scale1.lambda1",
        "ls2.gamma": "layer_scale2.lambda1",
        "mlp.fc1.": "mlp.up_proj.",
        "mlp.fc2.": "mlp.down_proj.",
    }
    top = {
        "cls_token": "embeddings.cls_token",
        "storage_tokens": "embeddings.register_tokens",
        "patch_embed.proj.weight": "embeddings.patch_embeddings.weight",
        "patch_embed.proj.bias": "embeddings.patch_embeddings.bias",
        "norm.weight": "norm.weight",
        "norm.bias": "norm.bias",
    }
    out = {"embeddings.mask_token": sd["mask_token"][None]}
    for key, value in sd.items():
        if key in top:
            out[top[key]] = value
        elif key.startswith("blocks.") and not key.endswith(("bias_mask", "qkv.weight", "qkv.bias")):
            rest = key.split(".", 2)[2]
            for old, new in renames.items():
                rest = rest.replace(old, new)
            out[f"layer.{key.split('.')[1]}.{rest}"] = value
        elif key.endswith(("qkv.weight", "qkv.bias")):
            layer, kind = f"layer.{key.split('.')[1]}.attention", key.rsplit(".", 1)[1]
            for name, part in zip("qkv", value.chunk(3)):
                if not (name == "k" and kind == "bias"):
                    out[f"{layer}.{name}_proj.{kind}"] = part.clone()
    return out


def tokens(enc: SupportEncoder, x: torch.Tensor) -> torch.Tensor:
    """Final normed tokens of the encoder for images in [0, 1]."""
    with torch.no_grad():
        return enc.forward_trainable(enc.forward_frozen(x))


def timm_reference(sd: dict[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    """timm's own conversion (``eva.checkpoint_filter_fn``) of Meta's dict into ``name``, run on normalised ``x``."""
    ref = timm.create_model(name, pretrained=False, num_classes=0, **TINY).eval()
    ref.load_state_dict(timm.models.eva.checkpoint_filter_fn(dict(sd), ref), strict=True)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return ref.forward_features((x - mean) / std)


def encoder(weights: Path | str, name: str = "vit_small_patch16_dinov3") -> SupportEncoder:
    return SupportEncoder(name=name, encoder_kwargs=TINY, proto_dims=(8,), weights=str(weights)).eval()


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("refdet: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_meta_file_keeps_q_v_bias_and_matches_timm_reference(tmp_path: Path) -> None:
    sd = meta_state_dict()
    torch.save(sd, tmp_path / "dinov3_tiny.pth")
    enc = encoder(tmp_path / "dinov3_tiny.pth")
    assert enc.variant == "vit_small_patch16_dinov3_qkvb"  # picked so that the q/v biases have a place
    torch.testing.assert_close(enc.model.blocks[1].attn.v_bias, sd["blocks.1.attn.qkv.bias"][64:])
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ours = tokens(enc, x)
    torch.testing.assert_close(ours, timm_reference(sd, "vit_small_patch16_dinov3_qkvb", x))
    dropped = timm_reference(sd, "vit_small_patch16_dinov3", x)  # timm's filter silently drops the biases here
    assert (ours - dropped).abs().max() > 1e-2


def test_transformers_and_timm_files_give_the_same_encoder(tmp_path: Path) -> None:
    sd = meta_state_dict(seed=3)
    torch.save(sd, tmp_path / "meta.pth")
    folder = tmp_path / "dinov3-hf"
    folder.mkdir()
    save_file(meta_to_hf(sd), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "dinov3_vit", "hidden_size": 32}))
    ref = timm.create_model("vit_small_patch16_dinov3_qkvb", pretrained=False, num_classes=0, **TINY)
    ref.load_state_dict(timm.models.eva.checkpoint_filter_fn(dict(sd), ref))
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "timm.safetensors"))
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    expected = tokens(encoder(tmp_path / "meta.pth"), x)
    for source in (folder, folder / "model.safetensors", tmp_path / "timm.safetensors"):
        enc = encoder(source)
        assert enc.variant == "vit_small_patch16_dinov3_qkvb"
        torch.testing.assert_close(tokens(enc, x), expected, msg=str(source))
    assert read_encoder_weights(folder).format == "hf"
    assert read_encoder_weights(tmp_path / "timm.safetensors").format == "timm"


def test_transformers_key_bias_loads_only_when_zero(tmp_path: Path) -> None:
    hf = meta_to_hf(meta_state_dict())
    hf["layer.0.attention.k_proj.bias"] = torch.zeros(32)  # a config with key_bias=True
    save_file(hf, str(tmp_path / "zero.safetensors"))
    assert "layer.0.attention.k_proj.bias" in read_encoder_weights(tmp_path / "zero.safetensors").ignored
    encoder(tmp_path / "zero.safetensors")
    hf["layer.0.attention.k_proj.bias"] = torch.ones(32)
    save_file(hf, str(tmp_path / "ones.safetensors"))
    with pytest.raises(WeightsError, match=r"ones\.safetensors: blocks\.0\.attn: a non-zero key bias"):
        encoder(tmp_path / "ones.safetensors")


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda sd: sd.pop("blocks.1.mlp.fc2.weight"), r"1 missing \(blocks\.1\.mlp\.fc2\.weight\)"),
        (lambda sd: sd.update({"cls_norm.weight": torch.ones(32)}), r"1 unexpected \(cls_norm\.weight\)"),
        (lambda sd: sd.update({"norm.weight": torch.ones(16)}), r"of another shape \(norm\.weight\)"),
        (lambda sd: sd.pop("blocks.0.attn.qkv.bias_mask"), "non-zero key bias"),
        (lambda sd: sd.update({"rope_embed.periods": torch.ones(2)}), "rope_embed.periods"),
    ],
)
def test_a_file_that_does_not_fit_fails_in_one_line_naming_it(tmp_path: Path, edit, match: str) -> None:
    sd = meta_state_dict()
    edit(sd)
    path = tmp_path / "edited.pth"
    torch.save(sd, path)
    with pytest.raises(WeightsError, match=match) as info:
        encoder(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_truncated_or_foreign_files_give_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save(meta_state_dict(), tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    save_file({k: v.contiguous() for k, v in YoloBackbone().state_dict().items()}, str(tmp_path / "yolo.safetensors"))
    cases = {"cut.pth": "not a readable", "cut.safetensors": "not a readable", "yolo.safetensors": "not a DINOv3"}
    for name, words in cases.items():
        path = tmp_path / name
        assert words in one_line_error(capsys, ["weights", "check", str(path)])
        assert str(path) in one_line_error(capsys, ["params", "-c", f"encoder_weights={path}", "--json"])
    assert "not found" in one_line_error(capsys, ["weights", "check", str(tmp_path / "nope.pth")])


@pytest.mark.parametrize("fmt", ["meta", "hf"])
def test_full_size_vits16_checks_and_loads(tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    sd = meta_state_dict(**VITS)
    if fmt == "meta":
        path = tmp_path / "dinov3_vits16_pretrain_lvd1689m-08c60483.pth"
        torch.save(sd, path)
    else:
        path = tmp_path / "model.safetensors"
        save_file(meta_to_hf(sd), str(path))
    del sd
    assert main(["weights", "check", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == fmt and report["variant"] == "vit_small_patch16_dinov3_qkvb"
    assert report["loaded"] == 186 and report["missing"] == [] and report["unexpected"] == []
    assert main(["params", "-c", f"encoder_weights={path}", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    e = 384  # the prototype projections: LayerNorm(2E) + Linear(2E, d) per scale
    proj = sum(4 * e + 2 * e * d + d for d in ModelConfig().proto_dims)
    assert summary["modules"]["support_encoder"]["total"] == VITS_QKVB_PARAMS + proj


def test_weights_check_reports_what_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sd = meta_state_dict(**VITS)
    del sd["blocks.11.ls2.gamma"]
    torch.save(sd, tmp_path / "short.pth")
    assert main(["weights", "check", str(tmp_path / "short.pth"), "--json"]) == 2
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["missing"] == ["blocks.11.gamma_2"] and report["loaded"] == 185
    line = f"refdet: error: {tmp_path / 'short.pth'}: does not load into {report['variant']} (1 missing)\n"
    assert captured.err == line
    assert main(["weights", "check", str(tmp_path / "short.pth")]) == 2
    text = capsys.readouterr().out
    assert "format: meta" in text and "missing: 1 (blocks.11.gamma_2)" in text


def ultralytics_model():
    yolo = pytest.importorskip("ultralytics").YOLO
    torch.manual_seed(0)
    return yolo("yolov8n.yaml")  # built from the yaml: random weights, nothing downloaded


def test_convert_ultralytics_then_load_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    model = ultralytics_model()
    model.save(str(tmp_path / "yolov8n.pt"))  # as YOLO.save writes it: {"model": half DetectionModel, "ema": None}
    torch.save({"model": None, "ema": deepcopy(model.model).half()}, tmp_path / "last.pt")  # as training writes it
    halved = {k: v.half().float() if v.is_floating_point() else v for k, v in model.model.state_dict().items()}
    reference = YoloBackbone().eval()
    load_ultralytics_state_dict(reference, halved)
    for name in ("yolov8n", "last"):
        assert main(["weights", "convert", str(tmp_path / f"{name}.pt"), str(tmp_path / f"{name}.safetensors")]) == 0
        assert "tensors" in capsys.readouterr().out
    for name in [m for m in sys.modules if m.split(".")[0] == "ultralytics"] + ["ultralytics"]:
        monkeypatch.setitem(sys.modules, name, None)  # from here on, ultralytics cannot be imported
    x = torch.rand(1, 3, 64, 64)
    for name in ("yolov8n", "last"):
        loaded = YoloBackbone().eval()
        load_ultralytics_state_dict(loaded, read_ultralytics_file(tmp_path / f"{name}.safetensors"))
        with torch.no_grad():
            for got, want in zip(loaded(x)[1:], reference(x)[1:]):  # P3-P5: P2 is refdet's own branch
                torch.testing.assert_close(got, want)
    again = tmp_path / "again.safetensors"
    err = one_line_error(capsys, ["weights", "convert", str(tmp_path / "yolov8n.pt"), str(again)])
    assert "needs the optional package ultralytics" in err and not again.exists()


def test_converted_file_that_does_not_fit_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = ultralytics_model()
    torch.save({k: v for k, v in model.model.state_dict().items() if not k.startswith("model.9.")}, tmp_path / "cut.pt")
    out = tmp_path / "out.safetensors"
    err = one_line_error(capsys, ["weights", "convert", str(tmp_path / "cut.pt"), str(out)])
    assert f"{tmp_path / 'cut.pt'}: lacks" in err and "backbone keys" in err and not out.exists()
    err = one_line_error(capsys, ["weights", "convert", str(tmp_path / "cut.pt"), str(tmp_path / "out.bin")])
    assert "must end in .safetensors" in err


def test_checkpoint_of_a_qkvb_encoder_loads_without_its_weights_file(demo_root: Path, tmp_path: Path) -> None:
    """A run trained from Meta's file (q/v biases: the _qkvb variant) gives a checkpoint that predict and export
    rebuild as that variant, without the weights file (gone, or on another machine)."""
    from refdet_core.checkpoint import model_from_checkpoint
    from refdet_core.config import config_from_dict
    from refdet_core.eval.video import load_predictor
    from refdet_core.train.run import build_training

    weights = tmp_path / "meta.pth"
    torch.save(meta_state_dict(), weights)
    cfg = config_from_dict(
        {"data_root": str(demo_root), "store_dir": str(tmp_path / "store"), "img_size": 64, "support_size": 32,
         "encoder": "vit_small_patch16_dinov3", "encoder_weights": str(weights), "encoder_kwargs": TINY,
         "proto_dims": [8, 8, 16, 16], "width": 0.125, "epochs": 1, "episodes_per_epoch": 1, "bn_recalibrate": 0,
         "precision": "fp32"},
        source="test",
    )  # fmt: skip
    setup = build_training(cfg, out_dir=tmp_path / "run", progress=False)
    assert setup.model.support_encoder.variant == "vit_small_patch16_dinov3_qkvb"
    setup.trainer.fit()
    weights.unlink()
    model, _, meta = model_from_checkpoint(tmp_path / "run" / "checkpoint")
    assert meta["encoder_variant"] == "vit_small_patch16_dinov3_qkvb"
    trained = setup.model.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())
    assert load_predictor(tmp_path / "run" / "checkpoint").model.support_encoder.variant.endswith("_qkvb")
