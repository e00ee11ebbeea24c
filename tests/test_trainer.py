"""The trainer: learning, exact resume, accumulation under AMP, non-finite steps, schedule, memory, bad settings."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import yaml
from torchvision.ops import box_iou

from refdet_core.checkpoint import read_checkpoint
from refdet_core.config import ConfigError, config_from_dict
from refdet_core.data.episodes import load_fixed_episode, make_source
from refdet_core.data.layout import read_layout
from refdet_core.losses.combined import CombinedLoss
from refdet_core.models.head import dfl_decode
from refdet_core.models.refdet import RefDet
from refdet_core.train.optim import lr_factor, param_groups
from refdet_core.train.run import build_training, train_from_params
from refdet_core.train.trainer import Trainer, TrainingStopped

TINY = {
    "img_size": 128,
    "support_size": 64,
    "n_way": 2,
    "n_query": 2,
    "episodes_per_epoch": 4,
    "epochs": 2,
    "encoder": "vit_tiny_patch16_dinov3_qkvb",
    "encoder_kwargs": {"depth": 2, "embed_dim": 64, "num_heads": 2, "img_size": 64},
    "proto_dims": [16, 16, 32, 32],
    "width": 0.125,
    "lr": 0.002,
    "warmup_steps": 2,
    "precision": "fp32",
    "bg_share": 0.25,
}


def tiny_cfg(root, tmp_path, **over):
    return config_from_dict({**TINY, "data_root": str(root), "store_dir": str(tmp_path / "store"), **over})


def test_lr_schedule_counts_optimizer_steps():
    f = [lr_factor(s, total_steps=100, warmup_steps=10, min_lr_ratio=0.05) for s in range(100)]
    assert f[0] > 0, "the first step must not run at LR 0"
    assert all(a < b for a, b in zip(f[:10], f[1:11])), "warmup rises"
    assert max(f) == pytest.approx(1.0, abs=1e-6)
    assert f[-1] == pytest.approx(0.05, abs=0.01)
    assert all(a >= b - 1e-9 for a, b in zip(f[10:], f[11:])), "cosine falls"


def test_no_decay_on_norms_biases_and_temperature(demo_root, tmp_path):
    cfg = tiny_cfg(demo_root, tmp_path)
    model = RefDet(cfg.model, num_base_classes=3)
    for g in param_groups(model, cfg.train):
        for name, p in zip(g["names"], g["params"]):
            if p.ndim <= 1 or "scale" in name.rsplit(".", 1)[-1]:
                assert g["weight_decay"] == 0.0, f"{name} is decayed"
        assert g["lr"] == pytest.approx(cfg.train.lr * cfg.train.lr_mult.get(g["module"], 1.0))


def _run(root, tmp_path, name, **over):
    cfg = tiny_cfg(root, tmp_path, **over)
    setup = build_training(cfg, out_dir=tmp_path / name, progress=False)
    return setup


def test_resume_continues_exactly(demo_root, tmp_path):
    full = _run(demo_root, tmp_path, "full", epochs=3)
    full.trainer.fit()
    straight = full.trainer.history_frame()

    first = _run(demo_root, tmp_path, "part", epochs=3)
    first.trainer.cfg.train.epochs = 1  # interrupted after epoch 1 (checkpoint written at its end)
    first.trainer.fit()
    resumed = _run(demo_root, tmp_path, "part2", epochs=3)
    resumed.trainer.resume(tmp_path / "part" / "checkpoint")
    resumed.trainer.fit()
    again = resumed.trainer.history_frame()
    assert len(again) == len(straight)
    pd.testing.assert_series_equal(again["loss"], straight["loss"], rtol=1e-5)
    pd.testing.assert_series_equal(again["lr"], straight["lr"])


class _Batch:
    """A stand-in episode for loop-mechanics tests: a tiny regression problem."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.query, self.support, self.boxes, self.labels, self.base_labels = x, y, [], [], []

    def to(self, device, non_blocking=False):
        return self


def _mechanics_trainer(demo_root, tmp_path, **over):
    """A Trainer over a small MLP (fast under fp16 autocast on any CPU), with the real loop and optimizer."""
    cfg = tiny_cfg(demo_root, tmp_path, **over)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.SiLU(), torch.nn.Linear(64, 1))
    gen = torch.Generator().manual_seed(0)
    batches = [_Batch(torch.randn(32, 16, generator=gen), torch.randn(32, 1, generator=gen)) for _ in range(16)]

    def forward(m, b):
        return m(b.query) - b.support  # the residual

    def loss_fn(out, boxes, labels, base_labels, *, epoch):
        return out.float().pow(2).mean(), {}

    return Trainer(
        model=model,
        loss_fn=loss_fn,
        loader=batches,
        cfg=cfg,
        device=torch.device("cpu"),
        forward=forward,
        steps_per_epoch=len(batches),
    )


def test_accumulation_with_fp16_scaler_and_unscaled_clipping(demo_root, tmp_path):
    """Seed #6/#7: accumulation 4 under fp16 + GradScaler takes 8 optimizer steps without 'unscale_() has already
    been called'; the clipped norm is the unscaled one (a scaled one would be ~65536x larger)."""
    norms = {}
    for precision in ("fp32", "fp16"):
        trainer = _mechanics_trainer(
            demo_root,
            tmp_path,
            precision=precision,
            grad_accum=4,
            episodes_per_epoch=16,
            epochs=2,
            max_bad_steps=3,
            clip_norm=1e9,
        )
        rows: list = []
        trainer.add_callback("on_step_end", lambda t, row, rows=rows: rows.append(row))
        trainer.fit()
        assert trainer.state.step == 8
        assert trainer.precision == precision
        norms[precision] = rows[0]["grad_norm"]
    assert math.isfinite(norms["fp16"])
    assert norms["fp16"] == pytest.approx(norms["fp32"], rel=0.05)


def test_non_finite_steps_are_skipped_then_stop(demo_root, tmp_path):
    setup = _run(demo_root, tmp_path, "nan", max_bad_steps=3, episodes_per_epoch=6)
    real_loss = setup.trainer.loss_fn
    calls = {"n": 0}

    def flaky(out, *args, **kwargs):
        total, terms = real_loss(out, *args, **kwargs)
        calls["n"] += 1
        return (total * float("nan") if calls["n"] in (2, 4, 5, 6) else total), terms

    setup.trainer.loss_fn = flaky
    before = {k: v.clone() for k, v in setup.model.state_dict().items()}
    with pytest.raises(TrainingStopped, match="3 non-finite steps in a row"):
        setup.trainer.fit()
    assert setup.trainer.state.skipped == 4
    assert any(not torch.equal(before[k], v) for k, v in setup.model.state_dict().items()), "finite steps applied"
    for v in setup.model.state_dict().values():
        assert torch.isfinite(v.float()).all()


def test_checkpoint_folder_and_history(demo_root, tmp_path):
    setup = _run(demo_root, tmp_path, "ck")
    setup.trainer.fit()
    folder = tmp_path / "ck" / "checkpoint"
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "config.yaml", "meta.json", "state.pt"}
    weights, cfg, meta = read_checkpoint(folder)
    assert cfg.data.img_size == 128 and meta["epoch"] == 2 and meta["base_classes"]
    hist = pd.read_csv(tmp_path / "ck" / "history.csv")
    for col in ("epoch", "step", "loss", "box", "dfl", "score", "lr"):
        assert col in hist.columns
    assert len(hist) == setup.trainer.state.step


def test_interrupt_leaves_last_checkpoint_intact(demo_root, tmp_path):
    setup = _run(demo_root, tmp_path, "int", epochs=3)
    calls = {"n": 0}

    def interrupt(trainer, row):
        calls["n"] += 1
        if calls["n"] == 6:  # inside epoch 2, after epoch 1's checkpoint
            raise KeyboardInterrupt

    setup.trainer.add_callback("on_step_end", interrupt)
    with pytest.raises(KeyboardInterrupt):
        setup.trainer.fit()
    _, _, meta = read_checkpoint(tmp_path / "int" / "checkpoint")
    assert meta["epoch"] == 1
    again = _run(demo_root, tmp_path, "int2", epochs=3)
    again.trainer.resume(tmp_path / "int" / "checkpoint")
    again.trainer.fit()
    assert again.trainer.state.epoch == 3


def test_bad_settings_fail_before_work(demo_root, tmp_path):
    with pytest.raises(ConfigError, match="'n_way' is 9 but there are only"):
        _run(demo_root, tmp_path, "bad", n_way=9)
    with pytest.raises(ConfigError, match="'lr' must be >= 0"):
        tiny_cfg(demo_root, tmp_path, lr=-1.0)
    store = tmp_path / "store"
    _run(demo_root, tmp_path, "ok")  # builds the store at 128 px
    assert (store / "index.json").is_file()
    with pytest.raises(ConfigError, match="frame store built for frames of 128 px"):
        _run(demo_root, tmp_path, "bad2", img_size=160)
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump({**TINY, "data_root": str(demo_root), "epochz": 3}))
    with pytest.raises(ConfigError, match="p.yaml: unknown key 'epochz'"):
        train_from_params(params, out_dir=tmp_path / "x")


def test_memory_stays_flat(demo_root, tmp_path):
    psutil = pytest.importorskip("psutil")
    setup = _run(demo_root, tmp_path, "mem", episodes_per_epoch=10, epochs=6)
    rss = []
    setup.trainer.add_callback("on_epoch_end", lambda t, s: rss.append(psutil.Process().memory_info().rss))
    setup.trainer.fit()
    growth_mb = (rss[-1] - rss[1]) / 2**20
    assert growth_mb < 40, f"RSS grew {growth_mb:.1f} MB over 4 epochs"


def _best_boxes(model, batch):
    with torch.no_grad():
        out = model(batch.query, batch.support)
        boxes = dfl_decode(out.box_logits, out.anchors, out.strides)
        scores = out.scores.sigmoid()
    picks = []
    for i, cls in enumerate(batch.class_ids.tolist()):
        picks.append(boxes[i, scores[i, :, cls].argmax()])
    return picks


@pytest.mark.slow
def test_overfit_one_episode(demo_root, tmp_path):
    """Seed failures #1/#2: the losses must drive learning; the object gets localised."""
    torch.manual_seed(0)
    cfg = tiny_cfg(
        demo_root,
        tmp_path,
        bg_share=0.0,
        lr=0.003,
        warmup_steps=5,
        epochs=1,
        episodes_per_epoch=150,
        w_supcon=0.0,
        w_cpe=0.0,
        w_triplet=0.0,
    )
    layout = read_layout(demo_root)
    train_ids = [v for v in layout.videos if layout.videos[v].annotated_frames][:2]
    source = make_source(layout, cfg)
    base_classes = sorted({v.split("_")[0] for v in train_ids})
    batch = load_fixed_episode(layout, source, train_ids, cfg, base_classes=base_classes)
    model = RefDet(cfg.model, num_base_classes=2)
    loss_fn = CombinedLoss(cfg.loss, stage=2, reg_max=cfg.model.reg_max)
    trainer = Trainer(model=model, loss_fn=loss_fn, loader=[batch] * 150, cfg=cfg, device=torch.device("cpu"))
    history = trainer.fit()
    start, end = history["loss"].iloc[:3].mean(), history["loss"].iloc[-5:].mean()
    assert end < 0.1 * start, f"loss {start:.3f} -> {end:.3f}"
    model.eval()
    ious = [box_iou(p[None], gt[:1])[0, 0].item() for p, gt in zip(_best_boxes(model, batch), batch.boxes) if len(gt)]
    assert ious and min(ious) > 0.5, f"IoUs {ious}"
    assert not math.isnan(end)
