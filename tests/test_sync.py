"""The training step never reads a device value on the host (each such read stalls a GPU's stream).

A ``TorchDispatchMode`` sees every ATen op of one ``Trainer.train_step``; the ops that copy a tensor's value to
the host (``_local_scalar_dense``: ``.item()``, ``float()``, ``bool()``, ``int()``, ``.tolist()``) are counted.
On CPU they are cheap, but the same code on CUDA would wait for the device at each one.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from test_trainer import tiny_cfg
from torch.utils._python_dispatch import TorchDispatchMode

from refdet_core.train.run import build_training

HOST_READS = {"aten._local_scalar_dense.default", "aten.item.default", "aten.is_nonzero.default"}


class HostReads(TorchDispatchMode):
    """Counts the ops that read a tensor's value on the host."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) in HOST_READS:
            self.counts[str(func)] += 1
        return func(*args, **(kwargs or {}))


def _setup(demo_root, tmp_path, **over):
    cfg = tiny_cfg(demo_root, tmp_path, support_cache=True, support_variants=2, log_every=5, **over)
    setup = build_training(cfg, out_dir=None, progress=False)
    batches = iter(setup.trainer.loader)
    setup.trainer.train_step(next(batches))  # first step: optimizer state and support cache filled
    return setup, batches


def test_train_step_reads_nothing_on_the_host(demo_root, tmp_path):
    setup, batches = _setup(demo_root, tmp_path, fused_adamw=True)
    assert setup.trainer.device_skip
    batch, mode = next(batches), HostReads()  # the batch is made (and validated) on the host, as in a worker
    with mode:
        loss = setup.trainer.train_step(batch)
    assert sum(mode.counts.values()) == 0, dict(mode.counts)
    assert torch.isfinite(loss) and setup.trainer.state.step == 2


def test_the_check_would_see_a_host_read(demo_root, tmp_path):
    """The counter works: the unfused optimizer's finite check reads a flag per step."""
    setup, batches = _setup(demo_root, tmp_path, fused_adamw=False)
    batch, mode = next(batches), HostReads()
    with mode:
        setup.trainer.train_step(batch)
    assert mode.counts["aten._local_scalar_dense.default"] > 0


@pytest.mark.parametrize("fused", [True, False])
def test_non_finite_steps_skipped_on_the_device_then_stop(demo_root, tmp_path, fused):
    """With the fused optimizer the skip happens on the device: weights, moments and step counters untouched by a
    non-finite step, counted at the next host read, and training stops after max_bad_steps in a row."""
    from refdet_core.train.trainer import TrainingStopped

    cfg = tiny_cfg(demo_root, tmp_path, max_bad_steps=3, episodes_per_epoch=6, fused_adamw=fused, log_every=1)
    setup = build_training(cfg, out_dir=None, progress=False)
    real_loss, calls = setup.trainer.loss_fn, {"n": 0}

    def flaky(out, *args, **kwargs):
        total, terms = real_loss(out, *args, **kwargs)
        calls["n"] += 1
        return (total * float("nan") if calls["n"] in (2, 4, 5, 6) else total), terms

    setup.trainer.loss_fn = flaky
    with pytest.raises(TrainingStopped, match="3 non-finite steps in a row"):
        setup.trainer.fit()
    assert setup.trainer.state.skipped == 4
    for v in setup.model.state_dict().values():
        assert torch.isfinite(v.float()).all()
    steps = {int(s["step"]) for s in setup.trainer.optimizer.state.values()}
    assert steps == {2}, "the optimizer's own step count includes only the two finite steps"
