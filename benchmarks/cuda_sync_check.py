"""On a CUDA device: one training step of a small RefDet under ``torch.cuda.set_sync_debug_mode("warn")``.

Every operation that makes the host wait for the GPU warns; the script counts them per step (the CPU test
``tests/test_sync.py`` counts host reads the same way without a GPU). Needs a demo set (``refdet data demo``).

Run: .venv/bin/python benchmarks/cuda_sync_check.py DATA_ROOT
"""

from __future__ import annotations

import sys
import tempfile
import warnings

import torch

from refdet_core.config import config_from_dict
from refdet_core.train.run import build_training


def main(root: str) -> None:
    assert torch.cuda.is_available(), "needs a CUDA device"
    store = tempfile.mkdtemp()
    cfg = config_from_dict(
        {"data_root": root, "store_dir": store, "img_size": 320, "device": "cuda", "log_every": 1000,
         "fused_adamw": True, "precision": "bf16", "episodes_per_epoch": 8},
        source="cuda_sync_check",
    )  # fmt: skip
    setup = build_training(cfg, out_dir=None, progress=False)
    batches = iter(setup.trainer.loader)
    setup.trainer.train_step(next(batches))  # warm-up: optimizer state, support cache
    counts = []
    for _ in range(3):
        batch = next(batches)
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            setup.trainer.train_step(batch)
            torch.cuda.set_sync_debug_mode("default")
        syncs = [str(w.message).splitlines()[0] for w in seen if "synchroniz" in str(w.message)]
        counts.append(len(syncs))
        for line in sorted(set(syncs)):
            print("  sync:", line)
    print(f"synchronising operations per train_step: {counts}")


if __name__ == "__main__":
    main(sys.argv[1])
