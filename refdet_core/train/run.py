"""Assemble a training run from a config: data, model, loss, trainer; alone or under torchrun (DDP)."""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from refdet_core import memory
from refdet_core.config import ConfigError, RefDetConfig, params_file_config
from refdet_core.data.episodes import make_loader, make_source
from refdet_core.data.layout import read_layout
from refdet_core.device import pick_device
from refdet_core.folders import prepare_run_dir
from refdet_core.io import atomic_write_json
from refdet_core.losses.combined import CombinedLoss
from refdet_core.models.refdet import RefDet, validate_model_config
from refdet_core.train.support_cache import SupportFeatureCache, TrainingForward
from refdet_core.train.trainer import Trainer

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def distributed_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) when run alone."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def base_classes_of(layout: Any, video_ids: list[str]) -> list[str]:
    """Object types of the training videos (``Backpack_0`` -> ``Backpack``), sorted."""
    return sorted({layout.videos[v].base_class for v in video_ids})


def check_training_config(cfg: RefDetConfig, train_ids: list[str], source: str) -> None:
    """Settings that cannot work with this data fail here, before any model or store is built."""
    if cfg.data.n_way > len(train_ids):
        raise ConfigError(
            f"{source}: key 'n_way' is {cfg.data.n_way} but there are only {len(train_ids)} training videos"
        )

    validate_model_config(cfg.model, img_size=cfg.data.query_size, support_size=cfg.data.support_size)
    if cfg.data.store_dir:
        index = Path(cfg.data.store_dir) / "index.json"
        if index.is_file():
            try:
                built = json.loads(index.read_text()).get("img_size")
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                built = None  # a damaged store is rebuilt
            size = cfg.data.img_size
            if built is not None and built != size and cfg.data.loader == "store":
                raise ConfigError(
                    f"{index}: frame store built for frames of {built} px, config asks for {size} "
                    "(rebuild it with `refdet cache build` or set store_dir to a new folder)"
                )


def _shared_source(layout: Any, cfg: RefDetConfig, *, rank: int, world_size: int, progress: bool) -> Any:
    """The frame source, decoded once: under DDP rank 0 builds (or reuses) the store while the other ranks wait
    at a barrier, then open the finished store, instead of every rank decoding every video at once."""
    if world_size > 1 and rank != 0:
        dist.barrier()
    source = make_source(layout, cfg, progress=progress and rank == 0)
    if world_size > 1 and rank == 0:
        dist.barrier()
    return source


def check_lr_mult(cfg: RefDetConfig, model: torch.nn.Module, source: str) -> None:
    """``lr_mult`` keys name top-level modules of the model; another name would silently do nothing."""
    modules = [name for name, _ in model.named_children()]
    unknown = sorted(set(cfg.train.lr_mult) - set(modules))
    if unknown:
        raise ConfigError(f"{source}: key 'lr_mult.{unknown[0]}' names no module (modules: {', '.join(modules)})")


@dataclass
class TrainingSetup:
    cfg: RefDetConfig
    layout: Any
    train_ids: list[str]
    val_ids: list[str]
    base_classes: list[str]
    source: Any
    model: torch.nn.Module
    trainer: Any
    forward: TrainingForward  # the trainer's forward; owns the support-feature cache

    @property
    def support_cache(self) -> SupportFeatureCache | None:
        return self.forward.cache


COMPILED_STAGES = ("backbone", "fusion", "head")


def build_training(
    cfg: RefDetConfig,
    *,
    out_dir: str | Path | None,
    source_name: str = "config",
    rank: int = 0,
    world_size: int = 1,
    local_rank: int = 0,
    progress: bool = True,
) -> TrainingSetup:
    layout = read_layout(cfg.data.data_root)
    train_ids, val_ids = layout.split(cfg.data)
    check_training_config(cfg, train_ids, source_name)
    device = pick_device(cfg.train.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # collectives and default allocations go to this rank's GPU
    seed_everything(cfg.train.random_seed)
    base_classes = base_classes_of(layout, train_ids)
    source = _shared_source(layout, cfg, rank=rank, world_size=world_size, progress=progress)
    loader = make_loader(
        layout, source, train_ids, cfg, train=True, base_classes=base_classes, rank=rank, world_size=world_size
    )
    model = RefDet(cfg.model, num_base_classes=cfg.model.num_base_classes or len(base_classes)).to(device)
    check_lr_mult(cfg, model, source_name)
    memory.apply(cfg.speed.keep_memory)  # process-wide: the last training set up in a process decides
    if cfg.speed.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.speed.compile:
        # each stage its own graph with static shapes (episodes have a fixed size), so the profiler still times
        # them apart; nn.Module.compile wraps in place, so state-dict keys and checkpoints are unchanged
        for name in COMPILED_STAGES:
            getattr(model, name).compile(dynamic=False)
    net: torch.nn.Module = model
    if world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    # the episode dataset validates each batch on the host (EpisodeBatch.validate): no per-step label check
    loss_fn = CombinedLoss(cfg.loss, stage=cfg.train.stage, reg_max=cfg.model.reg_max, check_labels=False)
    loss_fn = loss_fn.to(device)
    meta = {
        "base_classes": base_classes,
        "train_videos": train_ids,
        "val_videos": val_ids,
        "encoder_weights": getattr(model.support_encoder, "pretrained_source", "unknown"),
        "encoder_variant": getattr(model.support_encoder, "variant", cfg.model.encoder),
        "world_size": world_size,
    }
    forward = TrainingForward(model, cfg)
    trainer = Trainer(
        model=net,
        loss_fn=loss_fn,
        loader=loader,
        cfg=cfg,
        device=device,
        out_dir=out_dir,
        meta=meta,
        forward=forward,
        rank=rank,
        world_size=world_size,
        steps_per_epoch=len(loader),
    )
    return TrainingSetup(cfg, layout, train_ids, val_ids, base_classes, source, model, trainer, forward)


def _params_config(path: str | Path) -> RefDetConfig:
    """The config of a params YAML; keys besides config keys must be parameters of notebook 05 (``run_dir``)."""
    return params_file_config(path, notebooks=("05_train_stage2",))


def ranks_in_sync(model: torch.nn.Module) -> bool:
    """Every rank holds the same weights (max - min of a parameter checksum over ranks is 0)."""
    total = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
    hi, lo = total.clone(), total.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    return bool((hi - lo).abs().item() <= 1e-6 * max(1.0, total.abs().item()))


def _gather(value: Any, world_size: int) -> list[Any]:
    """``value`` of every rank, in rank order (a collective: every rank calls it)."""
    out: list[Any] = [None] * world_size
    dist.all_gather_object(out, value)
    return out


def train_from_params(
    params: str | Path,
    *,
    out_dir: str | Path,
    resume: str | Path | None = None,
    callbacks: dict[str, list[Any]] | None = None,
    force: bool = False,
) -> dict[str, Any] | None:
    """``refdet train``: train from a params YAML; under torchrun each rank runs this.

    The run folder is written only once the settings, the data and the resume checkpoint are known to work.
    ``force`` writes into a folder that holds files of no run. ``callbacks`` (event -> functions) are added to
    the trainer of every rank before training starts.
    """
    cfg = _params_config(params)
    rank, world_size, local_rank = distributed_env()
    out = Path(out_dir)
    prepare_run_dir(out, force=force, clean=rank == 0)
    if world_size > 1:
        backend = "nccl" if torch.cuda.is_available() and cfg.train.device != "cpu" else "gloo"
        dist.init_process_group(backend=backend)
    try:
        setup = build_training(
            cfg, out_dir=out, source_name=str(params), rank=rank, world_size=world_size, local_rank=local_rank
        )
        setup.trainer.force_save = force
        if resume:
            setup.trainer.resume(resume)
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            cfg.save(out / "config.yaml")
        for event, fns in (callbacks or {}).items():
            for fn in fns:
                setup.trainer.add_callback(event, fn)
        history = setup.trainer.fit()
        result = {
            "out_dir": str(out),
            "epochs": setup.trainer.state.epoch,
            "steps": setup.trainer.state.step,
            "skipped_steps": setup.trainer.state.skipped,
            "world_size": world_size,
            "final_loss": float(history["loss"].iloc[-1]) if len(history) else None,
        }
        if world_size > 1:
            result["ranks_in_sync"] = ranks_in_sync(setup.model)
            result["store_reused_by_rank"] = _gather(getattr(setup.source, "reused", None), world_size)
        if rank == 0:
            atomic_write_json(out / "train_result.json", result)
            return result
        return None
    finally:
        if world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()
