"""The README's dashboard screenshot: the demo notebook served by Voila, opened in headless Chromium.

Needs a trained checkpoint (``python -m memseg.apps.demo prepare`` makes the quick demo model), voila and Debian's
``chromium``/``chromium-driver`` (``make browser-deps``). It shows the first test image whose name contains
``--image`` and writes a PNG:

    .venv/bin/python docs/make_dashboard_screenshot.py --checkpoint runs/demo/toys/final.pt --data data/synthetic \\
        --category toys --image color --out assets/tour/dashboard.png
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "[demo] model inference.ipynb"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--category", required=True)
    p.add_argument("--runs", default=None, help="the dashboard's model folder (default: 3 levels up)")
    p.add_argument("--image", default="", help="show the first test image whose label contains this text")
    p.add_argument("--out", default=str(ROOT / "assets" / "tour" / "dashboard.png"))
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="memseg-shot-"))
    port, token = free_port(), secrets.token_urlsafe(16)
    env = {**os.environ, "MEMSEG_DATA": str(Path(args.data).resolve()), "MEMSEG_CATEGORY": args.category,
           "MEMSEG_CHECKPOINT": str(Path(args.checkpoint).resolve()), "MEMSEG_DEVICE": "cpu", "JUPYTER_TOKEN": token,
           "MEMSEG_RUNS": str(Path(args.runs or Path(args.checkpoint).resolve().parents[2]).resolve()),
           "JUPYTER_RUNTIME_DIR": str(work / "runtime"), "IPYTHONDIR": str(work / "ipython")}
    voila = Path(sys.executable).parent / "voila"
    server = subprocess.Popen([str(voila), str(NOTEBOOK), f"--port={port}", "--Voila.ip=127.0.0.1", "--no-browser"],
                              cwd=ROOT, env=env, stdout=open(work / "voila.log", "w"), stderr=subprocess.STDOUT)
    driver = None
    try:
        for _ in range(120):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
                break
            except OSError:
                time.sleep(0.5)
        opts = webdriver.ChromeOptions()
        opts.binary_location = "/usr/bin/chromium"
        for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--window-size=1500,1180",
                    f"--user-data-dir={work / 'chrome'}"):
            opts.add_argument(arg)
        driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=opts)
        driver.get(f"http://127.0.0.1:{port}/?token={token}")

        def score() -> str:
            els = driver.find_elements(By.CSS_SELECTOR, ".memseg-score-value")
            return (els[0].get_attribute("data-score") or "") if els else ""

        WebDriverWait(driver, 240, 0.5).until(lambda d: score() != "")
        if args.image:
            select = Select(driver.find_element(By.CSS_SELECTOR, ".memseg-image select"))
            labels = [o.text for o in select.options]
            match = next((i for i, label in enumerate(labels) if args.image in label), None)
            if match is None:
                p.error(f"--image {args.image!r}: no test image label contains it (first: {labels[:5]})")
            before = score()
            select.select_by_index(match)
            WebDriverWait(driver, 60, 0.5).until(lambda d: score() not in ("", before))
        time.sleep(2)  # the panels' images settle after the score
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
        from PIL import Image

        Image.open(out).convert("RGB").quantize(256).save(out, optimize=True)  # a few hundred KB for the README
        print(out, f"{out.stat().st_size // 1024} KB")
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
