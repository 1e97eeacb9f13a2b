"""Publish the teaching notebooks: reveal.js slide decks (``make slides``) and a static site of the executed
notebooks and the ``docs/`` pages (``make docs``). Both work offline: no page loads anything from the network.

* **Executions are reused.** An executed copy of ``notebooks/<name>`` (written by :func:`save_executed`: by this
  module, or by the notebook tests into their folder) is used when its cell sources are those of the committed
  notebook (and, for ``make``, it is newer than the package code); otherwise the notebook is executed again
  (nbclient, cwd ``notebooks/``, the notebooks' own ``MEMSEG_*`` settings). The committed notebook supplies the
  metadata (slide types), the executed copy only the outputs.
* **Slides**: nbconvert's reveal.js exporter with the cells' ``slideshow.slide_type``; code is hidden except in
  the cells tagged ``exercise`` (07: the function a student writes). The figures keep the projector style that
  ``setup()`` applies (large fonts); the deck's CSS fits a figure to the slide.
* **Site**: nbconvert's HTML exporter for each notebook (code, outputs, figures) and for every ``docs/**/*.md``
  page, one index, a navigation bar; links between pages are rewritten to the ``.html`` pages, links to files
  outside the site become plain text naming the file.
* **Offline**: reveal.js and MathJax come from the npm registry at build time (pinned in :data:`VENDOR`, cached
  under ``build/vendor``) and are copied beside the pages; the nbconvert templates are trimmed of their CDN
  scripts (require.js, jQuery, mermaid, the widget manager). Interactive widgets need a live kernel: the pages
  show a line saying so; progress bars are dropped.

Command line (``make slides``, ``make docs``): ``python docs/publish.py {slides,docs} [--out DIR] [--executed DIR]
[--no-execute]`` (a script: the package parses flags only in memseg/apps, which may not import memseg.notebook).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from memseg.paths import project_root

from . import publish_html

__all__ = ["VENDOR", "notebook_names", "source_digest", "save_executed", "load_executed", "execute",
           "executed_notebooks", "ensure_vendor", "build_slides", "build_site"]

# npm packages copied beside the pages: exact versions, so a rebuild fetches the same files.
VENDOR = {"reveal.js": "6.0.2", "mathjax": "3.2.2"}
VENDOR_FILES = {
    "reveal.js": ("dist/reveal.js", "dist/reveal.css", "dist/theme/white.css", "dist/plugin/notes.js", "LICENSE"),
    "mathjax": ("es5/tex-svg-full.js", "LICENSE"),
}
MARK = "memseg_publish"  # notebook metadata key of an executed copy: {"source_digest": ...}


def notebook_names(root: Path | None = None) -> list[str]:
    """The teaching notebooks (``notebooks/0*.ipynb``), in order."""
    return sorted(p.name for p in ((root or project_root()) / "notebooks").glob("0*.ipynb"))


def _read(path: Path):
    import nbformat

    return nbformat.read(path, as_version=4)


def source_digest(nb) -> str:
    """SHA-256 of the cells' types and sources (not metadata or outputs): which notebook an execution ran."""
    cells = [[c["cell_type"], "".join(c["source"]) if isinstance(c["source"], list) else c["source"]]
             for c in nb["cells"]]
    return hashlib.sha256(json.dumps(cells).encode()).hexdigest()


def save_executed(nb, folder: Path, name: str) -> Path:
    """Write an executed notebook to ``folder/name`` (atomically), marked with its source digest for reuse."""
    import nbformat

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    nb = copy.deepcopy(nb)
    nb.metadata[MARK] = {"source_digest": source_digest(nb), "executed_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".ipynb.tmp")
    os.close(fd)
    nbformat.write(nb, tmp)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide it from other users of the folder
    os.replace(tmp, folder / name)
    return folder / name


def load_executed(name: str, folder: Path, *, newer_than: float | None = None, root: Path | None = None):
    """The committed ``notebooks/name`` with the outputs of its executed copy in ``folder``, or None when there
    is none, it ran other cell sources, failed, or is older than ``newer_than`` (a POSIX time)."""
    path = Path(folder) / name
    if not path.is_file() or (newer_than is not None and path.stat().st_mtime < newer_than):
        return None
    committed = _read((root or project_root()) / "notebooks" / name)
    done = _read(path)
    if done.metadata.get(MARK, {}).get("source_digest") != source_digest(committed):
        return None
    for cell, ran in zip(committed.cells, done.cells):
        if cell.cell_type == "code":
            if any(o.get("output_type") == "error" for o in ran.get("outputs", [])):
                return None
            cell.outputs, cell.execution_count = ran.get("outputs", []), ran.get("execution_count")
    if "widgets" in done.metadata:
        committed.metadata["widgets"] = done.metadata["widgets"]
    return committed


def execute(name: str, env: dict | None = None, root: Path | None = None, timeout: int = 1800):
    """Run ``notebooks/name`` top to bottom (cwd ``notebooks/``) and return it; raise on the first error."""
    import nbclient

    nbdir = (root or project_root()) / "notebooks"
    nb = _read(nbdir / name)
    env = {"MPLBACKEND": "module://matplotlib_inline.backend_inline", **(env if env is not None else os.environ)}
    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                     resources={"metadata": {"path": str(nbdir)}})
    client.execute(env=env)
    return nb


def package_mtime(root: Path | None = None) -> float:
    """Newest modification time of the ``memseg`` package's Python files (an execution before it is stale)."""
    return max(p.stat().st_mtime for p in ((root or project_root()) / "memseg").rglob("*.py"))


def executed_notebooks(names, folder: Path, *, run_missing: bool = True, newer_than: float | None = None,
                       log=print, root: Path | None = None) -> list[tuple[str, object]]:
    """``[(name, executed notebook)]``: reused from ``folder`` where fresh, else executed (and saved there)."""
    out = []
    for name in names:
        nb = load_executed(name, folder, newer_than=newer_than, root=root)
        if nb is None:
            if not run_missing:
                raise FileNotFoundError(f"{name}: no up-to-date executed copy in {folder}; "
                                        "run without --no-execute to execute it")
            log(f"executing {name} ...")
            t0 = time.perf_counter()
            save_executed(execute(name, root=root), folder, name)
            log(f"  {name}: {time.perf_counter() - t0:.0f} s")
            nb = load_executed(name, folder, root=root)
        out.append((name, nb))
    return out


def ensure_vendor(cache: Path, log=print) -> Path:
    """``cache/node_modules`` with the :data:`VENDOR` packages, installed with npm on first use."""
    cache = Path(cache)
    modules = cache / "node_modules"
    want = {f"{pkg}/{f}" for pkg, files in VENDOR_FILES.items() for f in files}

    def ready() -> bool:
        if not all((modules / f).is_file() for f in want):
            return False
        versions = {p: json.loads((modules / p / "package.json").read_text()).get("version") for p in VENDOR}
        return versions == VENDOR

    if ready():
        return modules
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm not found: the slides and the site bundle reveal.js and MathJax from the npm "
                           "registry; install Node.js and npm (Debian: apt-get install npm)")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix="install-"))
    specs = [f"{p}@{v}" for p, v in VENDOR.items()]
    log(f"fetching {' '.join(specs)} with npm into {cache}")
    proc = subprocess.run([npm, "install", "--no-save", "--no-package-lock", "--no-audit", "--no-fund",
                           "--ignore-scripts", "--prefix", str(tmp), *specs], capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"npm install {' '.join(specs)} failed: {proc.stderr.strip()[-800:]}")
    shutil.rmtree(modules, ignore_errors=True)
    os.replace(tmp / "node_modules", modules)
    shutil.rmtree(tmp, ignore_errors=True)
    if not ready():
        raise RuntimeError(f"npm installed {specs} but {sorted(f for f in want if not (modules / f).is_file())} are "
                           "missing")
    return modules


def copy_vendor(modules: Path, out: Path) -> None:
    """Copy the files the pages load into ``out/_static``."""
    for pkg, files in VENDOR_FILES.items():
        for f in files:
            dest = out / publish_html.STATIC / pkg / f
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(modules / pkg / f, dest)


def _fresh_dir(out: Path) -> Path:
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out


def build_slides(notebooks, out: Path, modules: Path) -> list[Path]:
    """One reveal.js deck per executed notebook in ``out`` (``<name>.slides.html``), an index, the bundle."""
    out = _fresh_dir(out)
    copy_vendor(modules, out)
    decks = []
    for name, nb in notebooks:
        path = out / f"{Path(name).stem}.slides.html"
        path.write_text(publish_html.slides_html(nb, Path(name).stem), encoding="utf-8")
        decks.append(path)
    (out / "index.html").write_text(publish_html.slides_index(notebooks), encoding="utf-8")
    return decks


def build_site(notebooks, out: Path, modules: Path, root: Path | None = None) -> Path:
    """The site in ``out``: ``index.html``, ``notebooks/<name>.html``, ``docs/**.html`` and docs' other files."""
    root = root or project_root()
    out = _fresh_dir(out)
    copy_vendor(modules, out)
    docs = sorted(p.relative_to(root).as_posix() for p in (root / "docs").rglob("*.md"))
    pages = {f"notebooks/{n}": f"notebooks/{Path(n).stem}.html" for n, _ in notebooks}
    pages.update({d: d[:-3] + ".html" for d in docs})
    pages["index"] = "index.html"
    assets = set()
    for p in (root / "docs").rglob("*"):
        if p.is_file() and p.suffix not in (".md", ".py") and "__pycache__" not in p.parts:
            rel = p.relative_to(root).as_posix()
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, out / rel)
            assets.add(rel)
    order = [f"notebooks/{n}" for n, _ in notebooks]
    site = publish_html.Site(pages=pages, assets=assets, order=order, root=root, out=out)
    for name, nb in notebooks:
        src = f"notebooks/{name}"
        (out / pages[src]).parent.mkdir(parents=True, exist_ok=True)
        (out / pages[src]).write_text(site.notebook_page(nb, src), encoding="utf-8")
    for d in docs:
        (out / pages[d]).parent.mkdir(parents=True, exist_ok=True)
        (out / pages[d]).write_text(site.markdown_page((root / d).read_text(encoding="utf-8"), d), encoding="utf-8")
    (out / "index.html").write_text(site.index_page(notebooks, docs, root), encoding="utf-8")
    return out / "index.html"
