"""04 in a real browser: JupyterLab on 127.0.0.1, the smoke profile, two options ticked, the bench run from the panel.

    python tests/browser/check_lab.py --out outputs/browser        (what `make test-browser` runs)

Finds Debian's ``chromium`` and ``chromium-driver`` (installs them with apt-get when missing and allowed), writes
``<out>/04_optimize_smoke.ipynb`` (notebook 04 with the smoke params injected, as papermill would), starts
``jupyter lab`` with no token, runs every cell, unticks the panel, ticks two options, clicks the run button and
checks: the button is disabled while the bench runs, the chart under the panel appears, the status line reports
it, and ``fast_params.yaml`` / ``metrics.json`` of the run hold the two options. After a save and a page reload the
panel still renders (widget state saved with the notebook). Screenshots go to ``<out>/*.png``. Exit status 0 when
every check passed, 1 otherwise (the failed check is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TICK = ("frame_store", "support_cache")  # the two options ticked in the panel
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
)
# the project's Lab settings (written by `make install`) plus one for this check: every cell stays in the page
LAB_SETTINGS = {
    "@jupyter-widgets/jupyterlab-manager:plugin": {"saveState": True},
    "@jupyterlab/notebook-extension:tracker": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False},
}


class CheckFailed(AssertionError):
    pass


def check(ok: bool, what: str) -> None:
    if not ok:
        raise CheckFailed(what)
    print(f"ok: {what}", flush=True)


def find_chromium() -> tuple[str, str]:
    """Paths of chromium and chromedriver; installs Debian's packages when they are missing and apt-get works."""
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if all(found):
        return found  # type: ignore[return-value]
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        sys.exit("check_lab: needs chromium and chromedriver (Debian: apt-get install chromium chromium-driver)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"], check=True, env=env)
    return shutil.which("chromium"), shutil.which("chromedriver")  # type: ignore[return-value]


def smoke_notebook(out: Path) -> Path:
    """04 with the smoke params (and a run folder under ``out``) injected; the smoke data written when missing."""
    import papermill
    import yaml

    from refdet_core.demo import write_demo
    from refdet_core.runner import notebook_params

    params = notebook_params("04_optimize", "smoke", out / "run", ROOT)
    data = ROOT / params["data_root"]
    if not (data / "samples").is_dir():
        smoke01 = yaml.safe_load((ROOT / "params" / "smoke" / "01_data_cache.yaml").read_text())
        write_demo(data, videos=smoke01["demo_videos"], frames=smoke01["demo_frames"])
    params["run_dir"] = str((out / "run").relative_to(ROOT)) if out.is_relative_to(ROOT) else str(out / "run")
    nb = papermill.parameterize.parameterize_notebook(
        papermill.iorw.load_notebook_node(str(ROOT / "notebooks" / "04_optimize.ipynb")), params
    )
    path = out / "04_optimize_smoke.ipynb"
    import nbformat

    nbformat.write(nb, path)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_lab(out: Path) -> tuple[subprocess.Popen, str]:
    settings = Path(tempfile.mkdtemp(prefix="lab-settings-"))
    project = Path(sys.prefix, "share", "jupyter", "lab", "settings", "overrides.json")
    merged = {**(json.loads(project.read_text()) if project.is_file() else {}), **LAB_SETTINGS}
    (settings / "overrides.json").write_text(json.dumps(merged))
    port = _free_port()
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--IdentityProvider.token=", "--ServerApp.password=", f"--ServerApp.root_dir={ROOT}",
           f"--LabApp.app_settings_dir={settings}", "--LabApp.expose_app_in_browser=True", "--allow-root"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    log = open(out / "lab.log", "wb")  # noqa: SIM115 - lives as long as the server
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(f"{url}/api/status", timeout=2)
            return server, url
        except OSError:
            time.sleep(1)
    raise CheckFailed(f"jupyter lab did not answer on {url} within 120 s; see {out / 'lab.log'}")


# ---------------------------------------------------------------- the browser
APP = "window.jupyterapp"
NOTEBOOK = f"{APP}.shell.currentWidget"
KERNEL = f"{NOTEBOOK}.sessionContext.session.kernel"
ERRORS_JS = f"""
const cells = {NOTEBOOK}.content.model.cells, found = [];
for (let i = 0; i < cells.length; i++) {{
  const c = cells.get(i);
  if (c.type !== 'code') continue;
  for (const o of c.outputs.toJSON()) if (o.output_type === 'error') found.push(o.ename + ': ' + o.evalue);
}}
return found;"""
IMAGES_JS = "return arguments[0].closest('.widget-vbox').querySelectorAll('img').length"  # figures in the panel
BUTTON_JS = "return [...document.querySelectorAll('button')].find(b => b.textContent.includes('Bench the ticked'))"


def open_browser(chromium: str, driver_path: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver_path), options=options)


def wait_for(browser, script: str, what: str, timeout: float, poll: float = 0.5, *args):
    """Poll a JavaScript snippet (``return ...``, ``arguments`` = ``args``) until it is truthy; returns its value."""
    from selenium.common.exceptions import JavascriptException

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            value = browser.execute_script(script, *args)
        except JavascriptException:
            value = None
        if value:
            return value
        time.sleep(poll)
    raise CheckFailed(f"timed out after {timeout:.0f} s waiting for {what}")


def checkbox(browser, name: str):
    from selenium.webdriver.common.by import By

    xpath = f"//div[contains(@class,'widget-checkbox')][.//span[normalize-space()='{name}']]//input"
    return browser.find_element(By.XPATH, xpath)


def shot(browser, out: Path, name: str, element=None) -> None:
    if element is not None:
        browser.execute_script("arguments[0].scrollIntoView({block: 'start'});", element)
        time.sleep(0.5)
    browser.save_screenshot(str(out / name))
    print(f"screenshot: {out / name}", flush=True)


def open_and_run_all(browser, url: str, notebook: Path, out: Path, timeout: float) -> None:
    browser.get(f"{url}/lab/tree/{notebook.relative_to(ROOT)}")
    wait_for(browser, f"return {KERNEL} && {KERNEL}.status === 'idle'", "the notebook and an idle kernel", 180)
    shot(browser, out, "01_notebook_opened.png")
    browser.execute_script(f"{APP}.commands.execute('notebook:run-all-cells');")
    running = "return document.querySelectorAll('.jp-InputPrompt').length"
    wait_for(browser, running, "the cells", 30)
    done = f"""const prompts = [...document.querySelectorAll('.jp-InputPrompt')].map(p => p.textContent);
      return {KERNEL}.status === 'idle' && prompts.every(p => !p.includes('*'));"""
    time.sleep(3)
    wait_for(browser, done, "every cell of 04 to finish", timeout, poll=2)
    errors = browser.execute_script(ERRORS_JS)
    check(not errors, f"every cell of 04 ran without an error {errors or ''}".strip())


def tick_and_bench(browser, out: Path) -> None:
    from selenium.webdriver.common.by import By

    button = browser.find_element(By.XPATH, "//button[contains(., 'Bench the ticked options against seed')]")
    check(button.is_displayed(), "the panel is shown in a live kernel (no flag edited)")
    names = browser.execute_script(
        "return [...document.querySelectorAll('.widget-checkbox span')].map(s => s.textContent.trim());"
    )
    check(len(names) >= 10 and all("…" not in n for n in names), f"the panel lists {len(names)} options, full labels")
    for name in names:
        if checkbox(browser, name).is_selected():
            browser.execute_script("arguments[0].click();", checkbox(browser, name))
    for name in TICK:
        browser.execute_script("arguments[0].click();", checkbox(browser, name))
    time.sleep(1)
    ticked = [n for n in names if checkbox(browser, n).is_selected()]
    check(ticked == list(TICK), f"ticked exactly {list(TICK)} (got {ticked})")
    images_before = browser.execute_script(IMAGES_JS, button)
    shot(browser, out, "02_panel_ticked.png", checkbox(browser, names[0]))
    browser.execute_script("arguments[0].click();", button)
    wait_for(browser, "return arguments[0].disabled", "the button disabled while the bench runs", 30, 0.1, button)
    status = browser.find_element(By.XPATH, "//*[contains(., 'Running') and contains(@class, 'widget-html-content')]")
    check("frame_store" in status.text, f"the status line says what runs: {status.text!r}")
    shot(browser, out, "03_bench_running.png", button)
    wait_for(browser, "return !arguments[0].disabled", "the bench to finish", 600, 1, button)
    images = wait_for(browser, IMAGES_JS, "the chart under the panel", 30, 0.5, button)
    check(images == images_before + 1, f"the chart appeared under the panel ({images_before} -> {images} images)")
    done = browser.find_element(By.XPATH, "//*[contains(., 'Done in') and contains(@class, 'widget-html-content')]")
    check("fast_params.yaml" in done.text, f"the status line names the snippet: {done.text!r}")
    shot(browser, out, "04_chart_updated.png", button)


def check_files(out: Path) -> None:
    import yaml

    run = out / "run" / "04_optimize"
    metrics = json.loads((run / "metrics.json").read_text())
    check(metrics["chosen"] == list(TICK), f"metrics.json records the ticked set {metrics['chosen']}")
    snippet = yaml.safe_load((run / "fast_params.yaml").read_text())
    check(snippet == metrics["fast_params"], "fast_params.yaml holds the ticked set's params for 05")


def reload_keeps_widgets(browser, notebook: Path, out: Path) -> None:
    browser.execute_script(f"return {APP}.commands.execute('docmanager:save');")
    time.sleep(3)
    saved = json.loads(notebook.read_text())
    check("application/vnd.jupyter.widget-state+json" in saved["metadata"].get("widgets", {}), "widget state saved")
    browser.refresh()
    wait_for(browser, f"return {KERNEL} && {KERNEL}.status === 'idle'", "the reloaded notebook", 180)
    wait_for(browser, "return document.querySelectorAll('.widget-checkbox').length", "the panel after a reload", 60)
    settled = "const t = document.body.innerText; return !/Loading widget|Error displaying widget/.test(t);"
    wait_for(browser, settled, "every widget (panel and progress bars) to render after a page reload", 60)
    check(True, "the panel and the progress bars render after a page reload")
    button = browser.execute_script(BUTTON_JS)
    shot(browser, out, "05_after_reload.png", button)


def run_checks(browser, url: str, notebook: Path, out: Path, timeout: float) -> None:
    open_and_run_all(browser, url, notebook, out, timeout)
    tick_and_bench(browser, out)
    check_files(out)
    reload_keeps_widgets(browser, notebook, out)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="outputs/browser")
    parser.add_argument("--timeout", type=float, default=900, help="seconds for running every cell of 04")
    args = parser.parse_args()
    out = (ROOT / args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    chromium, driver_path = find_chromium()
    notebook = smoke_notebook(out)
    server, url = start_lab(out)
    try:
        browser = open_browser(chromium, driver_path)
        try:
            run_checks(browser, url, notebook, out, args.timeout)
        finally:
            browser.save_screenshot(str(out / "99_last_view.png"))
            browser.quit()
    except CheckFailed as err:
        print(f"FAILED: {err}", flush=True)
        return 1
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    print(f"browser check passed; screenshots in {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
