"""The real dashboard in a real browser: Voila serves the demo notebook, headless Chromium drives it.

The server runs as the container does (docker/entrypoint.sh): behind a token, with voila.json's settings;
its kernel culling is made short here, so an abandoned page is seen to lose its kernel within the test.

Needs Debian's `chromium` and `chromium-driver` (`make browser-deps`). Without them the test skips,
or fails when env `CI` is set. The screenshot is saved in the test's tmp dir and, when env
`MEMSEG_SCREENSHOT_DIR` is set, copied there.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "[demo] model inference.ipynb"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CATEGORY = "weave"

pytestmark = pytest.mark.browser


def _need(condition: bool, reason: str) -> None:
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    """Child processes of `pid`, recursively (from /proc; Voila's kernels run in their own session)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _kernels(server_pid: int) -> dict[int, int]:
    """The server's ipykernel processes: pid -> resident memory in kB."""
    out = {}
    for pid in _descendants(server_pid):
        try:
            if b"ipykernel" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        out[pid] = int(next((line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")), "0"))
    return out


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server and every process it started (the kernel), only those."""
    kids = _descendants(proc.pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in [proc.pid, *kids]:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=10)
            alive = [k for k in kids if Path(f"/proc/{k}").exists()]
            if not alive:
                return
            time.sleep(1)
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def demo_env(synthetic_root: Path, tmp_path_factory) -> dict[str, str]:
    """The synthetic fixture dataset and a tiny trained checkpoint, as env vars for the demo notebook."""
    from memseg.apps import demo

    base = tmp_path_factory.mktemp("browser")
    data = synthetic_root
    settings = demo.DemoSettings(data=data, category=CATEGORY, runs=base / "runs", device="cpu", dtd=None,
                                 size=64, steps=3, batch_size=2, memory_size=2, extra_train={"val_fraction": 0.0})
    ckpt = demo.prepare(settings, progress=False, log=lambda _m: None)
    return {"MEMSEG_DATA": str(data), "MEMSEG_CATEGORY": CATEGORY, "MEMSEG_CHECKPOINT": str(ckpt),
            "MEMSEG_RUNS": str(base / "runs"), "MEMSEG_DEVICE": "cpu"}


def test_dashboard_in_headless_chromium(demo_env: dict[str, str], tmp_path: Path) -> None:
    _need(Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(),
          f"{CHROMIUM} / {CHROMEDRIVER} not found: install Debian's chromium and chromium-driver (make browser-deps)")
    voila = Path(sys.executable).parent / "voila"
    _need(voila.exists(), f"{voila} not found: install the notebook extras (pip install -e '.[notebooks]')")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    port = _free_port()
    token = secrets.token_urlsafe(16)
    env = {**os.environ, **demo_env, "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime"),
           "IPYTHONDIR": str(tmp_path / "ipython"), "PYTHONUNBUFFERED": "1",
           "JUPYTER_TOKEN": token}  # as docker/entrypoint.sh passes it: never on the command line
    log_path = tmp_path / "voila.log"
    log = open(log_path, "w")
    cull_after_s = 30  # voila.json says 120; short here. Long enough for the page to connect after the render.
    server = subprocess.Popen(
        [str(voila), str(NOTEBOOK), f"--port={port}", "--Voila.ip=127.0.0.1", "--no-browser", "--Voila.auto_token=True",
         f"--MappingKernelManager.cull_idle_timeout={cull_after_s}", "--MappingKernelManager.cull_interval=5"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    driver = None
    shot = tmp_path / "dashboard.png"

    def server_log() -> str:
        log.flush()
        return log_path.read_text()[-4000:]

    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.time() + 60
        while True:  # wait for the server to listen
            try:  # a TCP connect only: a GET of the page would start a kernel
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    pytest.fail(f"voila did not start on port {port}:\n{server_log()}")
                time.sleep(0.5)

        # 0. without the token the page is refused (sent to the login form; no kernel starts)
        with urllib.request.urlopen(url, timeout=30) as resp:
            assert "/login" in resp.geturl(), f"the page was served without a token: {resp.geturl()}"
        assert not _kernels(server.pid)

        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                    "--window-size=1680,1150", f"--user-data-dir={tmp_path / 'chrome-profile'}"):
            opts.add_argument(arg)
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
        driver.set_page_load_timeout(120)
        driver.get(f"{url}?token={token}")

        def css(sel: str):
            return driver.find_element(By.CSS_SELECTOR, sel)

        def wait(cond, timeout: float, what: str):
            try:
                return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: cond())
            except TimeoutException:
                driver.save_screenshot(str(tmp_path / "timeout.png"))
                pytest.fail(f"timed out after {timeout} s waiting for {what}\nvoila log:\n{server_log()}")

        def text(sel: str) -> str:
            els = driver.find_elements(By.CSS_SELECTOR, sel)
            return els[0].text if els else ""

        def src(sel: str) -> str:
            els = driver.find_elements(By.CSS_SELECTOR, sel)
            return els[0].get_attribute("src") or "" if els else ""

        def score() -> str:
            """The score at full precision (data-score; the page shows 3 decimals, a 3-step model barely moves)."""
            els = driver.find_elements(By.CSS_SELECTOR, ".memseg-score-value")
            return els[0].get_attribute("data-score") or "" if els else ""

        # 1. the app renders: score, verdict and all five panels
        wait(lambda: text(".memseg-score-value") != "", 180, "the first prediction (.memseg-score-value)")
        for key in ("input", "truth", "heatmap", "overlay", "mask"):
            wait(lambda key=key: src(f"img.memseg-image-{key}") != "", 30, f"the {key} panel")
        assert text(".memseg-verdict") in ("NORMAL", "ANOMALOUS")
        assert "ms" in text(".memseg-time")
        assert text(".memseg-error") == ""
        first_src = src("img.memseg-image-input")

        # 2. open "Simulate a defect": the input becomes a simulated image
        tabs = driver.find_elements(By.CSS_SELECTOR, ".memseg-tabs .lm-TabBar-tab, .memseg-tabs .p-TabBar-tab")
        assert len(tabs) == 2, "expected the Inspect and Simulate tabs"
        tabs[1].click()
        wait(lambda: "simulated" in text(".memseg-caption"), 60, "the simulated image")
        sim_src, sim_score = src("img.memseg-image-input"), score()
        caption = text(".memseg-caption")
        assert sim_src != first_src

        # 3. move δ with the keyboard on the slider handle: simulated image and score change
        handle = css(".memseg-delta .noUi-handle")
        driver.execute_script("arguments[0].focus();", handle)
        for _ in range(6):
            handle.send_keys(Keys.ARROW_RIGHT)
        wait(lambda: text(".memseg-caption") != caption, 60, "the caption to show the new δ")
        wait(lambda: src("img.memseg-image-input") != sim_src, 30, "a new simulated image after moving δ")
        wait(lambda: score() != sim_score, 30, "a new score after moving δ")
        assert "δ=0.90" in text(".memseg-caption")  # 0.60 + 6 x 0.05

        # 4. pick another test image from the dropdown
        before = src("img.memseg-image-input"), text(".memseg-caption")
        select = Select(css(".memseg-image select"))
        n = len(select.options)
        assert n >= 4
        current = select.first_selected_option.text
        select.select_by_index(n - 1)
        wait(lambda: text(".memseg-caption") != before[1], 60, "the caption of the newly picked image")
        wait(lambda: src("img.memseg-image-input") != before[0], 30, "the newly picked image")
        assert Select(css(".memseg-image select")).first_selected_option.text != current
        driver.save_screenshot(str(shot))

        # 5. upload a file that is not an image: a clear error in the page, the app keeps working
        tabs[0].click()  # the upload button lives in the "Inspect" tab
        wait(lambda: "simulated" not in text(".memseg-caption"), 60, "the real image in the Inspect tab")
        bad = tmp_path / "not-an-image.png"
        bad.write_text("just some text pretending to be a PNG\n")
        # ipywidgets 8 keeps FileUpload's <input type=file> out of the DOM and click()s it from the button;
        # make that click attach the input to the page instead of opening a dialog, then type the path.
        driver.execute_script("""
            const click = HTMLInputElement.prototype.click;
            HTMLInputElement.prototype.click = function () {
                if (this.type !== 'file') { return click.call(this); }
                this.classList.add('memseg-test-file-input');
                this.style.display = 'block';
                document.body.appendChild(this);
            };""")
        css("button.memseg-upload, .memseg-upload").click()
        wait(lambda: driver.find_elements(By.CSS_SELECTOR, "input.memseg-test-file-input"), 10,
             "the upload's file input")
        css("input.memseg-test-file-input").send_keys(str(bad))
        wait(lambda: "not-an-image.png" in text(".memseg-error"), 60, "the upload error message")
        assert "not an image" in text(".memseg-error")
        driver.save_screenshot(str(tmp_path / "dashboard-upload-error.png"))
        # an upload over the 20 MB limit reaches the kernel (voila.json raises the websocket message limit)
        # and is refused by size, before any decoding
        huge = tmp_path / "huge.png"
        huge.write_bytes(b"\0" * (21 * 2**20))
        css("button.memseg-upload, .memseg-upload").click()
        css("input.memseg-test-file-input").send_keys(str(huge))
        wait(lambda: "huge.png" in text(".memseg-error"), 90, "the oversize upload error")
        assert "MB limit" in text(".memseg-error")
        caption = text(".memseg-caption")
        css(".memseg-next").click()  # the kernel is alive and answers; a good action clears the error
        wait(lambda: text(".memseg-caption") != caption, 60, "the next image after the bad upload")
        wait(lambda: text(".memseg-error") == "", 30, "the error to clear")

        # 6. leaving the page frees its kernel: disconnected and idle, it is culled (voila.json keeps the XSRF
        # check on, so Voila 0.5's own unload request is refused, voila-dashboards/voila#1458)
        kernels = _kernels(server.pid)
        assert len(kernels) == 1, f"expected one kernel for one page, found {kernels}"
        print(f"kernel of one viewer: {max(kernels.values()) / 1024:.0f} MB resident")
        driver.get("about:blank")
        deadline = time.time() + cull_after_s + 60
        while _kernels(server.pid) and time.time() < deadline:
            time.sleep(1)
        assert not _kernels(server.pid), f"the kernel of the page left behind is still running:\n{server_log()}"

        # 7. a page whose browser never connects or has gone (here: a plain GET, which runs the notebook)
        # leaves an idle kernel with no connection: it is culled
        with urllib.request.urlopen(f"{url}?token={token}", timeout=180) as resp:
            resp.read()
        assert len(_kernels(server.pid)) == 1
        deadline = time.time() + cull_after_s + 60
        while _kernels(server.pid) and time.time() < deadline:
            time.sleep(1)
        assert not _kernels(server.pid), f"the abandoned page's kernel is still running:\n{server_log()}"
        assert "Culling" in server_log()
    finally:
        if driver is not None:
            driver.quit()
        _stop(server)
        log.close()
        out = os.environ.get("MEMSEG_SCREENSHOT_DIR")
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            for name in ("dashboard.png", "dashboard-upload-error.png", "timeout.png"):
                if (tmp_path / name).exists():
                    shutil.copy(tmp_path / name, Path(out) / name)
    assert shot.exists() and shot.stat().st_size > 10_000
