"""Notebook hygiene, params files, and a papermill run of every notebook on the smoke profile."""

import json
from pathlib import Path

import nbformat
import papermill
import pytest
import yaml

from refdet_core.config import FLAT_KEYS, NOTEBOOK_KEYS
from refdet_core.runner import NOTEBOOKS, PROFILES, NotebookError, run_notebooks

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
PRESENT = [n for n in NOTEBOOKS if (NB_DIR / f"{n}.ipynb").exists()]


def test_notebooks_exist():
    assert PRESENT == sorted(p.stem for p in NB_DIR.glob("*.ipynb"))
    assert "01_data_cache" in PRESENT


@pytest.mark.parametrize("name", PRESENT)
def test_notebook_committed_without_outputs(name):
    nb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert nb.metadata["language_info"]["name"] == "python"
    code = [c for c in nb.cells if c.cell_type == "code"]
    for cell in code:
        assert cell.outputs == [], f"{name}: a cell has outputs; strip them before committing"
        assert cell.execution_count is None, f"{name}: a cell has an execution count"
    assert "widgets" not in nb.metadata, f"{name}: saved widget state; strip it before committing"
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name}: needs exactly one cell tagged 'parameters'"


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("name", PRESENT)
def test_params_files_match_parameters_cell(name, profile):
    path = ROOT / "params" / profile / f"{name}.yaml"
    assert path.is_file(), f"missing {path}"
    declared = papermill.inspect_notebook(str(NB_DIR / f"{name}.ipynb"))
    keys = set(yaml.safe_load(path.read_text()) or {})
    assert keys <= set(declared), f"{path}: keys not in the parameters cell: {sorted(keys - set(declared))}"


def test_notebook_keys_are_the_parameters_that_are_no_config_key():
    assert set(NOTEBOOK_KEYS) == set(NOTEBOOKS)
    for name in PRESENT:
        declared = set(papermill.inspect_notebook(str(NB_DIR / f"{name}.ipynb")))
        assert NOTEBOOK_KEYS[name] == declared - FLAT_KEYS, f"config.NOTEBOOK_KEYS[{name!r}] != its parameters cell"


def fake_repo(root: Path, notebook: str, params_text: str) -> Path:
    """A project folder holding one of the notebooks and its smoke params file with ``params_text``."""
    fake = root / "repo"
    (fake / "notebooks").mkdir(parents=True)
    (fake / "params" / "smoke").mkdir(parents=True)
    nb = nbformat.read(NB_DIR / f"{notebook}.ipynb", as_version=4)
    nbformat.write(nb, fake / "notebooks" / f"{notebook}.ipynb")
    (fake / "params" / "smoke" / f"{notebook}.yaml").write_text(params_text)
    return fake


def test_unknown_params_key_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(fake_repo(tmp_path, "01_data_cache", "img_size: 64\nimg_sise: 64\n"))
    with pytest.raises(NotebookError, match=r"01_data_cache.yaml: unknown key 'img_sise'"):
        run_notebooks(["01"], profile="smoke", out_dir=tmp_path / "out")


def test_unknown_notebook_and_profile():
    with pytest.raises(NotebookError, match="unknown notebook"):
        run_notebooks(["99_nothing"], profile="smoke")
    with pytest.raises(NotebookError, match="unknown profile"):
        run_notebooks(["01"], profile="huge")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """Every notebook, in order, on the smoke profile (they read each other's files)."""
    out = tmp_path_factory.mktemp("smoke_run")
    results = run_notebooks(None, profile="smoke", out_dir=out)
    return out, results


@pytest.mark.slow
def test_smoke_run_all_notebooks(smoke_run):
    out, results = smoke_run
    assert [r["notebook"] for r in results] == PRESENT
    for name in PRESENT:
        folder = out / name
        assert (folder / f"{name}.ipynb").is_file()
        assert (folder / "params.yaml").is_file() and (folder / "config.yaml").is_file()
        assert (folder / "metrics.json").is_file(), f"{name} wrote no metrics.json"
        assert list(folder.glob("*.png")), f"{name} wrote no figures"


@pytest.mark.slow
def test_smoke_01_metrics(smoke_run):
    out, _ = smoke_run
    m = json.loads((out / "01_data_cache" / "metrics.json").read_text())
    assert m["videos"] == 4 and m["annotated_frames"] > 0
    assert m["seek_ms_per_sample"] > 0 and m["store_ms_per_sample"] > 0
    assert m["store_speedup_vs_seek"] == pytest.approx(m["seek_ms_per_sample"] / m["store_ms_per_sample"])
    assert len(m["hit_rate_per_epoch"]) == 2 and all(0 <= h <= 1 for h in m["hit_rate_per_epoch"])


@pytest.mark.slow
def test_smoke_06_metrics(smoke_run):
    out, _ = smoke_run
    m = json.loads((out / "06_validate" / "metrics.json").read_text())
    for key in ("mean_st_iou", "detector_only_mean_st_iou", "reid_mean_st_iou", "tracks_mean_st_iou"):
        assert 0.0 <= m[key] <= 1.0, key
    assert 0.0 <= m["baseline_mean_st_iou"] <= 1.0
    assert set(m["st_iou"]) == set(m["detector_only_st_iou"]) == set(m["reid_st_iou"]) == set(m["videos"])
    assert "reference_swap_mean_st_iou" in m and m["frames_per_s"] > 0
    assert not set(m["tune_videos"]) & set(m["videos"]), "settings were chosen on evaluated videos"
    assert m["selection"] == m["chosen"]["full"]["selection"] and m["selection"]["tracks"] is True
    assert (out / "06_validate" / "submission.json").is_file()


@pytest.mark.slow
def test_predict_applies_the_settings_06_chose(smoke_run, tmp_path, capsys):
    """`refdet predict` on 06's checkpoint reproduces 06's per-video ST-IoU: the post-processing and candidate
    settings 06 chose are saved beside the checkpoint and applied, not the defaults."""
    from refdet_core.cli import main
    from refdet_core.eval.metrics import st_iou
    from refdet_core.eval.submission import read_annotations, read_submission

    out, _ = smoke_run
    metrics = json.loads((out / "06_validate" / "metrics.json").read_text())
    ckpt = out / "05_train_stage2" / "checkpoint"
    saved = json.loads((ckpt / "inference.json").read_text())
    assert saved["postprocess"] == metrics["postprocess"] and saved["selection"] == metrics["selection"]
    data_root = ROOT / yaml.safe_load((ROOT / "params" / "smoke" / "06_validate.yaml").read_text())["data_root"]
    sub = tmp_path / "submission.json"
    assert main(["predict", "--data", str(data_root), "--ckpt", str(ckpt), "--out", str(sub), "-q"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["postprocess"]["enter"] == metrics["postprocess"]["enter"]
    gt = read_annotations(data_root / "annotations" / "annotations.json")
    pred = read_submission(sub)
    scores = st_iou({v: gt.get(v, {}) for v in metrics["videos"]}, {v: pred.get(v, {}) for v in metrics["videos"]})
    for vid, value in metrics["st_iou"].items():
        assert scores["videos"][vid] == pytest.approx(value, abs=1e-6), vid


@pytest.mark.slow
def test_notebook_runs_from_the_notebooks_folder(tmp_path):
    """JupyterLab's kernels start in notebooks/: the params' relative paths still mean the project root."""
    params = yaml.safe_load((ROOT / "params" / "smoke" / "01_data_cache.yaml").read_text())
    assert not Path(params["data_root"]).is_absolute()
    papermill.execute_notebook(
        str(NB_DIR / "01_data_cache.ipynb"),
        str(tmp_path / "01_data_cache.ipynb"),
        parameters={**params, "run_dir": str(tmp_path)},
        kernel_name="python3",
        cwd=str(NB_DIR),
        progress_bar=False,
    )
    written = yaml.safe_load((tmp_path / "01_data_cache" / "params.yaml").read_text())
    assert written["data_root"] == str(ROOT / params["data_root"])
    assert written["interactive"] is False, "papermill's kernel is not a live one"
    assert json.loads((tmp_path / "01_data_cache" / "metrics.json").read_text())["videos"] == 4
    assert not (NB_DIR / "data").exists() and not (NB_DIR / "outputs").exists()


@pytest.mark.slow
def test_refdet_validate_runs_06s_protocol(smoke_run, capsys):
    """`refdet validate` is 06's protocol without the notebook: the same arms, the same figures."""
    from refdet_core.cli import main

    out, _ = smoke_run
    metrics = json.loads((out / "06_validate" / "metrics.json").read_text())
    ckpt = out / "05_train_stage2" / "checkpoint"
    data_root = ROOT / yaml.safe_load((ROOT / "params" / "smoke" / "06_validate.yaml").read_text())["data_root"]
    assert main(["validate", "--ckpt", str(ckpt), "--data", str(data_root), "--batch", "4", "-q", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    for key in ("mean_st_iou", "detector_only_mean_st_iou", "reid_mean_st_iou", "tracks_mean_st_iou"):
        assert got[key] == pytest.approx(metrics[key], abs=1e-6), key
    assert got["tune_videos"] == metrics["tune_videos"]
    for arm, chosen in metrics["chosen"].items():
        assert got["chosen"][arm]["selection"] == chosen["selection"], arm
        assert got["chosen"][arm]["postprocess"] == chosen["postprocess"], arm
        assert got["chosen"][arm]["tune_mean_st_iou"] == pytest.approx(chosen["tune_mean_st_iou"], abs=1e-6), arm


def test_replaced_params_key_names_the_replacement(tmp_path, monkeypatch):
    monkeypatch.chdir(fake_repo(tmp_path, "05_train_stage2", "img_size: 64\nframe_size: 128\n"))
    with pytest.raises(NotebookError, match=r"05_train_stage2.yaml: key 'frame_size' was replaced: img_size is the"):
        run_notebooks(["05"], profile="smoke", out_dir=tmp_path / "out")
