"""Bad input, one row per case: `refdet` exits 2 with one line naming the file or key, no traceback, and every file
that was there before (data, a frame store, a run folder with its checkpoint, params) is byte-for-byte unchanged.

The commands run in-process (``cli.main``); a few run as a subprocess, where FFmpeg's own log would show.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from mp4_tools import truncate_faststart

from refdet_core.cli import main

TINY = {
    "img_size": 64,
    "support_size": 64,
    "n_way": 2,
    "n_query": 2,
    "episodes_per_epoch": 2,
    "epochs": 1,
    "encoder": "vit_tiny_patch16_dinov3_qkvb",
    "encoder_kwargs": {"depth": 1, "embed_dim": 32, "num_heads": 2, "img_size": 64},
    "proto_dims": [8, 8, 16, 16],
    "width": 0.125,
    "precision": "fp32",
    "bn_recalibrate": 0,
    "warmup_steps": 1,
}


def tree_digest(root: Path) -> dict[str, str]:
    """Every path under ``root`` -> sha256 of its bytes (``dir`` for folders): a change, a new or a lost file
    shows."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _corrupt_checkpoints(ws: Path) -> None:
    good = ws / "run" / "checkpoint"
    for name, file, data in [
        ("ckpt_trunc", "state.pt", None),
        ("ckpt_garbage", "state.pt", b"not a pickle at all"),
        ("ckpt_meta", "meta.json", b"{not json"),
        ("ckpt_weights", "model.safetensors", b"\x00" * 64),
    ]:
        shutil.copytree(good, ws / name)
        target = ws / name / file
        target.write_bytes(data if data is not None else target.read_bytes()[: target.stat().st_size // 2])
    # weights of the run with the config of another model (predict builds the model from config.yaml)
    shutil.copytree(good, ws / "ckpt_other")
    cfg = yaml.safe_load((good / "config.yaml").read_text())
    cfg["model"]["proto_dims"] = [16, 16, 32, 32]
    (ws / "ckpt_other" / "config.yaml").write_text(yaml.safe_dump(cfg))


def _write_params(ws: Path, good: dict) -> None:
    p = ws / "params"
    p.mkdir()
    _write_yaml(p / "good.yaml", good)
    _write_yaml(p / "other_model.yaml", {**good, "proto_dims": [16, 16, 32, 32]})
    _write_yaml(p / "no_root.yaml", {k: v for k, v in good.items() if k != "data_root"})
    _write_yaml(p / "unknown.yaml", {**good, "epochz": 3})
    _write_yaml(p / "lr_mult.yaml", {**good, "lr_mult": {"backbone": 0.5, "neckk": 0.1}})
    _write_yaml(p / "img100.yaml", {**good, "img_size": 100})
    _write_yaml(p / "encoder.yaml", {**good, "encoder": "vit_huge_nope"})
    _write_yaml(p / "enc_kwargs.yaml", {**good, "encoder_kwargs": {**good["encoder_kwargs"], "depht": 2}})
    _write_yaml(p / "user_store.yaml", {**good, "store_dir": str(ws / "user")})
    _write_yaml(p / "enc_weights.yaml", {**good, "encoder_weights": str(ws / "file.txt")})
    (p / "dup.yaml").write_text((p / "good.yaml").read_text() + "epochs: 3\n")
    (p / "nan.yaml").write_text((p / "good.yaml").read_text().replace("epochs: 1", "epochs: 1\nlr: .nan"))
    (p / "broken.yaml").write_text("img_size: [64,\n")
    (p / "latin1.yaml").write_bytes("data_root: caf\xe9\n".encode("latin-1"))
    (p / "list.yaml").write_text("- 1\n- 2\n")
    _write_yaml(p / "profile_unknown.yaml", {**good, "stepz": 2})
    _write_yaml(p / "key_of_04.yaml", {**good, "bench_episodes": 2})  # a parameter of notebook 04, not of 05


def _write_json_files(ws: Path) -> None:
    j = ws / "json"
    j.mkdir()
    gt = json.loads((ws / "data" / "annotations" / "annotations.json").read_text())
    (j / "gt.json").write_text(json.dumps(gt))
    ids = [e["video_id"] for e in gt]
    (j / "sub_missing.json").write_text(json.dumps([{"video_id": ids[0], "detections": []}]))
    (j / "sub_empty.json").write_text("[]")
    (j / "sub_unknown.json").write_text(json.dumps([{"video_id": v, "detections": []} for v in [*ids, "Nope_9"]]))
    (j / "not_json.json").write_text("[{")
    (j / "sub_dir").mkdir()


@pytest.fixture(scope="module")
def ws(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace as a user has it: data, a frame store, a finished run with its checkpoint, a user's folder,
    params and JSON files, and damaged copies of them."""
    from refdet_core.train.run import train_from_params

    ws = tmp_path_factory.mktemp("bad_input")
    data = Path(shutil.copytree(demo_root, ws / "data"))
    good = {**TINY, "data_root": str(data), "store_dir": str(ws / "store")}
    _write_params(ws, good)
    train_from_params(ws / "params" / "good.yaml", out_dir=ws / "run")
    _corrupt_checkpoints(ws)
    _write_json_files(ws)
    (ws / "user").mkdir()
    (ws / "user" / "thesis.txt").write_text("three years of work\n")
    (ws / "file.txt").write_text("a file\n")
    shutil.copytree(data, ws / "data_trunc")
    truncate_faststart(ws / "data_trunc" / "samples" / sorted(os.listdir(data / "samples"))[0] / "drone_video.mp4")
    shutil.copytree(data, ws / "data_anndir")
    (ws / "data_anndir" / "annotations" / "annotations.json").unlink()
    (ws / "data_anndir" / "annotations" / "annotations.json").mkdir()
    return ws


def _p(name: str) -> Callable[[Path], str]:
    return lambda ws: str(ws / "params" / name)


def _w(name: str) -> Callable[[Path], str]:
    return lambda ws: str(ws / name)


def _predict(data: str, ckpt: str, out: str) -> list:
    return ["predict", "--data", _w(data), "--ckpt", _w(ckpt), "--out", _w(out)]


def _resume(params: str, ckpt: str) -> list:
    return ["train", "-p", _p(params), "-o", _w("run"), "--resume", _w(ckpt)]


# (id, argv (callables get the workspace), words the error line must hold)
CASES = [
    # data and layout
    ("check-missing-root", ["data", "check", _w("nowhere")], "nowhere"),
    ("check-annotations-folder", ["data", "check", _w("data_anndir")], "annotations.json"),
    ("check-truncated-video", ["data", "check", _w("data_trunc")], "drone_video.mp4"),
    ("demo-into-user-folder", ["data", "demo", _w("user")], "user"),
    # frame store destinations
    ("cache-out-data-root", ["cache", "build", _w("data"), "--out", _w("data")], "data"),
    ("cache-out-data-root-forced", ["cache", "build", _w("data"), "--out", _w("data"), "--force"], "data"),
    ("cache-out-samples-forced", ["cache", "build", _w("data"), "--out", _w("data/samples"), "--force"], "samples"),
    ("cache-out-user-folder", ["cache", "build", _w("data"), "--out", _w("user")], "user"),
    ("cache-out-file", ["cache", "build", _w("data"), "--out", _w("file.txt")], "file.txt"),
    ("cache-out-run-folder", ["cache", "build", _w("data"), "--out", _w("run")], "run"),
    ("cache-img-size-100", ["cache", "build", _w("data"), "--out", _w("s2"), "-c", "img_size=100"], "img_size"),
    ("cache-broken-override", ["cache", "build", _w("data"), "--out", _w("s2"), "-c", "img_size=[64,"], "img_size"),
    ("cache-override-no-equals", ["cache", "build", _w("data"), "--out", _w("s2"), "-c", "img_size"], "img_size"),
    ("cache-bad-format", ["cache", "build", _w("data"), "--out", _w("s2"), "-c", "store_format=png"], "store_format"),
    ("cache-dup-params", ["cache", "build", _w("data"), "--out", _w("s2"), "-p", _p("dup.yaml")], "epochs"),
    ("cache-latin1-params", ["cache", "build", _w("data"), "--out", _w("s2"), "-p", _p("latin1.yaml")], "latin1"),
    ("cache-no-out", ["cache", "build", _w("data")], "--out"),
    # params
    ("params-unknown-encoder", ["params", "-c", "encoder=vit_huge_nope"], "vit_huge_nope"),
    ("params-encoder-kwargs", ["params", "-c", "encoder_kwargs={depht: 1}"], "encoder_kwargs"),
    ("params-lr-nan", ["params", "-c", "lr=.nan"], "lr"),
    ("params-lr-inf", ["params", "-c", "lr=.inf"], "lr"),
    ("params-lr-mult-nan", ["params", "-c", "lr_mult={support_encoder: .nan}"], "lr_mult"),
    ("params-unknown-key", ["params", "-c", "fusionn=psalm"], "fusionn"),
    ("params-img-size", ["params", "-c", "img_size=100"], "img_size"),
    # train
    ("train-missing-params", ["train", "-p", _p("nope.yaml"), "-o", _w("r2")], "nope.yaml"),
    ("train-no-data-root", ["train", "-p", _p("no_root.yaml"), "-o", _w("r2")], "data_root"),
    ("train-unknown-key", ["train", "-p", _p("unknown.yaml"), "-o", _w("r2")], "epochz"),
    ("train-dup-key", ["train", "-p", _p("dup.yaml"), "-o", _w("r2")], "epochs"),
    ("train-nan-lr", ["train", "-p", _p("nan.yaml"), "-o", _w("r2")], "lr"),
    ("train-broken-yaml", ["train", "-p", _p("broken.yaml"), "-o", _w("r2")], "broken.yaml"),
    ("train-latin1-yaml", ["train", "-p", _p("latin1.yaml"), "-o", _w("r2")], "UTF-8"),
    ("train-list-yaml", ["train", "-p", _p("list.yaml"), "-o", _w("r2")], "list.yaml"),
    ("train-img-size-100", ["train", "-p", _p("img100.yaml"), "-o", _w("r2")], "img_size"),
    ("train-unknown-encoder", ["train", "-p", _p("encoder.yaml"), "-o", _w("r2")], "vit_huge_nope"),
    ("train-encoder-kwargs", ["train", "-p", _p("enc_kwargs.yaml"), "-o", _w("r2")], "encoder_kwargs"),
    ("train-lr-mult-module", ["train", "-p", _p("lr_mult.yaml"), "-o", _w("r2")], "lr_mult.neckk"),
    ("train-out-user-folder", ["train", "-p", _p("good.yaml"), "-o", _w("user")], "user"),
    ("train-out-file", ["train", "-p", _p("good.yaml"), "-o", _w("file.txt")], "file.txt"),
    ("train-encoder-weights-garbage", ["train", "-p", _p("enc_weights.yaml"), "-o", _w("r2")], "file.txt"),
    ("train-store-dir-user", ["train", "-p", _p("user_store.yaml"), "-o", _w("r2")], "user"),
    ("resume-missing", _resume("good.yaml", "nockpt"), "nockpt"),
    ("resume-trunc-state", _resume("good.yaml", "ckpt_trunc"), "state.pt"),
    ("resume-garbage-state", _resume("good.yaml", "ckpt_garbage"), "state"),
    ("resume-bad-meta", _resume("good.yaml", "ckpt_meta"), "meta.json"),
    ("resume-bad-weights", _resume("good.yaml", "ckpt_weights"), "safet"),
    ("resume-other-model", _resume("other_model.yaml", "run/checkpoint"), "size mismatch"),
    # predict
    ("predict-missing-ckpt", _predict("data", "nockpt", "sub.json"), "nockpt"),
    ("predict-other-config", _predict("data", "ckpt_other", "sub.json"), "size mismatch"),
    ("predict-bad-meta", _predict("data", "ckpt_meta", "sub.json"), "meta.json"),
    ("predict-bad-weights", _predict("data", "ckpt_weights", "sub.json"), "model.safetensors"),
    ("predict-out-folder", _predict("data", "run/checkpoint", "user"), "user"),
    ("predict-out-annotations", _predict("data", "run/checkpoint", "json/gt.json"), "gt.json"),
    ("predict-out-under-file", _predict("data", "run/checkpoint", "file.txt/sub.json"), "file.txt"),
    ("predict-missing-data", _predict("nodata", "run/checkpoint", "sub.json"), "nodata"),
    ("predict-truncated-video", _predict("data_trunc", "run/checkpoint", "sub.json"), "frame"),
    # score
    ("score-pred-folder", ["score", "--gt", _w("json/gt.json"), "--pred", _w("json/sub_dir")], "sub_dir"),
    ("score-missing-videos", ["score", "--gt", _w("json/gt.json"), "--pred", _w("json/sub_missing.json")], "missing"),
    ("score-empty-list", ["score", "--gt", _w("json/gt.json"), "--pred", _w("json/sub_empty.json")], "missing"),
    ("score-unknown-video", ["score", "--gt", _w("json/gt.json"), "--pred", _w("json/sub_unknown.json")], "Nope_9"),
    ("score-not-json", ["score", "--gt", _w("json/gt.json"), "--pred", _w("json/not_json.json")], "not_json"),
    ("score-missing-gt", ["score", "--gt", _w("json/nope.json"), "--pred", _w("json/sub_empty.json")], "nope.json"),
    # profile, bench, run
    ("profile-unknown-key", ["profile", "-p", _p("profile_unknown.yaml")], "stepz"),
    ("profile-dup-key", ["profile", "-p", _p("dup.yaml")], "epochs"),
    ("profile-no-data-root", ["profile", "-p", _p("no_root.yaml")], "data_root"),
    ("profile-trace-over-a-file", ["profile", "-p", _p("good.yaml"), "--trace", _w("file.txt")], "file.txt"),
    ("profile-trace-into-folder", ["profile", "-p", _p("good.yaml"), "--trace", _w("user")], "user"),
    ("profile-steps-0", ["profile", "-p", _p("good.yaml"), "--steps", "0"], "--steps"),
    ("bench-episodes-0", ["bench", "--episodes", "0"], "--episodes"),
    ("bench-repeats-x", ["bench", "--repeats", "x"], "--repeats"),
    ("bench-unknown-key", ["bench", "-p", _p("unknown.yaml"), "--episodes", "1"], "epochz"),
    (
        "bench-unknown-key-names-file",
        ["bench", "-p", _p("profile_unknown.yaml")],
        "profile_unknown.yaml: unknown key 'stepz'",
    ),
    ("profile-unknown-key-names-file", ["profile", "-p", _p("unknown.yaml")], "unknown.yaml: unknown key 'epochz'"),
    ("train-key-of-another-notebook", ["train", "-p", _p("key_of_04.yaml"), "-o", _w("r2")], "key 'bench_episodes'"),
    ("bench-unknown-preset", ["bench", "-p", _p("good.yaml"), "--preset", "warp", "--episodes", "1"], "warp"),
    ("run-unknown-notebook", ["run", "99_nope", "-o", _w("r3")], "99_nope"),
    ("run-unknown-profile", ["run", "--profile", "huge"], "huge"),
    ("unknown-command", ["fly"], "fly"),
]
SUBPROCESS = {"check-truncated-video", "cache-out-data-root", "train-dup-key", "score-empty-list"}


def _argv(spec: list, ws: Path) -> list[str]:
    return [a(ws) if callable(a) else a for a in spec]


def _main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as stop:  # argparse
        return int(stop.code)


@pytest.mark.parametrize(("argv", "words"), [pytest.param(a, w, id=i) for i, a, w in CASES])
def test_bad_input_is_one_line_exit_2_and_harmless(ws, argv, words, request, capsys, monkeypatch):
    case = request.node.callspec.id
    monkeypatch.chdir(ws)  # a default data/demo or outputs/ would be looked for (and written) here
    before = tree_digest(ws)
    args = _argv(argv, ws)
    if case in SUBPROCESS:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), *sys.path])}
        proc = subprocess.run([sys.executable, "-m", "refdet_core.cli", *args], capture_output=True, text=True, env=env)
        code, err = proc.returncode, proc.stderr
    else:
        code, err = _main(args), capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, f"exit {code}, stderr: {err[-2000:]}"
    assert len(lines) == 1, f"expected one line, got: {err[-2000:]}"
    assert lines[0].startswith("refdet: error: ") and "Traceback" not in err
    assert words in lines[0], lines[0]
    assert tree_digest(ws) == before, "a failed command changed files"


def test_the_table_is_big_enough():
    assert len({i for i, _, _ in CASES}) == len(CASES) >= 40


def test_allow_truncated_covers_the_decoded_frames_with_a_warning(ws, tmp_path, capsys, caplog):
    out = tmp_path / "sub.json"
    argv = ["predict", "--data", str(ws / "data_trunc"), "--ckpt", str(ws / "run" / "checkpoint"), "--out", str(out)]
    with caplog.at_level("WARNING"):
        assert main([*argv, "--allow-truncated"]) == 0
    summary = json.loads(capsys.readouterr().out)
    videos = sorted(os.listdir(ws / "data_trunc" / "samples"))
    assert summary["videos"] == len(videos) and 20 <= summary["frames"] - 40 * (len(videos) - 1) < 40
    assert [e["video_id"] for e in json.loads(out.read_text())] == videos
    assert f"{videos[0]}/drone_video.mp4: decoding stopped at frame" in caplog.text and "only" in caplog.text


def test_validate_without_a_checkpoint_is_one_line(tmp_path, capsys):
    from refdet_core.cli import main

    assert main(["validate", "--ckpt", str(tmp_path / "nowhere"), "--data", str(tmp_path)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere" in err[0], err
