"""`refdet train` under torchrun: 2 CPU processes (gloo) split the episodes and stay in sync."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import yaml
from test_trainer import TINY


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_gloo_stay_in_sync(demo_root, tmp_path):
    params = tmp_path / "p.yaml"
    cfg = {
        **TINY,
        "data_root": str(demo_root),
        "store_dir": str(tmp_path / "store"),
        "episodes_per_epoch": 4,
        "epochs": 2,
        "device": "cpu",
    }
    params.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # the frame store is built once up front so that the two ranks only read it
    subprocess.run(
        [
            sys.executable,
            "-m",
            "refdet_core.cli",
            "cache",
            "build",
            str(demo_root),
            "--out",
            str(tmp_path / "store"),
            "-c",
            "img_size=128",
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "refdet_core.cli",
        "train",
        "-p",
        str(params),
        "-o",
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "train_result.json").read_text())
    assert result["world_size"] == 2
    assert result["ranks_in_sync"] is True
    assert result["steps"] == 2 * 2  # 4 episodes per epoch split over 2 ranks -> 2 steps per epoch, 2 epochs
    assert (out / "checkpoint" / "model.safetensors").is_file()
