"""The training loop: plain, visible, in nanoGPT's order.

autocast forward -> loss / grad_accum -> backward (scaled under fp16) -> [every grad_accum micro-steps]
unscale -> finite check -> clip -> step -> scaler update -> scheduler step -> zero_grad.
A non-finite loss or gradient skips the optimizer step, is counted, and stops training after
``max_bad_steps`` in a row. Callbacks (``on_step_end``, ``on_epoch_end``) feed the notebook's plots; the
trainer never draws.

No host synchronisation between logging steps: losses, gradient norms and the skip counters stay on the
device and are read once per ``log_every`` optimizer steps. With a fused AdamW and no fp16 loss scaling the
skip itself happens on the device too (the fused kernel takes ``found_inf``); otherwise the finite check reads
one flag per optimizer step.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from refdet_core.checkpoint import CheckpointError, load_weights, read_checkpoint, read_training_state, unwrap
from refdet_core.config import RefDetConfig
from refdet_core.io import atomic_write_text
from refdet_core.train import checkpoint as ckpt
from refdet_core.train.optim import AUTOCAST_DTYPES, make_optimizer, make_scheduler, resolve_precision

logger = logging.getLogger(__name__)


RUN_SETTINGS = ("initial_lr", "lr_mult", "weight_decay")  # optimizer group values taken from this run's config


class TrainingStopped(RuntimeError):
    """Training stopped on purpose (e.g. too many non-finite steps in a row); the message says why."""


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    skipped: int = 0  # optimizer steps skipped for non-finite loss or gradient
    bad_in_row: int = 0
    bn_recalibrated: bool = False
    reid_trained: bool = False  # the crop re-ID network's phase (after the last epoch) is done
    history: list[dict[str, float]] = field(default_factory=list)


def _finite(window: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """() bool on the device: every loss of the accumulation window is finite (no host read)."""
    return torch.stack([torch.isfinite(w["loss"]) for w in window]).all()


Callback = Callable[["Trainer", dict[str, Any]], None]


class Trainer:
    """Episodic trainer for ``RefDet``; works alone or under DistributedDataParallel.

    Args:
        model: the model (already on ``device``; wrapped in DDP by the caller when distributed).
        loss_fn: ``CombinedLoss``: ``loss_fn(out, boxes, labels, base_labels, epoch=) -> (total, terms)``.
        loader: yields ``EpisodeBatch``; its ``sampler.set_epoch`` (if any) is called every epoch.
        cfg: the resolved config (train and speed sections are used here).
        out_dir: checkpoints and ``history.csv`` go here (rank 0 only).
        forward: ``forward(model, batch) -> HeadOutput``; defaults to ``model(batch.query, batch.support)``.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        loss_fn: Callable,
        loader: Iterable,
        cfg: RefDetConfig,
        device: torch.device,
        out_dir: str | Path | None = None,
        meta: dict[str, Any] | None = None,
        forward: Callable | None = None,
        rank: int = 0,
        world_size: int = 1,
        steps_per_epoch: int | None = None,
    ) -> None:
        self.model, self.loss_fn, self.loader, self.cfg, self.device = model, loss_fn, loader, cfg, device
        self.out_dir = Path(out_dir) if out_dir else None
        self.meta = dict(meta or {})
        self.forward = forward or (lambda m, b: m(b.query, b.support))
        self.rank, self.world_size = rank, world_size
        tc = cfg.train
        episodes = steps_per_epoch or cfg.data.episodes_per_epoch
        self.steps_per_epoch = math.ceil(episodes / tc.grad_accum)
        self.total_steps = self.steps_per_epoch * tc.epochs
        self.precision = resolve_precision(cfg.speed, device)
        self.optimizer = make_optimizer(model, tc, fused=cfg.speed.fused_adamw)
        self.scheduler = make_scheduler(self.optimizer, tc, self.total_steps)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        # the fused kernel skips a step on the device when told found_inf; GradScaler's fp16 path reads its own
        self.device_skip = bool(self.optimizer.defaults.get("fused")) and not self.scaler.is_enabled()
        self.state = TrainState()
        self.callbacks: dict[str, list[Callback]] = defaultdict(list)
        # skips counted on the device: since the last host read, the current run, the longest run since then
        self._skips = torch.zeros(3, device=device)
        self.force_save = False  # replace a folder of other files at the checkpoint path (`refdet train --force`)

    # ------------------------------------------------------------------ hooks
    def add_callback(self, event: str, fn: Callback) -> None:
        self.callbacks[event].append(fn)

    def _fire(self, event: str, info: dict[str, Any]) -> None:
        for fn in self.callbacks[event]:
            fn(self, info)

    # ------------------------------------------------------------------ one step
    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = AUTOCAST_DTYPES[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def _micro_step(self, batch: Any, epoch: int, last: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        batch = batch.to(self.device, non_blocking=True)
        # under DDP, gradients are all-reduced only on the last micro-step of an accumulation window
        sync = contextlib.nullcontext() if last or not hasattr(self.model, "no_sync") else self.model.no_sync()
        with sync:
            with self.autocast():
                out = self.forward(self.model, batch)
            total, terms = self.loss_fn(out, batch.boxes, batch.labels, batch.base_labels, epoch=epoch)
            self.scaler.scale(total / self.cfg.train.grad_accum).backward()
        return total.detach(), terms

    def train_step(self, batch: Any, epoch: int = 0) -> torch.Tensor:
        """One episode, one optimizer step (forward, loss, backward, clip, step): the unit the bench times.

        Returns the loss as a () tensor on the device (reading it is the caller's sync). ``fit`` does the same
        per accumulation window, with logging and callbacks.
        """
        total, _ = self._micro_step(batch, epoch, True)
        self.optimizer_step(torch.isfinite(total))
        return total

    def optimizer_step(self, loss_ok: torch.Tensor) -> torch.Tensor:
        """Unscale, check, clip and step; returns the gradient norm () on the device (inf/nan when skipped)."""
        self.scaler.unscale_(self.optimizer)  # checks and clipping see true gradients
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.train.clip_norm)
        ok = loss_ok & torch.isfinite(norm)  # (), on the device
        if self.device_skip:
            bad = (~ok).float()
            self.optimizer.found_inf, self.optimizer.grad_scale = bad, None  # read by the fused kernel
            self.optimizer.step()
            self._count_bad(bad)
        else:
            self._host_checked_step(bool(loss_ok), bool(ok))  # note: a CPU-GPU sync point per optimizer step
        self.scaler.update()
        with warnings.catch_warnings():
            # the schedule counts optimizer steps, skipped ones included
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()`")
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        return norm

    def _host_checked_step(self, loss_ok: bool, ok: bool) -> None:
        if ok:
            self.scaler.step(self.optimizer)
            self.state.bad_in_row = 0
        elif loss_ok and self.scaler.is_enabled() and self.scaler.get_scale() > 1.0:
            # fp16 overflow: GradScaler skips the step and lowers its scale; calibration, not a failure
            self.state.skipped += 1
        else:
            self._bad_step("loss" if not loss_ok else "gradient")

    def _bad_step(self, reason: str) -> None:
        self.state.skipped += 1
        self.state.bad_in_row += 1
        logger.warning("non-finite %s at step %d: optimizer step skipped", reason, self.state.step)
        self._stop_if_too_many(self.state.bad_in_row, f"last: non-finite {reason} at step {self.state.step}")

    def _stop_if_too_many(self, run: int, detail: str) -> None:
        if run >= self.cfg.train.max_bad_steps:
            raise TrainingStopped(
                f"stopped after {run} non-finite steps in a row ({detail}); lower lr or use fp32/bf16"
            )

    # ------------------------------------------------------------------ device-side counters
    def _count_bad(self, bad: torch.Tensor) -> None:
        total, run, worst = self._skips.unbind()
        run = (run + 1) * bad  # the run of non-finite steps restarts at 0 after a good step
        self._skips = torch.stack([total + bad, run, torch.maximum(worst, run)])

    def sync_counters(self) -> None:
        """Fold the device-side skip counters into ``state`` (one host read) and stop after too many in a row."""
        if not self.device_skip:
            return
        total, run, worst = (int(v) for v in self._skips.tolist())
        self.state.skipped += total
        self.state.bad_in_row = run
        self._skips = torch.tensor([0.0, run, run], device=self.device)
        if total:
            logger.warning("%d optimizer steps skipped for a non-finite loss or gradient", total)
        self._stop_if_too_many(worst, f"by step {self.state.step}")

    # ------------------------------------------------------------------ one epoch
    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        sampler = getattr(self.loader, "sampler", None) or getattr(self.loader, "batch_sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        accum, sums, lr_sum, count = self.cfg.train.grad_accum, None, 0.0, 0
        window: list[dict[str, torch.Tensor]] = []
        start, wait_start, data_s = time.perf_counter(), time.perf_counter(), 0.0
        episodes = 0
        for i, batch in enumerate(self.loader):
            episodes = i + 1
            data_s += time.perf_counter() - wait_start
            total, terms = self._micro_step(batch, epoch, (i + 1) % accum == 0)
            window.append({"loss": total, **terms})
            if len(window) == accum:
                sums, lr_sum, count, window = (
                    self._end_window(epoch, window, sums),
                    lr_sum + self.base_lr(),
                    count + 1,
                    [],
                )
            wait_start = time.perf_counter()
        if window:  # an incomplete accumulation window still updates the weights
            sums, lr_sum, count = self._end_window(epoch, window, sums), lr_sum + self.base_lr(), count + 1
        self.sync_counters()
        seconds = time.perf_counter() - start
        summary = dict(zip(self._keys, (sums / max(count, 1)).tolist())) if sums is not None else {}  # one read
        summary.update(
            lr=lr_sum / max(count, 1),
            epoch=epoch,
            seconds=seconds,
            episodes=episodes * self.world_size,
            episodes_per_s=episodes * self.world_size / max(seconds, 1e-9),
            data_wait_s=data_s,
        )
        return summary

    def base_lr(self) -> float:
        """The schedule's LR before per-module multipliers (a host value: the scheduler runs on the host)."""
        group = self.optimizer.param_groups[0]
        return group["lr"] / (group.get("lr_mult") or 1.0)

    def _end_window(self, epoch: int, window: list[dict[str, torch.Tensor]], sums: torch.Tensor | None) -> torch.Tensor:
        """Optimizer step for an accumulation window; its mean terms join the epoch sums on the device, and on
        every ``log_every``-th step become a history row (the only host read between epochs)."""
        norm = self.optimizer_step(_finite(window))
        self._keys = [*window[0], "grad_norm"]
        means = [torch.stack([w[k].float() for w in window]).mean() for k in window[0]]
        vec = torch.stack([*means, norm.float()])  # (terms + 1,)
        if self.state.step % self.cfg.train.log_every == 0:
            row = self._log_row(epoch, vec)
            self._fire("on_step_end", row)
        return vec if sums is None else sums + vec

    def _log_row(self, epoch: int, vec: torch.Tensor) -> dict[str, float]:
        """A history row from the step's mean terms (averaged over ranks under DDP): one host read."""
        if self.world_size > 1:
            vec = vec.clone()
            torch.distributed.all_reduce(vec)  # every rank logs on the same steps
            vec /= self.world_size
        row: dict[str, float] = {"epoch": epoch, "step": self.state.step}
        row.update(zip(self._keys, vec.tolist()))  # note: a CPU-GPU sync, once per logged step
        row["lr"] = self.base_lr()
        self.state.history.append(row)
        self.sync_counters()
        return row

    # ------------------------------------------------------------------ the run
    def fit(self) -> pd.DataFrame:
        """Train from ``state.epoch`` to ``cfg.train.epochs``; returns the history."""
        epochs = self.cfg.train.epochs
        bar = tqdm(
            range(self.state.epoch, epochs),
            desc="epochs",
            disable=self.rank != 0,
            initial=self.state.epoch,
            total=epochs,
        )
        for epoch in bar:
            summary = self.train_one_epoch(epoch)
            self.state.epoch = epoch + 1
            bar.set_postfix(loss=f"{summary.get('loss', float('nan')):.3f}", eps=f"{summary['episodes_per_s']:.2f}")
            if self.rank == 0 and self.out_dir is not None:
                self.write_history()
                if self.state.epoch % self.cfg.train.checkpoint_every == 0 or self.state.epoch == epochs:
                    self.save(self.out_dir / "checkpoint")
            self._fire("on_epoch_end", summary)
        if self.state.epoch == epochs and self.cfg.train.bn_recalibrate > 0 and not self.state.bn_recalibrated:
            self.recalibrate_bn(self.cfg.train.bn_recalibrate)
            if self.rank == 0 and self.out_dir is not None:
                self.save(self.out_dir / "checkpoint")
        reid = getattr(unwrap(self.model), "reid", None)
        due = reid is not None and self.cfg.train.reid_steps > 0 and not self.state.reid_trained
        if self.state.epoch == epochs and due:
            from refdet_core.train.reid import fit_crop_reid

            self.meta["crop_reid"] = fit_crop_reid(unwrap(self.model), self.cfg, self.meta.get("train_videos", []),
                                                   rank=self.rank, world_size=self.world_size)  # fmt: skip
            self.state.reid_trained = True
            if self.rank == 0 and self.out_dir is not None:
                self.save(self.out_dir / "checkpoint")
        return self.history_frame()

    @torch.no_grad()
    def recalibrate_bn(self, episodes: int) -> None:
        """Precise BN: recompute BatchNorm running statistics as a plain average over ``episodes`` training
        episodes with the final weights; the running averages lag behind weights that changed quickly."""
        bns = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average
        self.model.train()
        for i, batch in enumerate(self.loader):
            if i >= episodes:
                break
            with self.autocast():
                self.forward(self.model, batch.to(self.device, non_blocking=True))
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        self.state.bn_recalibrated = True

    def history_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.state.history)

    def write_history(self) -> Path:
        assert self.out_dir is not None
        path = self.out_dir / "history.csv"
        atomic_write_text(path, self.history_frame().to_csv(index=False))
        return path

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str | Path) -> Path:
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": ckpt.rng_state(),
            "loss": self.loss_fn.state_dict() if isinstance(self.loss_fn, nn.Module) else {},
            "trainer": {
                "epoch": self.state.epoch,
                "step": self.state.step,
                "skipped": self.state.skipped,
                "bn_recalibrated": self.state.bn_recalibrated,
                "reid_trained": self.state.reid_trained,
            },
            "history": self.state.history,
        }
        meta = {**self.meta, "epoch": self.state.epoch, "step": self.state.step, "precision": self.precision}
        return ckpt.save_checkpoint(path, model=self.model, cfg=self.cfg, meta=meta, state=state, force=self.force_save)

    def resume(self, path: str | Path) -> None:
        """Continue exactly where the checkpoint at ``path`` left off."""
        weights, _, _ = read_checkpoint(path)
        state = read_training_state(path)
        load_weights(self.model, weights, source=str(path))
        configured = [{k: g[k] for k in RUN_SETTINGS if k in g} for g in self.optimizer.param_groups]
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as err:  # other parameter groups: trainable_blocks or lr_mult modules changed
            raise CheckpointError(
                f"{path}: cannot resume, the trainable parameters differ from the checkpoint's ({err})"
            ) from None
        self.scheduler.load_state_dict(state["scheduler"])
        self._apply_settings(configured, str(path))
        self.scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_state(state["rng"])
        if isinstance(self.loss_fn, nn.Module) and state.get("loss"):
            self.loss_fn.load_state_dict(state["loss"])  # e.g. the WIoU v3 running mean
        t = state["trainer"]
        self.state = TrainState(
            epoch=t["epoch"],
            step=t["step"],
            skipped=t["skipped"],
            history=list(state["history"]),
            bn_recalibrated=t.get("bn_recalibrated", False),
            reid_trained=t.get("reid_trained", False),
        )
        logger.info("resumed from %s at epoch %d, step %d", path, self.state.epoch, self.state.step)

    def _apply_settings(self, configured: list[dict[str, float]], source: str) -> None:
        """The optimizer state of a checkpoint carries its own lr, lr_mult and weight decay; this run's config
        wins (logged when they differ), the schedule continues from the checkpoint's step."""
        changed = []
        for group, want in zip(self.optimizer.param_groups, configured):
            for key, value in want.items():
                if group.get(key) != value:
                    changed.append(f"{group.get('module', '?')} {key} {group.get(key)} -> {value}")
                    group[key] = value
        self.scheduler.base_lrs = [g["initial_lr"] for g in self.optimizer.param_groups]
        step = self.scheduler.last_epoch
        for group, base, factor in zip(self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas):
            group["lr"] = base * factor(step)
        if changed:
            logger.warning(
                "%s: optimizer settings differ from the checkpoint's; this run's apply from step %d: %s",
                source,
                step,
                "; ".join(changed),
            )
