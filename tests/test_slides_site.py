"""Slides and the site of executed notebooks (memseg.notebook.publish, docs/publish.py; `make slides`, `make docs`).

The slide metadata of the teaching notebooks is checked without executing anything. The browser tests build
the decks and the site from executed notebooks: the copies the notebook tests saved in this session
(notebook_runner.executed_dir), executing here only what is missing. reveal.js and MathJax come from the npm
registry (cached in build/vendor). Each page is opened in headless Chromium with the network blocked (no DNS,
a dead proxy), and every request the page made is read from Chromium's performance log: all must stay on the
machine (file:, data:, blob:, about: or loopback). `MEMSEG_SCREENSHOT_DIR=<dir>` keeps the screenshots.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.parse
from pathlib import Path

import pytest

from memseg.notebook import publish
from memseg.notebook.publish_html import LIVE_ONLY, Site, static_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = publish.notebook_names(ROOT)
SLIDE_TYPES = {"slide", "subslide", "fragment", "-", "skip", "notes"}
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:", "chrome:", "devtools:")
LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


def _cells(name: str) -> list[dict]:
    return json.loads((ROOT / "notebooks" / name).read_text())["cells"]


def _slide_type(cell: dict) -> str | None:
    return cell.get("metadata", {}).get("slideshow", {}).get("slide_type")


# ------------------------------------------------------------------------------ slide metadata


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_cell_has_a_slide_type(name: str):
    cells = _cells(name)
    missing = [i for i, c in enumerate(cells) if _slide_type(c) not in SLIDE_TYPES]
    assert not missing, f"{name}: cells {missing} have no metadata.slideshow.slide_type in {sorted(SLIDE_TYPES)}"
    assert _slide_type(cells[0]) == "slide", f"{name}: the title cell must open the deck (slide_type 'slide')"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_one_idea_per_slide_and_plumbing_off_the_slides(name: str):
    """Each section heading opens a slide; the parameters / setup cells and the final checks are not shown."""
    cells = _cells(name)
    for i, c in enumerate(cells):
        src = "".join(c["source"])
        if c["cell_type"] == "markdown" and src.startswith("## "):
            assert _slide_type(c) == "slide", f"{name} cell {i} ({src.splitlines()[0]!r}) should open a slide"
        if c["cell_type"] == "code" and ("parameters" in c["metadata"].get("tags", []) or "= setup(" in src):
            assert _slide_type(c) == "skip", f"{name} cell {i} is set-up plumbing: slide_type should be 'skip'"
    code = [c for c in cells if c["cell_type"] == "code"]
    if "assert " in "".join(code[-1]["source"]):
        assert _slide_type(code[-1]) == "skip", f"{name}: the final check cell should be 'skip' on the slides"
    shown = sum(_slide_type(c) in ("slide", "subslide") for c in cells)
    assert shown >= 4, f"{name}: only {shown} slides"


def test_static_pages_replace_widgets_and_hide_code_on_slides():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("panel"), nbformat.v4.new_code_cell("f()")])
    nb.cells[1].metadata["tags"] = ["exercise"]
    progress = {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_p"]}}
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {
        "bar": progress, "p": {"model_name": "FloatProgressModel", "state": {}},
        "ui": {"model_name": "VBoxModel", "state": {}}}}}
    view = "application/vnd.jupyter.widget-view+json"
    nb.cells[0].outputs = [nbformat.v4.new_output("display_data", {view: {"model_id": "bar"}, "text/plain": "x"}),
                           nbformat.v4.new_output("display_data", {view: {"model_id": "ui"}, "text/plain": "VBox()"})]
    slides = static_notebook(nb, slides=True)
    assert [o["data"]["text/plain"] for o in slides.cells[0].outputs] == [LIVE_ONLY]  # the bar is gone
    assert "widgets" not in slides.metadata
    assert slides.cells[0].metadata["transient"]["remove_source"] and "transient" not in slides.cells[1].metadata
    assert "transient" not in static_notebook(nb, slides=False).cells[0].metadata


def test_links_between_pages_are_rewritten_and_links_outside_the_site_become_text():
    site = Site(pages={"docs/cli.md": "docs/cli.html", "docs/results/a/README.md": "docs/results/a/README.html",
                       "notebooks/01_x.ipynb": "notebooks/01_x.html", "index": "index.html"},
                assets={"docs/results/a/fig.png"})
    body = ('<a href="../notebooks/01_x.ipynb#Step-1">n</a> <a href="results/a/">r</a> <a '
            'href="../README.md">readme</a> <a href="https://arxiv.org/abs/2205.00908">paper</a> <a '
            'href="#top">top</a> <img src="results/a/fig.png">')
    out = site.relink(body, "docs/cli.md")
    assert '<a href="../notebooks/01_x.html#Step-1">n</a>' in out
    assert '<a href="results/a/README.html">r</a>' in out
    assert '<span class="memseg-repo-file" title="README.md in the repository">readme</span>' in out
    assert ('href="https://arxiv.org/abs/2205.00908"' in out and 'href="#top"' in out
            and 'src="results/a/fig.png"' in out)
    script = '<script>var s = \'<a href="\' + url + \'">x</a>\';</script>'  # an output's JavaScript is left alone
    assert site.relink(script + body, "docs/cli.md").startswith(script)


def test_an_image_from_elsewhere_in_the_repository_is_copied_into_the_site(tmp_path):
    (tmp_path / "repo" / "assets").mkdir(parents=True)
    (tmp_path / "repo" / "assets" / "fig.png").write_bytes(b"png")
    site = Site(pages={"docs/method.md": "docs/method.html"}, root=tmp_path / "repo", out=tmp_path / "site")
    out = site.relink('<img src="../assets/fig.png"> <img src="../assets/gone.png">', "docs/method.md")
    assert out == '<img src="../assets/fig.png"> <img src="../assets/gone.png">'
    assert (tmp_path / "site" / "assets" / "fig.png").read_bytes() == b"png"
    assert not (tmp_path / "site" / "assets" / "gone.png").exists()


def test_a_notebook_without_an_executed_copy_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"01_anomaly_simulation.ipynb: no up-to-date executed copy in "
                                                r".*--no-execute"):
        publish.executed_notebooks(["01_anomaly_simulation.ipynb"], tmp_path, run_missing=False, root=ROOT)


def test_the_command_names_an_unknown_notebook(capsys):
    import runpy

    main = runpy.run_path(str(ROOT / "docs" / "publish.py"))["main"]  # a script, run by path as make does
    with pytest.raises(SystemExit) as exit_:
        main(["docs", "01_anomaly.ipynb"])
    assert exit_.value.code == 2
    assert "no such notebook under" in capsys.readouterr().err


def test_an_execution_of_other_sources_is_not_reused(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    name = NOTEBOOKS[0]
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    publish.save_executed(nb, tmp_path, name)
    assert publish.load_executed(name, tmp_path, root=ROOT) is not None
    nb.cells[-1].source += "\n# edited"
    publish.save_executed(nb, tmp_path, name)
    assert publish.load_executed(name, tmp_path, root=ROOT) is None


# ------------------------------------------------------------------------------ in the browser


@pytest.fixture(scope="module")
def vendor() -> Path:
    from test_browser import _need

    _need(shutil.which("npm") is not None, "npm not found: the decks bundle reveal.js and MathJax from the npm "
                                           "registry")
    return publish.ensure_vendor(ROOT / "build" / "vendor", log=print)


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> list:
    from notebook_runner import executed, quick_env

    return executed(NOTEBOOKS, quick_env(tmp_path_factory.mktemp("publish")))


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium that cannot reach the network, with its performance (network) log on."""
    from test_browser import CHROMEDRIVER, CHROMIUM, _need

    _need(Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(),
          f"{CHROMIUM} / {CHROMEDRIVER} not found: install Debian's chromium and chromium-driver (make browser-deps)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9", "--window-size=1600,1000",
                f"--user-data-dir={tmp_path / 'chrome-profile'}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _requests(driver) -> list[str]:
    """URLs of every request since the last call (Network.requestWillBeSent in the performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


def _assert_offline(urls: list[str]) -> None:
    assert urls, "the performance log recorded no request at all (is it on?)"
    remote = [u for u in urls if not u.startswith(LOCAL_SCHEMES)
              and urllib.parse.urlsplit(u).hostname not in {h.strip("[]") for h in LOOPBACK}]
    assert not remote, f"requests left the machine: {remote[:5]}"


def _wait(driver, script: str, timeout: float, what: str):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: d.execute_script(script))
    except TimeoutException:
        pytest.fail(f"timed out after {timeout} s waiting for {what}")


def _keep(shot: Path) -> None:
    out = os.environ.get("MEMSEG_SCREENSHOT_DIR")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(out) / shot.name)


_FIGURES = """return Array.from(document.querySelectorAll(arguments[0])).map(
    i => [i.naturalWidth, i.naturalHeight, i.getBoundingClientRect().width]);"""


@pytest.mark.browser
@pytest.mark.notebook
def test_slides_render_offline(executed, vendor, browser, tmp_path):
    decks = publish.build_slides(executed, tmp_path / "slides", vendor)
    assert [d.name for d in decks] == [f"{Path(n).stem}.slides.html" for n in NOTEBOOKS]
    deck = decks[0]
    browser.get(deck.as_uri())
    _wait(browser, "return window.Reveal && Reveal.isReady()", 60, "reveal.js to initialise")
    total = browser.execute_script("return Reveal.getTotalSlides()")
    assert total > 1, f"{deck.name}: {total} slide"
    # go to the slide with the largest figure: it is loaded, has a size and is on screen
    index = browser.execute_script("""
        const imgs = Array.from(document.querySelectorAll('.reveal .slides section .jp-OutputArea-output img'));
        if (!imgs.length) { return null; }
        const big = imgs.reduce((a, b) => a.naturalWidth * a.naturalHeight >= b.naturalWidth * b.naturalHeight ? a : b);
        const ix = Reveal.getIndices(big.closest('section')); Reveal.slide(ix.h, ix.v); return ix;""")
    assert index is not None, f"{deck.name}: no slide shows a figure"
    _wait(browser, "const i = Reveal.getCurrentSlide().querySelector('.jp-OutputArea-output img');"
                   "return i && i.complete && i.naturalWidth > 0 && i.getBoundingClientRect().width > 200", 30,
          "the figure on the current slide")
    _wait(browser, "return document.querySelector('mjx-container') !== null", 30, "MathJax to typeset the formulas")
    shot = tmp_path / "slide.png"
    browser.save_screenshot(str(shot))
    _keep(shot)
    _assert_offline(_requests(browser))
    for other in decks[1:]:  # every deck initialises, offline too
        browser.get(other.as_uri())
        _wait(browser, "return window.Reveal && Reveal.isReady() && Reveal.getTotalSlides() > 1", 60, f"{other.name}")
        _assert_offline(_requests(browser))


@pytest.mark.browser
@pytest.mark.notebook
def test_site_renders_offline_with_figures_and_working_links(executed, vendor, browser, tmp_path):
    index = publish.build_site(executed, tmp_path / "site", vendor, ROOT)
    site = index.parent
    browser.get(index.as_uri())
    shot = tmp_path / "site-index.png"
    browser.save_screenshot(str(shot))
    _keep(shot)
    pages = sorted(site.rglob("*.html"))
    with_figures = {f"{Path(n).stem}.html" for n, nb in executed
                    if any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
                           for c in nb.cells if c.cell_type == "code" for o in c.outputs)}
    assert len(with_figures) >= 5, f"expected figures in most notebooks, found them in {sorted(with_figures)}"
    broken = []
    for page in pages:
        browser.get(page.as_uri())
        _wait(browser, "return document.readyState === 'complete'", 30, f"{page.name} to load")
        for href in browser.execute_script("return Array.from(document.querySelectorAll('a[href]')).map(a => a.href)"):
            if href.startswith("file:"):
                target = Path(urllib.parse.unquote(urllib.parse.urlsplit(href).path))
                if not target.is_file():
                    broken.append(f"{page.relative_to(site)} -> {href}")
        if page.parent.name == "notebooks" and page.name in with_figures:
            figures = browser.execute_script(_FIGURES, ".jp-OutputArea-output img")
            assert figures and all(w > 0 and h > 0 and shown > 0 for w, h, shown in figures), \
                f"{page.name}: figures not shown: {figures}"
            if page.name.startswith("01_"):
                _wait(browser, "return document.querySelector('mjx-container') !== null", 30, "MathJax on the page")
                browser.execute_script("document.querySelectorAll('.jp-OutputArea-output img')[1].scrollIntoView()")
                shot = tmp_path / "site-notebook.png"
                browser.save_screenshot(str(shot))
                _keep(shot)
        _assert_offline(_requests(browser))
    assert not broken, f"{len(broken)} links point at no file: {broken[:5]}"
    # the index links every notebook page, and following a link opens it
    browser.get(index.as_uri())
    links = browser.execute_script("return Array.from(document.querySelectorAll('a[href]')).map(a => "
                                   "a.getAttribute('href'))")
    for name in NOTEBOOKS:
        assert f"notebooks/{Path(name).stem}.html" in links, f"the index does not link {name}"
    browser.find_element("css selector", f'a[href="notebooks/{Path(NOTEBOOKS[1]).stem}.html"]').click()
    _wait(browser, f"return location.href.endsWith('{Path(NOTEBOOKS[1]).stem}.html') && document.readyState === "
                   "'complete'",
          30, "the second notebook's page")
    assert browser.find_elements("css selector", "nav.memseg-nav a")
