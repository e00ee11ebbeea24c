"""Shared fixtures: a tiny demo data set in the challenge layout, written once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from refdet_core.demo import write_demo

DEMO_ARGS = {"videos": 4, "frames": 40, "seed": 0, "width": 320, "height": 192, "fps": 25}


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny demo set (4 videos x 40 frames, 320x192): read-only, shared by the whole session."""
    root = tmp_path_factory.mktemp("demo") / "demo"
    write_demo(root, **DEMO_ARGS)
    return root


@pytest.fixture
def demo_copy(demo_root: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny demo set that a test may alter."""
    return Path(shutil.copytree(demo_root, tmp_path / "demo"))


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tests run tiny models: one torch thread is fastest for them, and stays fast on a shared 2-core machine
    (with two threads, OpenMP workers of concurrent processes spin against each other)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
