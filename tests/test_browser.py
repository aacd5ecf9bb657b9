"""The explorer in a real browser: JupyterLab + headless Chromium, driven by Playwright.

Starts JupyterLab from this environment on a free local port (with a token) over a copy of
``notebooks/explore.ipynb``, opens it in Chromium, runs all cells, waits for the explorer,
then changes the layer, the head and the query, and clicks on the picture in encoder mode.
After each action the picture (the pixels of the explorer's ipympl canvas) must change.
Screenshots go to the test's temporary folder (printed at the end).

Needs the Python packages ``playwright``, ``jupyterlab``, ``ipywidgets``, ``ipympl`` and a
Chromium binary (Debian: ``apt-get install chromium``; browsers are never downloaded). The
binary is ``$CHROMIUM`` if set, else the first of ``chromium``, ``chromium-browser``,
``google-chrome`` on the PATH. Skipped, with the reason, only when no browser can start.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "explore.ipynb"
TOKEN = "ddetr-browser-test"


def _chromium() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _jupyter_data_dirs() -> list[str]:
    """Where the lab extensions (ipywidgets, ipympl) of *this* environment live: share/jupyter
    under the prefix that holds the installed packages (also when the venv only borrows them)."""
    import ipywidgets
    import jupyterlab

    dirs = []
    for module in (jupyterlab, ipywidgets):
        prefix = Path(module.__file__).resolve().parents[4]  # <prefix>/lib/pythonX.Y/site-packages/<pkg>/
        d = prefix / "share" / "jupyter"
        if (d / "labextensions").is_dir() and str(d) not in dirs:
            dirs.append(str(d))
    return dirs


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server over a folder holding a copy of explore.ipynb -> base URL."""
    pytest.importorskip("jupyterlab")
    work = tmp_path / "lab"
    work.mkdir()
    shutil.copy(NOTEBOOK, work / "explore.ipynb")  # the committed notebook stays clean
    env = dict(os.environ)
    env.update({
        "COURSE_SCALE": "smoke", "PYTHONSAFEPATH": "1",
        "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter_config"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "IPYTHONDIR": str(tmp_path / "ipython"), "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "lab_settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "lab_workspaces"),
        "JUPYTER_PATH": os.pathsep.join(_jupyter_data_dirs() + [p for p in [env.get("JUPYTER_PATH")] if p]),
    })
    port = _free_port()
    log = open(tmp_path / "jupyterlab.log", "w")
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
               f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={work}",
               "--LabApp.expose_app_in_browser=True"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI containers run as root
        command.append("--allow-root")
    proc = subprocess.Popen(command, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={TOKEN}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                log.flush()
                raise AssertionError(f"JupyterLab did not start:\n{(tmp_path / 'jupyterlab.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the Python package playwright is not installed")
    exe = _chromium()
    if exe is None:
        reason = "no Chromium found (set $CHROMIUM or install Debian's chromium package)"
        print("SKIP:", reason)
        pytest.skip(reason)
    pw = sync_api.sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=exe, headless=True,
                               args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
    except Exception as e:  # no display libraries, a broken install, ...
        pw.stop()
        reason = f"Chromium at {exe} cannot start: {str(e).splitlines()[0]}"
        print("SKIP:", reason)
        pytest.skip(reason)
    try:
        yield b
    finally:
        b.close()
        pw.stop()


_PICTURE_JS = """() => {
  const c = document.querySelector('.ddetr-explorer canvas');
  return c && c.width > 0 ? c.toDataURL('image/png') : null;
}"""


@pytest.mark.slow
def test_explorer_reacts_in_a_real_browser(lab, browser, tmp_path):
    t0 = time.time()
    times = {}
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{lab}/lab/tree/explore.ipynb?token={TOKEN}", timeout=90_000)
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget "
                           "&& window.jupyterapp.shell.currentWidget.context", timeout=90_000)
    page.evaluate("""async () => {
        const panel = window.jupyterapp.shell.currentWidget;
        await panel.context.ready;
        await panel.sessionContext.ready;
    }""")
    times["lab open"] = time.time() - t0
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")

    # The explorer's picture appears once its cell has run.
    explorer = page.locator(".ddetr-explorer")
    explorer.wait_for(timeout=120_000)
    page.wait_for_function(f"() => ({_PICTURE_JS})() !== null", timeout=60_000)
    page.wait_for_function("""() => {
        const k = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
        return k && k.status === 'idle' && !document.querySelector('.jp-InputPrompt[data-prompt="*"]')
            && ![...document.querySelectorAll('.jp-InputPrompt')].some(p => p.textContent.includes('*'));
    }""", timeout=120_000)
    explorer.scroll_into_view_if_needed()
    times["notebook run"] = time.time() - t0 - times["lab open"]
    errors_in_cells = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    tracebacks = [t for t in errors_in_cells.all_inner_texts() if "Traceback" in t or "Error" in t]
    assert not tracebacks, tracebacks

    shots = tmp_path / "screenshots"
    shots.mkdir()
    state = {"picture": None, "n": 0}

    def snapshot(name):
        state["n"] += 1
        explorer.screenshot(path=str(shots / f"{state['n']:02d}_{name}.png"))

    def wait_for_new_picture(action: str):
        """The canvas pixels differ from the last picture (ipympl redraws asynchronously)."""
        deadline = time.time() + 45
        while time.time() < deadline:
            pic = page.evaluate(_PICTURE_JS)
            if pic is not None and pic != state["picture"]:
                time.sleep(0.3)  # let a second message (a diff frame) land
                state["picture"] = page.evaluate(_PICTURE_JS)
                snapshot(action)
                return
            time.sleep(0.25)
        snapshot(action + "_UNCHANGED")
        raise AssertionError(f"the picture did not change after: {action} (screenshots in {shots})")

    def control(kind: str, description: str):
        label = page.locator("label.widget-label", has_text=re.compile(rf"^\s*{re.escape(description)}:?\s*$", re.I))
        return explorer.locator(f".{kind}", has=label).first

    def set_readout(description: str, value):
        readout = control("widget-slider", description).locator(".widget-readout")
        readout.click()
        page.keyboard.press("Control+A")
        page.keyboard.type(str(value))
        page.keyboard.press("Enter")

    wait_for_new_picture("loaded")

    set_readout("layer", 0)
    wait_for_new_picture("layer_0")

    control("widget-dropdown", "head").locator("select").select_option(label="1")
    wait_for_new_picture("head_1")

    set_readout("score", 0)  # every query in the list
    wait_for_new_picture("score_0")
    query = control("widget-dropdown", "query").locator("select")
    assert query.locator("option").count() >= 2
    current = query.input_value()
    other = next(v for v in query.locator("option").evaluate_all("os => os.map(o => o.value)") if v != current)
    query.select_option(value=other)
    wait_for_new_picture("query_changed")

    explorer.locator(".widget-toggle-buttons button", has_text=re.compile(r"^\s*encoder\s*$")).click()
    wait_for_new_picture("encoder")
    x_readout = control("widget-slider", "x").locator(".widget-readout")
    before = x_readout.inner_text()
    canvas = explorer.locator("canvas").last  # ipympl's top canvas receives the mouse
    box = canvas.bounding_box()
    page.mouse.click(box["x"] + 0.22 * box["width"], box["y"] + 0.35 * box["height"])
    wait_for_new_picture("encoder_click")
    assert x_readout.inner_text() != before, "the click did not move the encoder query"

    times["actions"] = time.time() - t0 - times["lab open"] - times["notebook run"]
    times["total"] = time.time() - t0
    print("browser test:", ", ".join(f"{k} {v:.1f} s" for k, v in times.items()), f"- screenshots in {shots}")
    assert not [e for e in errors if "ipympl" in e.lower() or "widget" in e.lower()], errors
