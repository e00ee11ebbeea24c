"""05's training as a background process (torchrun, 2 CPU processes with gloo) writes what in-kernel training writes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from refdet_core.config import FLAT_KEYS, config_from_dict
from refdet_core.train.launch import KernelTraining, TrainingFailed, TrainingProcess
from refdet_core.train.run import build_training

ROOT = Path(__file__).resolve().parents[1]


def smoke_cfg(demo_root: Path, tmp_path: Path, **over):
    """The smoke profile of 05 on the test's demo set."""
    params = yaml.safe_load((ROOT / "params" / "smoke" / "05_train_stage2.yaml").read_text())
    keys = {k: v for k, v in params.items() if k in FLAT_KEYS}
    return config_from_dict(
        {**keys, "data_root": str(demo_root), "store_dir": str(tmp_path / "store"), "device": "cpu", **over}
    )


class Monitor:
    def __init__(self):
        self.steps, self.plots, self.end = [], 0, None

    def update(self, step, row, history=None):
        self.steps.append(step)

    def plot(self, history):
        self.plots += 1

    def finish(self, step, how):
        self.end = (step, how)


def _files(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_subprocess_two_ranks_write_the_in_kernel_run_folder(demo_root, tmp_path):
    cfg = smoke_cfg(demo_root, tmp_path, episodes_per_epoch=4)
    kernel_out, child_out = tmp_path / "kernel", tmp_path / "child"
    kernel = KernelTraining(build_training(cfg, out_dir=kernel_out, progress=False).trainer, kernel_out).run()

    job = TrainingProcess(cfg, child_out, nproc=2, poll_s=0.2)
    assert "torch.distributed.run" in job.command and job.command[job.command.index("--nproc_per_node") + 1] == "2"
    monitor = Monitor()
    child = job.run(monitor)

    expected = {"checkpoint/model.safetensors", "history.csv", "epochs.csv", "train_result.json", "config.yaml"}
    assert expected <= _files(kernel_out) and expected <= _files(child_out)
    assert {"train_params.yaml", "train.log"} <= _files(child_out) - _files(kernel_out)
    assert kernel.summary["world_size"] == 1 and child.summary["world_size"] == 2
    # 4 episodes per epoch: 4 steps per epoch in the kernel, 2 per rank with 2 ranks; 2 epochs
    assert kernel.summary["steps"] == 8 and child.summary["steps"] == job.total_steps == 4
    assert list(child.history.columns) == list(kernel.history.columns)
    assert len(child.epochs) == len(kernel.epochs) == 2
    assert child.summary["train_videos"] == kernel.summary["train_videos"]
    assert monitor.end == (4, "done") and monitor.plots >= 1


@pytest.mark.slow
def test_stopping_a_background_run_ends_every_process(demo_root, tmp_path):
    psutil = pytest.importorskip("psutil")
    cfg = smoke_cfg(demo_root, tmp_path, epochs=50)
    job = TrainingProcess(cfg, tmp_path / "child", nproc=2)
    job.start()
    launcher = psutil.Process(job.proc.pid)
    for _ in range(100):  # torchrun starts its two workers
        workers = launcher.children(recursive=True)
        if len(workers) >= 2:
            break
        time.sleep(0.1)
    assert len(workers) >= 2 and job.running()
    job.stop(timeout_s=20)
    assert not job.running()
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"workers still running after stop: {alive}"
    with pytest.raises(TrainingFailed, match="exited with status"):
        job.follow()
    assert not (tmp_path / "child" / "train_result.json").exists()


def test_history_is_followed_from_the_run_folder(tmp_path):
    cfg = config_from_dict({"episodes_per_epoch": 6, "epochs": 3, "grad_accum": 2})
    job = TrainingProcess(cfg, tmp_path, nproc=2)
    assert job.total_steps == 2 * 3  # 3 episodes per rank and epoch, 2 per optimizer step
    assert job.progress()[0] == 0
    pd.DataFrame([{"epoch": 0, "step": 1, "loss": 2.0}, {"epoch": 0, "step": 2, "loss": 1.5}]).to_csv(
        tmp_path / "history.csv", index=False
    )
    step, row, history = job.progress()
    assert step == 2 and row["loss"] == 1.5 and len(history) == 2
    json.dumps(job.command)  # plain strings: the command a person can copy
