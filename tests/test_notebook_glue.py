"""What a JupyterLab user meets: paths from any working directory, auto switches, 04's panel and its snippet."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import papermill
import pytest
import yaml

from refdet_core import notebook
from refdet_core.config import ConfigError, config_from_dict, config_from_params
from refdet_core.notebook import NotebookRun, start_run
from refdet_core.speed import choice
from refdet_core.speed import options as registry

ROOT = Path(__file__).resolve().parents[1]


def _namespace(notebook_name: str, **values):
    """The parameters cell's defaults, as the notebook's globals hold them, with ``values`` on top."""
    declared = papermill.inspect_notebook(str(ROOT / "notebooks" / f"{notebook_name}.ipynb"))
    ns = {name: ast.literal_eval(p["default"]) for name, p in declared.items()}  # the cell's literals
    return {**ns, **values}


@pytest.fixture
def lab_cwd(demo_root, tmp_path, monkeypatch):
    """A copy of the project's notebooks in ``tmp_path/repo`` with the demo set at ``data/demo``, and the working
    directory in its ``notebooks/``, where JupyterLab starts kernels."""
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "notebooks", repo / "notebooks")
    (repo / "params").mkdir()
    (repo / "data").mkdir()
    (repo / "data" / "demo").symlink_to(demo_root)
    monkeypatch.chdir(repo / "notebooks")
    return repo


def test_relative_paths_mean_the_project_root(lab_cwd):
    ns = _namespace("01_data_cache", data_root="data/demo", store_dir="data/store", demo_if_missing=False)
    run = start_run("01_data_cache", ns)
    assert run.out == lab_cwd / "outputs" / "interactive" / "01_data_cache"
    assert ns["data_root"] == str(lab_cwd / "data" / "demo") and ns["store_dir"] == str(lab_cwd / "data" / "store")
    assert run.cfg.data.data_root == ns["data_root"] and run.cfg.data.store_dir == ns["store_dir"]
    assert yaml.safe_load((run.out / "params.yaml").read_text())["data_root"] == ns["data_root"]
    assert not (lab_cwd / "notebooks" / "outputs").exists()


def test_missing_data_is_reported_before_anything_is_created(lab_cwd):
    ns = _namespace("04_optimize", data_root="data/smoke")
    with pytest.raises(ConfigError, match=r"key 'data_root': .*/repo/data/smoke has no samples/ folder"):
        start_run("04_optimize", ns)
    assert not (lab_cwd / "outputs").exists() and not (lab_cwd / "notebooks" / "outputs").exists()


def test_earlier_notebook_output_is_checked(demo_root, tmp_path):
    ns = _namespace("06_validate", run_dir=str(tmp_path), data_root=str(demo_root))
    with pytest.raises(ConfigError, match=r"05_train_stage2/checkpoint is missing \(run 05_train_stage2 first"):
        start_run("06_validate", ns, needs=[("05_train_stage2", "checkpoint")])
    assert not (tmp_path / "06_validate").exists()


def test_fast_params_go_on_top_and_the_run_folder_holds_one_resolved_config(demo_root, tmp_path):
    snippet = tmp_path / "fast_params.yaml"
    snippet.write_text(yaml.safe_dump({"precision": "fp32", "compile": True, "num_workers": 1}))
    ns = _namespace("05_train_stage2", run_dir=str(tmp_path), data_root=str(demo_root), fast_params=str(snippet))
    run = start_run("05_train_stage2", ns)
    assert run.cfg.speed.precision == "fp32" and run.cfg.speed.compile and run.cfg.data.num_workers == 1
    assert ns["precision"] == "fp32" and ns["num_workers"] == 1 and "compile" not in ns  # the cell's names only
    params = yaml.safe_load((run.out / "params.yaml").read_text())
    written = yaml.safe_load((run.out / "config.yaml").read_text())
    assert params["fast_params"] == str(snippet) and params["compile"] is True
    assert config_from_params(params, source="params.yaml", notebooks=("05_train_stage2",)).to_dict() == written
    snippet.write_text(yaml.safe_dump({"precison": "fp32"}))
    with pytest.raises(ConfigError, match="fast_params.yaml: unknown key 'precison'"):
        start_run("05_train_stage2", ns)


def test_a_parameter_that_is_no_config_key_must_be_declared(demo_root, tmp_path):
    ns = _namespace("04_optimize", run_dir=str(tmp_path), data_root=str(demo_root))
    with pytest.raises(ConfigError, match="parameters of 05_train_stage2: unknown key 'threads'"):
        config_from_params(ns, source="parameters of 05_train_stage2", notebooks=("05_train_stage2",))
    assert config_from_params(ns, source="04", notebooks=("04_optimize",)).data.img_size == ns["img_size"]


def test_auto_switch_is_off_outside_a_live_kernel_and_explicit_values_win(demo_root, tmp_path):
    assert notebook.live_kernel() is False  # pytest, like papermill's kernel, has no person at a front end
    ns = _namespace("04_optimize", run_dir=str(tmp_path), data_root=str(demo_root))
    assert ns["interactive"] is None
    start_run("04_optimize", ns)
    assert ns["interactive"] is False
    ns = _namespace("04_optimize", run_dir=str(tmp_path), data_root=str(demo_root), interactive=True)
    start_run("04_optimize", ns)
    assert ns["interactive"] is True


def test_live_kernel_reads_the_front_end_request(monkeypatch):
    class Kernel:
        def __init__(self, allow):
            self.allow = allow

        def get_parent(self):
            return {"content": {"allow_stdin": self.allow}}

    class Shell:
        kernel = None

    shell = Shell()
    monkeypatch.setattr("IPython.get_ipython", lambda: shell)
    for allow, expected in ((True, True), (False, False)):  # JupyterLab allows stdin, nbclient never does
        shell.kernel = Kernel(allow)
        assert notebook.live_kernel() is expected


def _fake_bench(calls):
    def run_bench(presets, options, **kw):
        calls.append(presets)
        return {"speedup": {p: 1.0 + i for i, p in enumerate(presets)}, "presets": {}, "guard": {}}

    return run_bench


def test_panel_benches_the_ticked_set_and_writes_the_snippet_for_05(demo_root, tmp_path, monkeypatch):
    from refdet_core.widgets import option_panel

    cfg = config_from_dict({"data_root": str(demo_root), "img_size": 128})
    run = NotebookRun(name="04_optimize", out=tmp_path, params={"run_dir": str(tmp_path)}, cfg=cfg)
    calls = []
    monkeypatch.setattr(choice, "run_bench", _fake_bench(calls))
    seen_while_running = {}

    def on_run(names):
        seen_while_running.update(disabled=panel.button.disabled, status=panel.status.value)
        ticked = choice.bench_choice(run, names, params=tmp_path / "p.yaml", episodes=1, repeats=1)
        return ticked.figure, ticked.summary()

    panel = option_panel(list(registry.OPTIONS.values()), ["bf16"], on_run)
    assert all(box.description == name for name, box in panel.boxes.items()), "labels are the full names"
    assert "bench the ticked options against seed" in panel.button.description.lower()
    panel.boxes["bf16"].value = False
    panel.boxes["channels_last"].value = True
    panel.boxes["support_256"].value = True
    panel.button.click()
    ticked = [n for n in registry.OPTIONS if n in ("channels_last", "support_256")]  # the panel's order
    assert calls == [["seed", "+".join(["seed", *ticked])]]
    assert seen_while_running["disabled"] is True and "Running" in seen_while_running["status"]
    assert panel.button.disabled is False and "Done" in panel.status.value
    snippet = yaml.safe_load((tmp_path / "fast_params.yaml").read_text())
    assert snippet == registry.params_snippet(cfg, ticked)
    assert snippet["channels_last"] is True and snippet["support_size"] == 256
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["chosen"] == ticked and metrics["fast_params"] == snippet
    assert (tmp_path / "chosen_vs_seed.png").is_file()


def test_panel_with_nothing_ticked_runs_nothing(monkeypatch):
    from refdet_core.widgets import option_panel

    ran = []
    panel = option_panel(list(registry.OPTIONS.values()), [], lambda names: ran.append(names) or (None, ""))
    panel.button.click()
    assert ran == [] and "tick at least one" in panel.status.value


def test_training_monitor_moves_every_step_and_redraws_the_plot():
    import pandas as pd

    from refdet_core.widgets import training_monitor

    monitor = training_monitor(40)  # the plot is due every 2 steps
    history = pd.DataFrame({"step": [1, 2, 3], "loss": [3.0, 2.0, 1.0], "lr": [1e-3] * 3})
    asked = []
    monitor.update(1, {"epoch": 0, "loss": 3.0}, lambda: asked.append(1) or history.iloc[:1])
    assert monitor.bar.value == 1 and asked == [], "the plot waits for plot_every steps"
    monitor.update(3, {"epoch": 1, "loss": 1.0}, lambda: asked.append(3) or history)
    assert monitor.bar.value == 3 and asked == [3]
    assert (
        "3 / 40 steps" in monitor.status.value
        and "epoch 2" in monitor.status.value
        and "loss 1.000" in monitor.status.value
    )
    monitor.finish(3, "exited with 1")
    assert monitor.bar.bar_style == "danger" and "exited with 1" in monitor.status.value
