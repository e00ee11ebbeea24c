"""Model tests on tiny configs of the real classes (no weights from a hub, no network)."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
from torch import nn

from refdet_core.config import ModelConfig, config_from_dict
from refdet_core.models import RefDet, SupportEncoder, validate_model_config
from refdet_core.models.fusion import FUSION
from refdet_core.models.params import ORIGINAL_FIGURES, flops_per_stage, param_summary, param_table, time_per_stage
from refdet_core.models.support_encoder import colour_histogram

TINY_ENCODER = {"depth": 2, "embed_dim": 64, "num_heads": 2, "img_size": 64}
IMG, SUP = 64, 64


def tiny_cfg(**overrides) -> ModelConfig:
    base = ModelConfig(encoder_kwargs=dict(TINY_ENCODER), width=0.125, proto_dims=(8, 16, 24, 32), trainable_blocks=1)
    return dataclasses.replace(base, **overrides)


def tiny_model(**overrides) -> RefDet:
    torch.manual_seed(0)
    return RefDet(tiny_cfg(**overrides), num_base_classes=3)


def episode(b: int = 2, n: int = 2, k: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    query = torch.randint(0, 256, (b, 3, IMG, IMG), dtype=torch.uint8, generator=g)
    support = torch.randint(0, 256, (n, k, 3, SUP, SUP), dtype=torch.uint8, generator=g)
    return query, support


@pytest.mark.parametrize("use_p2", [True, False])
def test_shapes_per_stage(use_p2: bool) -> None:
    model = tiny_model(use_p2=use_p2).eval()
    query, support = episode(b=2, n=3)
    levels = 4 if use_p2 else 3
    strides = (4, 8, 16, 32)[-levels:]
    dims = (8, 16, 24, 32)[-levels:]
    protos = model.encode_support(support).per_scale
    assert [tuple(p.shape) for p in protos] == [(3, d) for d in dims]
    feats = model.forward_features(query)
    assert [tuple(f.shape) for f in feats] == [
        (2, c, IMG // s, IMG // s) for c, s in zip((16, 32, 64, 128)[-levels:], strides)
    ]
    fused = model.fusion(feats, protos)
    assert [f.shape[1] for f in fused] == list((64, 128, 256, 256)[-levels:])
    out = model(query, support)
    a = sum((IMG // s) ** 2 for s in strides)
    assert out.box_logits.shape == (2, a, 64) and out.scores.shape == (2, a, 3) and out.cls_logits.shape == (2, a, 3)
    assert [tuple(e.shape) for e in out.embeddings] == [(2, (IMG // s) ** 2, d) for s, d in zip(strides, dims)]
    assert out.anchors.shape == (a, 2) and out.strides.shape == (a,) and len(out.level_shapes) == levels
    assert [tuple(m.shape) for m in out.score_maps()] == [(2, 3, IMG // s, IMG // s) for s in strides]
    assert out.boxes().shape == (2, a, 4)


def test_n_equals_b_episode_scores_every_prototype() -> None:
    model = tiny_model().eval()
    query, support = episode(b=2, n=2)
    out = model(query, support)
    maps = out.score_maps()
    assert all(m.shape[:2] == (2, 2) for m in maps)  # (B, N, H, W): every query against every prototype
    assert not torch.allclose(maps[0][:, 0], maps[0][:, 1])


@pytest.mark.parametrize("fusion", ["psalm", "cheaf"])
def test_every_trainable_parameter_gets_a_gradient(fusion: str) -> None:
    model = tiny_model(fusion=fusion).train()
    query, support = episode(b=2, n=2)
    out = model(query, support)
    g = torch.Generator().manual_seed(3)
    parts = [out.box_logits, out.scores, out.cls_logits, *out.embeddings]
    loss = sum((t.float() * torch.randn(t.shape, generator=g)).mean() for t in parts)
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert any(n.startswith("support_encoder.model.blocks.1.") for n, _ in trainable)
    assert any(n.startswith("support_encoder.proj.") for n, _ in trainable)
    dead = [n for n, p in trainable if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"parameters without gradient: {dead}"
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert any(n.startswith("support_encoder.model.blocks.0.") for n in frozen)


def test_cached_equals_uncached() -> None:
    model = tiny_model().eval()
    query, support = episode()
    with torch.no_grad():
        direct = model(query, support)
        model.set_reference_images(support)
        cached = model(query, use_cache=True)
    assert torch.equal(direct.scores, cached.scores) and torch.equal(direct.box_logits, cached.box_logits)
    model.clear_cache()
    with pytest.raises(RuntimeError, match="set_reference_images"):
        model(query, use_cache=True)


@pytest.mark.parametrize("fusion", ["psalm", "cheaf"])
def test_fusion_uses_prototypes_and_no_label(fusion: str) -> None:
    torch.manual_seed(0)
    module = FUSION[fusion](in_channels=(16, 32, 64, 128), proto_dims=(8, 16, 24, 32)).eval()
    feats = [torch.randn(2, c, 32 // s, 32 // s) for c, s in zip((16, 32, 64, 128), (2, 4, 8, 16))]
    protos = [torch.randn(3, d) for d in (8, 16, 24, 32)]
    other = [torch.randn(3, d) for d in (8, 16, 24, 32)]
    with torch.no_grad():
        a, b = module(feats, protos), module(feats, other)
        permuted = module(feats, [p[[2, 0, 1]] for p in protos])
    for x, y, z in zip(a, b, permuted):
        assert (x - y).abs().max() > 1e-3  # the reference changes the fused map
        torch.testing.assert_close(x, z, rtol=1e-4, atol=1e-5)  # fused with the set of N: order (a label) is unused


def test_unknown_names_raise_before_building(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_build(*args, **kwargs):
        raise AssertionError("weights were built before validation")

    monkeypatch.setattr(SupportEncoder, "__init__", no_build)
    for key, value, choice in [
        ("encoder", "vit_huge", "vit_small_patch16_dinov3"),
        ("fusion", "bogus", "psalm, cheaf"),
        ("head_mode", "both", "standard, prototype, dual"),
    ]:
        with pytest.raises(ValueError, match=choice):
            RefDet(tiny_cfg(**{key: value}), num_base_classes=3)
        with pytest.raises(ValueError, match=choice):
            validate_model_config(tiny_cfg(**{key: value}), img_size=64, support_size=64)


def test_bad_sizes_raise() -> None:
    with pytest.raises(ValueError, match="img_size 650"):
        validate_model_config(ModelConfig(), img_size=650, support_size=256)
    with pytest.raises(ValueError, match="support_size 250.*16"):
        validate_model_config(ModelConfig(), img_size=640, support_size=250)
    with pytest.raises(ValueError, match="support_size 272.*32"):
        validate_model_config(ModelConfig(encoder_patch=32), img_size=640, support_size=272)
    validate_model_config(ModelConfig(encoder_patch=32), img_size=640, support_size=256)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_encoder_loads_local_checkpoint(tmp_path, suffix: str) -> None:
    torch.manual_seed(5)
    source = SupportEncoder(encoder_kwargs=TINY_ENCODER, proto_dims=(8,))
    sd = {k: v.contiguous() for k, v in source.model.state_dict().items()}
    path = tmp_path / f"enc{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        torch.save({"model": sd}, path)
    torch.manual_seed(6)
    loaded = SupportEncoder(encoder_kwargs=TINY_ENCODER, proto_dims=(8,), weights=str(path))
    assert loaded.pretrained_source == str(path)
    for key, value in source.model.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[key]), key
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        SupportEncoder(encoder_kwargs=TINY_ENCODER, proto_dims=(8,), weights=str(tmp_path / "nope.pth"))


def test_random_init_is_warned_once_and_recorded(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from refdet_core import logs

    monkeypatch.setattr(logs, "_seen", set())  # as in a fresh process
    with caplog.at_level(logging.DEBUG, logger="refdet_core"):
        encoders = [SupportEncoder(encoder_kwargs=TINY_ENCODER, proto_dims=(8,)) for _ in range(3)]
    assert all(enc.pretrained_source == "random" for enc in encoders)
    said = [r for r in caplog.records if "random init" in r.getMessage()]
    assert [r.levelno for r in said] == [logging.WARNING, logging.DEBUG, logging.DEBUG], "warned once per process"


def test_frozen_prefix_plus_trainable_equals_full_encoder() -> None:
    torch.manual_seed(0)
    enc = SupportEncoder(encoder_kwargs=TINY_ENCODER, proto_dims=(8,), trainable_blocks=1).eval()
    x = torch.rand(3, 3, SUP, SUP)
    tokens = enc.forward_frozen(x)
    assert tokens.shape == (3, 5 + (SUP // 16) ** 2, 64) and not tokens.requires_grad
    full = enc.model.forward_features((x - enc.mean) / enc.std)
    torch.testing.assert_close(enc.forward_trainable(tokens), full)


def test_patch32_and_int8_encoder() -> None:
    enc = SupportEncoder(encoder_kwargs=TINY_ENCODER, proto_dims=(8, 16), patch=32, int8=True, trainable_blocks=1)
    assert enc.model.patch_embed.proj.kernel_size == (32, 32)
    assert not any(isinstance(m, nn.Linear) for m in enc.model.blocks[0].modules())  # quantized
    assert any(isinstance(m, nn.Linear) for m in enc.model.blocks[1].modules())  # trainable block stays float
    protos = enc(torch.rand(2, 3, 3, SUP, SUP))
    assert enc.forward_frozen(torch.rand(1, 3, SUP, SUP)).shape[1] == 5 + (SUP // 32) ** 2
    assert [tuple(p.shape) for p in protos.per_scale] == [(2, 8), (2, 16)]
    assert all(torch.isfinite(p).all() for p in protos.per_scale)


def _solid(rgb: tuple[float, float, float], side: int = SUP) -> torch.Tensor:
    return torch.tensor(rgb).view(1, 3, 1, 1).expand(1, 3, side, side).clone()


def test_colour_histogram_bins_sum_and_centre_weight() -> None:
    red = colour_histogram(_solid((1.0, 0.0, 0.0)), 4)
    assert red.shape == (1, 64) and red.sum().item() == pytest.approx(1.0)
    assert red.argmax().item() == 3 * 16 and red.max().item() == pytest.approx(1.0)  # r bin 3, g 0, b 0
    half = colour_histogram(_solid((0.5, 0.5, 0.5)), 3)  # 0.5 is bin centre 1 of 3 in every channel
    assert half.argmax().item() == 1 * 9 + 1 * 3 + 1 and half.max().item() == pytest.approx(1.0)
    between = colour_histogram(_solid((1 / 6, 0.0, 0.0)), 4)  # halfway between r bins 0 and 1: split evenly
    assert between[0, [0, 16]].tolist() == pytest.approx([0.5, 0.5], abs=1e-5)
    # the object in the centre outweighs an equal area of background at the border
    img = _solid((0.0, 0.0, 1.0))
    img[:, :, SUP // 4 : 3 * SUP // 4, SUP // 4 : 3 * SUP // 4] = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    h = colour_histogram(img, 4)
    assert h[0, 48] > 0.5 > h[0, 3]  # red (centre, a quarter of the area) outweighs blue (border, three quarters)


def test_colour_cue_separates_colours_and_survives_the_cache() -> None:
    torch.manual_seed(0)
    model = tiny_model(colour_bins=3, head_mode="prototype")
    assert model.support_encoder.colour_proj is not None
    red, blue = _solid((0.9, 0.1, 0.1)), _solid((0.1, 0.1, 0.9))
    support = torch.stack([torch.cat([red, red]), torch.cat([blue, blue])])  # (2, 2, 3, S, S)
    enc = model.support_encoder
    tokens = enc.forward_frozen(support.flatten(0, 1))
    assert tokens.shape[1] == 5 + (SUP // 16) ** 2 + 1  # the histogram rides along as one extra token
    direct = model.encode_support(support).per_scale
    cached = enc.from_frozen(tokens, k=2).per_scale
    for a, b in zip(direct, cached):
        torch.testing.assert_close(a, b)
    # without the cue the projections see nearly the same features for both; with it they differ
    plain = tiny_model(head_mode="prototype").encode_support(support).per_scale[-1]
    cue = direct[-1]
    cos = lambda p: torch.nn.functional.cosine_similarity(p[0], p[1], dim=0).item()  # noqa: E731
    assert cos(cue) < cos(plain)
    query, _ = episode()
    out = model(query, support)
    out.scores.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.colour_proj.parameters())


def test_colour_bins_too_many_for_the_encoder() -> None:
    with pytest.raises(ValueError, match="colour_bins=5"):
        tiny_model(colour_bins=5)  # 125 bins > embed dim 64


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_forward_is_finite(dtype: torch.dtype) -> None:
    model = tiny_model().eval()
    query, support = episode()
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        out = model(query, support)
    for t in (out.box_logits, out.scores, out.cls_logits, out.boxes()):
        assert torch.isfinite(t.float()).all()


def test_uint8_float_and_channels_last_agree() -> None:
    model = tiny_model().eval()
    query, support = episode()
    with torch.no_grad():
        a = model(query, support)
        b = model(query.float() / 255, support.float() / 255)
        model = model.to(memory_format=torch.channels_last)
        c = model(query.contiguous(memory_format=torch.channels_last), support)
    torch.testing.assert_close(a.scores, b.scores)
    torch.testing.assert_close(a.box_logits, c.box_logits, rtol=1e-4, atol=1e-4)


def test_standard_mode_needs_no_support_and_prototype_mode_has_no_classes() -> None:
    query, support = episode()
    std = tiny_model(head_mode="standard").eval()
    out = std(query)
    assert out.scores is None and out.cls_logits.shape[-1] == 3 and out.embeddings == []
    proto = RefDet(tiny_cfg(head_mode="prototype"), num_base_classes=0).eval()
    out = proto(query, support)
    assert out.cls_logits is None and out.scores.shape[-1] == 2
    with pytest.raises(ValueError, match="support"):
        proto(query)
    with pytest.raises(ValueError, match="num_base_classes"):
        RefDet(tiny_cfg(), num_base_classes=0)


def test_initial_scores_near_prior() -> None:
    model = tiny_model().eval()
    query, support = episode()
    with torch.no_grad():
        out = model(query, support)
    assert torch.sigmoid(model.head.score_bias).item() == pytest.approx(0.01, rel=1e-3)  # YOLOv8's prior
    assert model.head.log_scale.exp().item() == pytest.approx(10.0)
    assert abs(torch.sigmoid(out.cls_logits).mean().item() - 0.01) < 0.01
    assert torch.allclose(out.box_logits.mean(), torch.tensor(1.0), atol=0.1)  # box bias 1.0


def test_param_summary_and_stage_tables() -> None:
    cfg = config_from_dict({"model": {**dataclasses.asdict(tiny_cfg())}})
    summary = param_summary(cfg)
    assert set(summary) == {"modules", "total", "trainable"}
    assert set(summary["modules"]) == {"support_encoder", "backbone", "fusion", "head"}
    assert summary["total"] == sum(m["total"] for m in summary["modules"].values())
    assert all(m["total"] == m["trainable"] + m["frozen"] for m in summary["modules"].values())
    assert ORIGINAL_FIGURES["total"] == 29.25e6
    model = tiny_model().eval()
    table = param_table(model)
    assert list(table.index) == ["support_encoder", "backbone", "fusion", "head", "total"]
    assert 0 < table.loc["total", "budget_share"] < 0.1
    flops = flops_per_stage(model, IMG, SUP, 2, 1)
    assert (flops.loc[["support_encoder", "backbone", "fusion", "head"], "gflops"] > 0).all()
    times = time_per_stage(model, IMG, SUP, 2, 1, repeats=1, warmup=0)
    assert (times["ms"] > 0).all()


def tiny_match_model() -> nn.Module:
    """A tiny prototype-head model with ``ref_match`` (1-block ViT, no P2, 32 px match crops), seeded."""
    from refdet_core.config import RefDetConfig

    m = RefDetConfig().model
    m.encoder = "vit_tiny_patch16_dinov3_qkvb"
    m.encoder_kwargs = {"depth": 1, "embed_dim": 32, "num_heads": 2, "img_size": 32}
    m.proto_dims, m.width, m.use_p2, m.head_mode = (8, 8, 16, 16), 0.125, False, "prototype"
    m.ref_match, m.match_size = True, 32
    torch.manual_seed(0)
    return RefDet(m, num_base_classes=0, pretrained=False)


def test_reference_match_is_siamese_and_reads_the_references() -> None:
    """ref_match: gradients reach the match projections through the references, and one function embeds both
    references and candidate crops: a crop of the reference, framed as the references are, matches its template."""
    model = tiny_match_model()
    query = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)
    support = torch.randint(0, 255, (2, 3, 3, 32, 32), dtype=torch.uint8)
    out = model(query, support)
    assert out.scores.shape[-1] == 2
    out.scores.sum().backward()
    assert model.match.proj[0].weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        protos = model.encode_support(support[:1])
        assert len(protos.templates) == 3 and protos.templates[0].shape[:2] == (1, 3)
        frames = torch.nn.functional.interpolate(support[0, :1].float() / 255, size=64)  # the reference itself
        box = torch.tensor([[[32 - 32 / 1.8, 32 - 32 / 1.8, 32 + 32 / 1.8, 32 + 32 / 1.8]]])
        same = model.match.crop_similarity(model.backbone, frames, box, protos.templates)
        other = model.encode_support(support[1:]).templates
    assert same.item() > 0.99
    assert not torch.allclose(protos.templates[0], other[0]), "templates do not depend on the references"


def test_reid_training_pairs_score_targets_and_hard_negatives() -> None:
    """In training, ``reid_targets`` adds the crops the re-ID loss scores: each target box (its class) and up to
    REID_NEGATIVES predicted boxes per frame away from the targets (-1), against every reference set; the loss
    reaches the match projections and the backbone, and rewards a crop matching its own references only."""
    from torchvision.ops import box_iou

    from refdet_core.losses.combined import reid_loss
    from refdet_core.models.match import REID_NEGATIVE_IOU, REID_NEGATIVES, mine_negatives

    model = tiny_match_model()
    query = torch.randint(0, 255, (3, 3, 64, 64), dtype=torch.uint8)
    support = torch.randint(0, 255, (2, 3, 3, 32, 32), dtype=torch.uint8)
    boxes = [torch.tensor([[10.0, 12.0, 30.0, 28.0]]), torch.zeros(0, 4), torch.tensor([[30.0, 30.0, 50.0, 54.0]])]
    labels = [torch.tensor([0]), torch.zeros(0, dtype=torch.long), torch.tensor([1])]
    assert model(query, support).reid_cos is None  # nothing extra without the targets
    out = model(query, support, reid_targets=(boxes, labels))
    n_neg = int((out.reid_labels == -1).sum())
    assert out.reid_cos.shape == (2 + n_neg, 2) and out.reid_labels[:1].tolist() == [0]
    assert 0 < n_neg <= 3 * REID_NEGATIVES and out.reid_cos.abs().max() <= 1 + 1e-5
    negatives = mine_negatives(out, boxes)
    for neg, gt in zip(negatives, boxes):
        assert len(neg) <= REID_NEGATIVES
        if len(gt) and len(neg):
            assert box_iou(neg, gt).max() < REID_NEGATIVE_IOU
    loss = reid_loss(out.reid_cos, out.reid_labels, like=out.box_logits)
    loss.backward()
    assert model.match.proj[0].weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    right = reid_loss(torch.tensor([[0.9, 0.1], [0.0, 0.1]]), torch.tensor([0, -1]), like=loss)
    swapped = reid_loss(torch.tensor([[0.1, 0.9], [0.9, 0.9]]), torch.tensor([0, -1]), like=loss)
    assert right < 0.1 < 2 < swapped
