"""Training from a notebook: in the kernel, or as a background process (``torchrun`` when there are several
devices) that the notebook follows live from the run folder.

Both ways write the same run folder: ``checkpoint/``, ``config.yaml``, ``history.csv`` (rewritten every few
optimizer steps, so a follower sees progress within an epoch), ``epochs.csv`` (one row per epoch) and
``train_result.json``. A background run also keeps ``train_params.yaml`` (what it was started with) and
``train.log`` (its output).

A background run is a fresh interpreter started with ``subprocess``: nothing of the kernel is copied into it,
so it does not matter what the kernel defined or whether it already touched CUDA. The training processes
start in their own process group; ``stop`` (and interrupting the kernel while it follows) ends all of them.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml

from refdet_core.config import RefDetConfig
from refdet_core.data.episodes import make_source
from refdet_core.data.layout import read_layout
from refdet_core.device import pick_device
from refdet_core.io import atomic_write_json, atomic_write_text
from refdet_core.train.run import train_from_params

logger = logging.getLogger(__name__)

HISTORY_WRITES = 200  # history.csv is rewritten about this many times over a run (at most every step)
RESULT_FILES = ("history.csv", "epochs.csv", "train_result.json")
# from checkpoint/meta.json
META_KEYS = ("encoder_weights", "precision", "train_videos", "val_videos", "base_classes", "crop_reid")


class TrainingFailed(RuntimeError):
    """A background training exited with an error or was stopped; the message quotes the end of its log."""


# ---------------------------------------------------------------- what both ways write
def run_folder_callbacks(out_dir: str | Path) -> dict[str, list[Callable]]:
    """Trainer callbacks that keep ``history.csv`` and ``epochs.csv`` of ``out_dir`` current (rank 0 only)."""
    out = Path(out_dir)
    epochs: list[dict[str, Any]] = []

    def on_step(trainer: Any, _: dict[str, Any]) -> None:
        every = max(1, trainer.total_steps // HISTORY_WRITES)
        if trainer.rank == 0 and trainer.state.step % every == 0:
            trainer.write_history()

    def on_epoch(trainer: Any, summary: dict[str, Any]) -> None:
        if trainer.rank == 0:
            epochs.append(summary)
            atomic_write_text(out / "epochs.csv", pd.DataFrame(epochs).to_csv(index=False))

    return {"on_step_end": [on_step], "on_epoch_end": [on_epoch]}


def total_steps(cfg: RefDetConfig, world_size: int = 1) -> int:
    """Optimizer steps of a run: each rank takes ``ceil(episodes / world_size)`` episodes per epoch."""
    episodes = math.ceil(cfg.data.episodes_per_epoch / world_size)
    return math.ceil(episodes / cfg.train.grad_accum) * cfg.train.epochs


@dataclass
class TrainingResult:
    """What a finished run left in its folder: step history, one row per epoch, and the run's summary."""

    out_dir: Path
    history: pd.DataFrame
    epochs: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, out_dir: str | Path) -> TrainingResult:
        out = Path(out_dir)
        summary = json.loads((out / "train_result.json").read_text())
        meta_path = out / "checkpoint" / "meta.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        summary.update({k: meta[k] for k in META_KEYS if k in meta})
        return cls(out, _read_csv(out / "history.csv"), _read_csv(out / "epochs.csv"), summary)


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return pd.DataFrame()


def _clear_results(out: Path) -> None:
    """A new run in a used folder: results of the previous one must not pass for progress of this one."""
    for name in RESULT_FILES:
        (out / name).unlink(missing_ok=True)


# ---------------------------------------------------------------- in the kernel
class KernelTraining:
    """Train with ``trainer`` in this process; ``run(monitor)`` blocks until the run ends."""

    def __init__(self, trainer: Any, out_dir: str | Path) -> None:
        self.trainer, self.out = trainer, Path(out_dir)
        self.total_steps = trainer.total_steps

    def describe(self) -> str:
        t = self.trainer
        return f"in this kernel: {t.device}, {t.precision}, {t.steps_per_epoch} steps/epoch, {t.total_steps} steps"

    def run(self, monitor: Any = None) -> TrainingResult:
        _clear_results(self.out)
        t = self.trainer
        t.cfg.save(self.out / "config.yaml")  # as `refdet train` does
        for event, fns in run_folder_callbacks(self.out).items():
            for fn in fns:
                t.add_callback(event, fn)
        if monitor is not None:
            t.add_callback("on_step_end", lambda tr, row: monitor.update(tr.state.step, row, tr.history_frame))
            t.add_callback("on_epoch_end", lambda tr, _: monitor.plot(tr.history_frame()))
        start = time.perf_counter()
        history = t.fit()
        summary = {
            "out_dir": str(self.out),
            "epochs": t.state.epoch,
            "steps": t.state.step,
            "skipped_steps": t.state.skipped,
            "world_size": t.world_size,
            "device": str(t.device),
            "final_loss": float(history["loss"].iloc[-1]) if len(history) else None,
            "wall_s": time.perf_counter() - start,
        }
        atomic_write_json(self.out / "train_result.json", summary)
        if monitor is not None:
            monitor.finish(t.state.step, "done")
        return TrainingResult.read(self.out)


# ---------------------------------------------------------------- in the background
def default_nproc(cfg: RefDetConfig) -> int:
    """One process per visible GPU when training on CUDA, else one."""
    if cfg.train.device != "cpu" and torch.cuda.is_available():
        return max(1, torch.cuda.device_count())
    return 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TrainingProcess:
    """Training as a child process: ``python -m refdet_core.train.launch`` alone, or under
    ``torchrun --nproc_per_node N`` (DistributedDataParallel; gloo on CPU, NCCL on CUDA) when ``nproc > 1``.

    ``run(monitor)`` starts it and follows ``history.csv`` until it ends; ``start`` / ``follow`` / ``stop``
    do the same in steps.
    """

    def __init__(self, cfg: RefDetConfig, out_dir: str | Path, *, nproc: int = 0, poll_s: float = 1.0) -> None:
        self.cfg, self.out = cfg, Path(out_dir)
        self.nproc = nproc or default_nproc(cfg)
        self.poll_s = poll_s
        self.params = self.out / "train_params.yaml"
        self.log = self.out / "train.log"
        self.total_steps = total_steps(cfg, self.nproc)
        self.proc: subprocess.Popen | None = None
        self._started = 0.0

    @property
    def command(self) -> list[str]:
        entry = ["-m", __name__, "-p", str(self.params), "-o", str(self.out)]
        if self.nproc == 1:
            return [sys.executable, *entry]
        port = str(_free_port())
        launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(self.nproc)]
        return [sys.executable, *launcher, "--master_addr", "127.0.0.1", "--master_port", port, *entry]

    def describe(self) -> str:
        kind = f"torchrun, {self.nproc} processes" if self.nproc > 1 else "one process"
        return f"in the background ({kind}, {self.total_steps} steps per process); log: {self.log}"

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        env.setdefault("OMP_NUM_THREADS", str(max(1, cores // self.nproc)))  # processes share the cores
        env.setdefault("TQDM_MININTERVAL", "15")  # the log keeps a few bar updates, not thousands
        return env

    def start(self) -> None:
        """Build the frame store here (ranks must only read it), write the params, start the process."""
        assert self.proc is None or self.proc.poll() is not None, "a training process is already running"
        self.out.mkdir(parents=True, exist_ok=True)
        make_source(read_layout(self.cfg.data.data_root), self.cfg, progress=True)
        atomic_write_text(self.params, yaml.safe_dump(self.cfg.flat(), sort_keys=False))
        _clear_results(self.out)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, env=self._environment(), start_new_session=True
            )
        self._started = time.perf_counter()
        logger.info("training started (pid %d): %s", self.proc.pid, " ".join(self.command))

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def progress(self) -> tuple[int, dict[str, Any] | None, pd.DataFrame]:
        """(optimizer steps so far, the last history row, the history) as ``history.csv`` has them now."""
        history = _read_csv(self.out / "history.csv")
        if history.empty:
            return 0, None, history
        last = history.iloc[-1].to_dict()
        return int(last["step"]), last, history  # a row's step counts the steps taken, that one included

    def follow(self, monitor: Any = None) -> TrainingResult:
        """Block until the process ends, feeding ``monitor``; an interrupt (the kernel's stop) ends the process."""
        assert self.proc is not None, "start() first"
        try:
            seen = 0
            while self.running():
                time.sleep(self.poll_s)
                step, row, history = self.progress()
                if monitor is not None and step > seen:
                    seen = step
                    monitor.update(step, row, lambda h=history: h)
        except KeyboardInterrupt:
            self.stop()
            raise
        return self._finish(monitor)

    def _finish(self, monitor: Any) -> TrainingResult:
        code = self.proc.wait()
        step, _, history = self.progress()
        if monitor is not None:
            monitor.plot(history)
            monitor.finish(step, "done" if code == 0 else f"exited with {code}")
        if code != 0 or not (self.out / "train_result.json").is_file():
            raise TrainingFailed(f"training exited with status {code}; end of {self.log}:\n{self.log_tail()}")
        result = TrainingResult.read(self.out)
        device = str(pick_device(self.cfg.train.device))
        result.summary.update(wall_s=time.perf_counter() - self._started, device=device)
        atomic_write_json(self.out / "train_result.json", result.summary)
        return result

    def run(self, monitor: Any = None) -> TrainingResult:
        self.start()
        return self.follow(monitor)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """End every training process (SIGTERM to the group, SIGKILL after ``timeout_s``); returns the status."""
        if not self.running():
            return None if self.proc is None else self.proc.returncode
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()

    def log_tail(self, lines: int = 20) -> str:
        text = self.log.read_text(errors="replace") if self.log.is_file() else ""
        return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------- the child's entry point
def main(argv: list[str] | None = None) -> int:
    """Each training process: ``refdet train`` with the run-folder callbacks."""
    parser = argparse.ArgumentParser(prog="python -m refdet_core.train.launch")
    parser.add_argument("-p", "--params", required=True)
    parser.add_argument("-o", "--out", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = train_from_params(args.params, out_dir=args.out, callbacks=run_folder_callbacks(args.out))
    if result is not None:
        print(json.dumps(result, default=float), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
