"""What a writer may replace, what a killed writer leaves, and what the next start does with it.

Kill tests run the writer as a subprocess and SIGKILL it at random points while it writes; the last good state
must load and the next start must leave no temporary folder.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_bad_input import tree_digest

from refdet_core.checkpoint import read_checkpoint
from refdet_core.cli import main
from refdet_core.config import config_from_dict
from refdet_core.data.layout import read_layout
from refdet_core.data.probe import check_decoded
from refdet_core.data.store import FrameStore, StoreError, build_store
from refdet_core.destination import DestinationError, clean_leftovers, old_path
from refdet_core.io import atomic_write_json
from refdet_core.models.refdet import RefDet
from refdet_core.train.checkpoint import save_checkpoint

SIZE = 64
TINY_MODEL = {
    "img_size": 64,
    "support_size": 64,
    "encoder_kwargs": {"depth": 1, "embed_dim": 32, "num_heads": 2, "img_size": 64},
    "width": 0.125,
    "proto_dims": [8, 8, 16, 16],
}
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), *sys.path])}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old" in p.name)


# ---------------------------------------------------------------- destinations
@pytest.mark.parametrize("target", ["root", "samples", "user", "file"])
def test_cache_build_leaves_a_foreign_destination_byte_for_byte(demo_copy, tmp_path, target, capsys):
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.md").write_text("mine\n")
    (tmp_path / "file.bin").write_bytes(b"\x01\x02")
    out = {"root": demo_copy, "samples": demo_copy / "samples", "user": tmp_path / "user"}.get(
        target, tmp_path / "file.bin"
    )
    before = tree_digest(tmp_path)
    assert main(["cache", "build", str(demo_copy), "--out", str(out), "-c", f"img_size={SIZE}"]) == 2
    assert str(out) in capsys.readouterr().err
    assert tree_digest(tmp_path) == before


def test_store_dir_key_goes_through_the_same_check(demo_copy, tmp_path):
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.md").write_text("mine\n")
    from refdet_core.data.episodes import make_source

    cfg = config_from_dict({"img_size": SIZE, "data_root": str(demo_copy), "store_dir": str(tmp_path / "user")})
    with pytest.raises(DestinationError, match="not a frame store"):
        make_source(read_layout(demo_copy), cfg)
    assert (tmp_path / "user" / "notes.md").read_text() == "mine\n"


def test_force_replaces_a_user_folder_but_never_the_data(demo_copy, tmp_path, capsys):
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.md").write_text("mine\n")
    argv = ["cache", "build", str(demo_copy), "-c", f"img_size={SIZE}", "--force", "--json"]
    assert main([*argv, "--out", str(user)]) == 0
    assert json.loads(capsys.readouterr().out)["frames"] > 0 and not (user / "notes.md").exists()
    before = tree_digest(demo_copy)
    assert main([*argv, "--out", str(demo_copy)]) == 2
    assert tree_digest(demo_copy) == before


def test_checkpoint_save_refuses_a_foreign_folder(tmp_path):
    cfg = config_from_dict(TINY_MODEL)
    model = RefDet(cfg.model, num_base_classes=2)
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "draft.txt").write_text("x")
    with pytest.raises(DestinationError, match="draft.txt"):
        save_checkpoint(tmp_path / "checkpoint", model=model, cfg=cfg, meta={})
    assert os.listdir(tmp_path / "checkpoint") == ["draft.txt"] and leftovers(tmp_path) == []
    save_checkpoint(tmp_path / "checkpoint", model=model, cfg=cfg, meta={}, force=True)
    assert read_checkpoint(tmp_path / "checkpoint")[2] == {}


# ---------------------------------------------------------------- store reuse and leftovers
def test_store_reuse_checks_file_sizes(demo_root, tmp_path):
    layout = read_layout(demo_root)
    store = FrameStore.build(layout, tmp_path / "fs", img_size=SIZE, bg_share=0.2, progress=False)
    npy = tmp_path / "fs" / store.index["videos"][store.video_ids[0]]["file"]
    npy.write_bytes(npy.read_bytes()[: npy.stat().st_size // 2])
    with pytest.raises(StoreError, match=str(npy)):
        FrameStore.open(tmp_path / "fs")
    again = FrameStore.build(layout, tmp_path / "fs", img_size=SIZE, bg_share=0.2, progress=False)
    assert not again.reused and again.get(store.video_ids[0], store.frames(store.video_ids[0])[-1])[0].shape == (
        SIZE,
        SIZE,
        3,
    )


def test_store_build_cleans_only_dead_writers_temporaries(demo_root, tmp_path):
    dead = 2**22 + 12345  # above the default pid_max: no such process
    for name in (f".fs.tmp-{dead}-ab12", ".fs.old-zz9", f".fs.tmp-{os.getppid()}-live"):
        (tmp_path / name).mkdir()
    (tmp_path / ".fs.notes").write_text("a user's hidden file")
    (tmp_path / f".other.tmp-{dead}-x").mkdir()
    FrameStore.build(read_layout(demo_root), tmp_path / "fs", img_size=SIZE, bg_share=0.0, progress=False)
    assert sorted(os.listdir(tmp_path)) == sorted(
        [".fs.notes", f".fs.tmp-{os.getppid()}-live", f".other.tmp-{dead}-x", "fs"]
    )


def test_crash_between_renames_restores_the_old_checkpoint(tmp_path):
    cfg = config_from_dict(TINY_MODEL)
    model = RefDet(cfg.model, num_base_classes=2)
    save_checkpoint(tmp_path / "checkpoint", model=model, cfg=cfg, meta={"step": 1})
    os.replace(tmp_path / "checkpoint", tmp_path / ".checkpoint.old")  # killed after the first rename
    (tmp_path / ".checkpoint.k3j9x_2a").mkdir()  # a temporary of the older naming
    assert read_checkpoint(tmp_path / "checkpoint")[2] == {"step": 1}
    save_checkpoint(tmp_path / "checkpoint", model=model, cfg=cfg, meta={"step": 2})
    assert os.listdir(tmp_path) == ["checkpoint"] and read_checkpoint(tmp_path / "checkpoint")[2] == {"step": 2}


def test_written_files_follow_the_umask(demo_root, tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_json(tmp_path / "a.json", {})
        FrameStore.build(read_layout(demo_root), tmp_path / "fs", img_size=SIZE, bg_share=0.0, progress=False)
        cfg = config_from_dict(TINY_MODEL)
        save_checkpoint(tmp_path / "ck", model=RefDet(cfg.model, num_base_classes=2), cfg=cfg, meta={})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640
    for folder in ("fs", "ck"):
        assert (tmp_path / folder).stat().st_mode & 0o777 == 0o750
        assert all(p.stat().st_mode & 0o777 == 0o640 for p in (tmp_path / folder).iterdir())


# ---------------------------------------------------------------- predict and score
def test_decoding_that_stops_early_is_an_error_or_a_warning(caplog):
    paths = {"A_0": "a.mp4"}
    with pytest.raises(Exception, match="a.mp4: decoding stopped at frame 22 of 40"):
        check_decoded({"A_0": 22}, {"A_0": 40}, paths)
    with caplog.at_level(logging.WARNING):
        check_decoded({"A_0": 22}, {"A_0": 40}, paths, partial=True)
    assert "frames 0-21 only" in caplog.text
    check_decoded({"A_0": 40}, {"A_0": 40}, paths)


def test_score_missing_videos_by_flag(demo_root, tmp_path, capsys):
    gt = demo_root / "annotations" / "annotations.json"
    (tmp_path / "sub.json").write_text("[]")
    assert main(["score", "--gt", str(gt), "--pred", str(tmp_path / "sub.json"), "--allow-missing", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mean_st_iou"] < 1.0


# ---------------------------------------------------------------- kill -9
def _kill_when(proc: subprocess.Popen, ready, rng: random.Random, spread: float, timeout: float = 120) -> bool:
    """SIGKILL ``proc`` a random 0..spread s after ``ready()`` holds; False when it ended first."""
    start = time.monotonic()
    while not ready():
        if proc.poll() is not None or time.monotonic() - start > timeout:
            return False
        time.sleep(0.002)
    time.sleep(rng.uniform(0, spread))
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def kill_cache_builds(root: Path, out: Path, tries: int, seed: int = 0) -> int:
    """Start ``refdet cache build`` (alternating settings, so each one rebuilds) and kill it while it writes;
    after each kill the store still opens. Returns how many kills landed."""
    rng, landed = random.Random(seed), 0
    for i in range(tries):
        share = (0.3, 0.6)[i % 2]
        cmd = [sys.executable, "-m", "refdet_core.cli", "cache", "build", str(root), "--out", str(out)]
        cmd += ["-c", f"img_size={SIZE}", "-c", f"store_bg_share={share}"]
        proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        writing = lambda pid=proc.pid: any(out.parent.glob(f".{out.name}.tmp-{pid}-*"))  # noqa: E731
        landed += _kill_when(proc, writing, rng, 0.15)
        last = out if out.exists() else old_path(out)  # killed between the two renames: the next start restores it
        FrameStore.open(last).get(*_first_frame(last))  # the last good store is whole
    return landed


def _first_frame(out: Path) -> tuple[str, int]:
    index = json.loads((out / "index.json").read_text())
    vid = next(iter(index["videos"]))
    return vid, index["videos"][vid]["frames"][0]


def test_kill_9_during_cache_build(demo_root, tmp_path):
    out = tmp_path / "store"
    cfg = config_from_dict({"img_size": SIZE, "store_bg_share": 0.1})
    build_store(demo_root, out, cfg, progress=False)
    assert kill_cache_builds(demo_root, out, tries=3) >= 1
    stats = build_store(demo_root, out, cfg, progress=False)  # the next start
    assert stats["frames"] > 0 and leftovers(tmp_path) == []


class _Child:
    """A forked writer, as ``subprocess.Popen`` looks to ``_kill_when`` (fork: no second torch import)."""

    def __init__(self, work) -> None:
        self.pid = os.fork()
        if self.pid == 0:  # the child writes until it is killed
            try:
                work()
            finally:
                os._exit(0)
        self.code: int | None = None

    def poll(self) -> int | None:
        if self.code is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.code = os.waitstatus_to_exitcode(status)
        return self.code

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self) -> None:
        if self.code is None:
            self.code = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])


def kill_checkpoint_saves(path: Path, tries: int, seed: int = 0) -> int:
    """Kill a process that saves checkpoints to ``path`` in a loop; after each kill the last one loads."""
    cfg = config_from_dict(TINY_MODEL)
    model = RefDet(cfg.model, num_base_classes=2)
    state = {k: {} for k in ("optimizer", "scheduler", "scaler", "rng", "trainer")}
    state.update(history=[], pad=torch.zeros(200_000))

    def save_forever() -> None:
        for step in range(1, 10**6):
            save_checkpoint(path, model=model, cfg=cfg, meta={"step": step}, state=state)

    rng, landed = random.Random(seed), 0
    for _ in range(tries):
        child = _Child(save_forever)
        saving = lambda pid=child.pid: path.exists() and any(path.parent.glob(f".{path.name}.tmp-{pid}-*"))  # noqa: E731
        landed += _kill_when(child, saving, rng, 0.3)
        _, _, meta = read_checkpoint(path)
        assert meta["step"] >= 1
    return landed


def test_kill_9_during_checkpoint_save(tmp_path):
    path = tmp_path / "checkpoint"
    assert kill_checkpoint_saves(path, tries=3) >= 1
    cfg = config_from_dict(TINY_MODEL)
    weights, _, _ = read_checkpoint(path)
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())
    save_checkpoint(path, model=RefDet(cfg.model, num_base_classes=2), cfg=cfg, meta={"step": 0})  # the next start
    assert os.listdir(tmp_path) == ["checkpoint"]
    assert clean_leftovers(tmp_path) == 0


def test_resume_applies_changed_optimizer_settings(demo_root, tmp_path, caplog):
    from refdet_core.train.run import build_training

    base = {**TINY_MODEL, "data_root": str(demo_root), "store_dir": str(tmp_path / "store"), "n_query": 2}
    base.update(epochs=2, episodes_per_epoch=2, bn_recalibrate=0, precision="fp32", warmup_steps=1)
    first = build_training(config_from_dict({**base, "epochs": 1}), out_dir=tmp_path / "a", progress=False)
    first.trainer.fit()
    changed = {**base, "lr_mult": {"support_encoder": 0.5}, "weight_decay": 0.01}
    second = build_training(config_from_dict(changed), out_dir=tmp_path / "b", progress=False)
    with caplog.at_level(logging.WARNING):
        second.trainer.resume(tmp_path / "a" / "checkpoint")
    groups = {(g["module"], g["weight_decay"] > 0): g for g in second.trainer.optimizer.param_groups}
    enc = groups[("support_encoder", True)]
    assert enc["lr_mult"] == 0.5 and enc["weight_decay"] == 0.01
    step = second.trainer.scheduler.last_epoch
    assert enc["lr"] == pytest.approx(1e-3 * 0.5 * second.trainer.scheduler.lr_lambdas[0](step))
    assert "support_encoder lr_mult 0.1 -> 0.5" in caplog.text
    assert np.isfinite(second.trainer.fit()["loss"]).all()


def test_a_box_annotated_twice_counts_once(demo_copy):
    from refdet_core.eval.submission import read_annotations

    path = demo_copy / "annotations" / "annotations.json"
    gt = json.loads(path.read_text())
    entry = next(e for e in gt if e["annotations"])
    entry["annotations"].append({"bboxes": entry["annotations"][0]["bboxes"][:2]})  # an overlapping interval
    path.write_text(json.dumps(gt))
    frame = entry["annotations"][0]["bboxes"][0]["frame"]
    assert len(read_annotations(path)[entry["video_id"]][frame]) == 1
    assert read_layout(demo_copy).videos[entry["video_id"]].boxes_by_frame[frame].shape == (1, 4)


def test_exponent_floats_are_numbers(tmp_path):
    from refdet_core.config import load_config, parse_override

    (tmp_path / "p.yaml").write_text("lr: 1e-3\nweight_decay: 5E-2\n")
    cfg = load_config(tmp_path / "p.yaml", dict([parse_override("min_lr_ratio=1e-2")]))
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.min_lr_ratio) == (1e-3, 5e-2, 1e-2)


def test_a_corrupt_store_index_is_rebuilt_or_named(demo_root, tmp_path, capsys):
    argv = ["cache", "build", str(demo_root), "--out", str(tmp_path / "fs"), "-c", f"img_size={SIZE}", "--json"]
    assert main(argv) == 0
    (tmp_path / "fs" / "index.json").write_text("{truncated")
    with pytest.raises(StoreError, match="index.json: corrupt"):
        FrameStore.open(tmp_path / "fs")
    capsys.readouterr()
    assert main(argv) == 0 and json.loads(capsys.readouterr().out)["reused"] is False
    assert FrameStore.open(tmp_path / "fs").stats()["frames"] > 0


def test_a_run_folder_start_cleans_what_killed_runs_left(tmp_path):
    from refdet_core.folders import prepare_run_dir

    dead = 2**22 + 12345
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.yaml", "05_train_stage2.ipynb", "loss.png"):  # a notebook's run folder
        (run / name).write_text("{}\n")
    for name in (f".checkpoint.tmp-{dead}-a1", f".history.csv.tmp-{dead}-b2.tmp", ".checkpoint.zq8_x1ab"):
        (run / name).mkdir() if "checkpoint" in name else (run / name).write_text("")
    prepare_run_dir(run)
    assert sorted(os.listdir(run)) == ["05_train_stage2.ipynb", "config.yaml", "loss.png"]
    (run / "notes.txt").write_text("mine")
    with pytest.raises(DestinationError, match="notes.txt"):
        prepare_run_dir(run)
