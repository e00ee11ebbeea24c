"""Memory of `refdet predict` on a challenge-size video: RSS sampled through the run, against frames done.

Streams or not: a predictor that kept a video's frames would grow by about 1 MB per 640 px frame. The script
starts `refdet predict` as a subprocess, reads its progress bar (frames done) from stderr, samples the process's
RSS every 0.5 s and prints RSS after the first 500 frames, the peak, and frames/s.

Data: `refdet data demo DIR --videos 1 --frames 7500 --size 1280x720` (one 1280x720 video of 7,500 frames).
Run:  .venv/bin/python benchmarks/long_video_memory.py --data DIR --ckpt CHECKPOINT [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

PROGRESS = re.compile(rb"(\d+)/(\d+) \[")


def run(data: str, ckpt: str, extra: list[str]) -> dict:
    out = Path(tempfile.mkdtemp()) / "submission.json"
    cmd = [
        sys.executable,
        "-m",
        "refdet_core.cli",
        "predict",
        "--data",
        data,
        "--ckpt",
        ckpt,
        "--out",
        str(out),
        *extra,
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE)
    samples: list[tuple[float, int, float]] = []  # (seconds, frames done, RSS MB)
    done = {"frames": 0}

    def read_progress() -> None:
        buf = b""
        while chunk := proc.stderr.read1(4096):
            buf = (buf + chunk)[-4096:]
            found = PROGRESS.findall(buf)
            if found:
                done["frames"] = int(found[-1][0])

    reader = threading.Thread(target=read_progress, daemon=True)
    reader.start()
    ps, t0 = psutil.Process(proc.pid), time.perf_counter()
    while proc.poll() is None:
        try:
            samples.append((time.perf_counter() - t0, done["frames"], ps.memory_info().rss / 2**20))
        except psutil.NoSuchProcess:
            break
        time.sleep(0.5)
    reader.join(timeout=5)
    assert proc.returncode == 0, f"refdet predict failed ({proc.returncode})"
    summary = json.loads(proc.stdout.read().decode().strip().splitlines()[-1])
    after_500 = [rss for _, frames, rss in samples if frames >= 500]
    peak = max(rss for *_, rss in samples)
    return {
        "frames": summary["frames"],
        "frames_per_s": summary["frames_per_s"],
        "rss_after_500_frames_mb": after_500[0] if after_500 else float("nan"),
        "rss_peak_mb": peak,
        "peak_over_500": peak / after_500[0] if after_500 else float("nan"),
        "samples": len(samples),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--json", action="store_true")
    args, extra = p.parse_known_args()
    result = run(args.data, args.ckpt, extra)
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
