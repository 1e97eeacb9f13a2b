"""The HTML side of :mod:`memseg.notebook.publish`: nbconvert templates without CDN scripts, widget outputs,
the pages of the site and the links between them."""

from __future__ import annotations

import copy
import html
import posixpath
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

STATIC = "_static"
WIDGET = "application/vnd.jupyter.widget-view+json"
LIVE_ONLY = ("Interactive panel: it needs a live kernel. Open the notebook in JupyterLab "
             "(<code>make lab</code>) or the dashboard (<code>make demo</code>) to use it.")

# MathJax 3 (SVG output: no font files to load) configured for notebook markdown: $...$, $$...$$, \(...\), \[...\].
_MATHJAX = """{%- block html_head_js_mathjax -%}
<script>window.MathJax = {tex: {inlineMath: [['$', '$'], ['\\\\(', '\\\\)']],
  displayMath: [['$$', '$$'], ['\\\\[', '\\\\]']],
  processEscapes: true, processEnvironments: true, tags: 'ams'}, svg: {fontCache: 'global'}};</script>
<script src="{{ resources.static }}/mathjax/es5/tex-svg-full.js"></script>
{%- endblock html_head_js_mathjax -%}"""
# nbconvert's templates load require.js, jQuery, mermaid and the widget manager from CDNs: none is needed here
# (figures are PNG, the t-SNE plot carries plotly.js inline, widgets are replaced by a line).
_NO_CDN = """{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
""" + _MATHJAX

SLIDES_TEMPLATE = "{%- extends 'index.html.j2' -%}\n" + _NO_CDN + """
{%- block html_head_css -%}
<style>
:root { --jp-content-font-size1: 24px; --jp-ui-font-size1: 22px; --jp-code-font-size: 20px; }
.reveal .slides { text-align: left; }
.reveal .jp-RenderedImage img, .reveal .jp-OutputArea-output img { max-width: 100%; max-height: 660px; width: auto;
  display: block; margin: 0 auto; }
.reveal .jp-RenderedHTMLCommon table { font-size: 22px; }
.reveal section.memseg-tall { overflow-y: auto; }
.reveal .memseg-live-only { font-style: italic; color: #555; }
</style>
{%- endblock html_head_css -%}
{% block footer_js %}
<script src="{{ resources.static }}/reveal.js/dist/reveal.js"></script>
<script src="{{ resources.static }}/reveal.js/dist/plugin/notes.js"></script>
<script>
(function () {
  var W = 1280, H = 760;
  Reveal.initialize({controls: true, progress: true, hash: true, slideNumber: 'c/t', transition: 'none',
                     width: W, height: H, margin: 0.04, center: false, plugins: [RevealNotes]});
  // A slide taller than the screen scrolls instead of being cut (one cell is one slide: long text stays whole).
  function fit() {
    document.querySelectorAll('.reveal .slides section').forEach(function (s) {
      if (s.querySelector('section')) { return; }
      s.classList.toggle('memseg-tall', s.scrollHeight > H);
      if (s.scrollHeight > H) { s.style.height = H + 'px'; }
    });
  }
  Reveal.on('ready', fit);
  Reveal.on('slidechanged', fit);
})();
</script>
{% endblock footer_js %}
"""

SITE_TEMPLATE = "{%- extends 'index.html.j2' -%}\n" + _NO_CDN + """
{%- block html_head_css -%}
<style>
body { max-width: 1180px; margin: 0 auto; padding: 0 16px 48px; }
nav.memseg-nav { display: flex; gap: 1.5em; padding: 12px 0; margin-bottom: 8px; border-bottom: 1px solid #ddd;
                 font-family: var(--jp-ui-font-family); font-size: 15px; }
nav.memseg-nav a { text-decoration: none; }
.memseg-live-only { font-style: italic; color: #555; }
span.memseg-repo-file { border-bottom: 1px dotted #888; }
.jp-RenderedImage img { max-width: 100%; height: auto; }
</style>
{%- endblock html_head_css -%}
{%- block body_header -%}
{{ super() }}
{{ resources.nav }}
{%- endblock body_header -%}
{% block body_footer %}
{{ resources.nav }}
{{ super() }}
{% endblock body_footer %}
"""


def _widget_models(nb) -> dict:
    return nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})


def _is_progress(models: dict, model_id: str, text: str) -> bool:
    """A tqdm progress bar (an HBox holding a progress model)?"""
    seen, todo = set(), [model_id]
    while todo:
        mid = todo.pop()
        if mid in seen or mid not in models:
            continue
        seen.add(mid)
        model = models[mid]
        if model.get("model_name", "").endswith("ProgressModel"):
            return True
        children = model.get("state", {}).get("children", [])
        todo.extend(c.removeprefix("IPY_MODEL_") for c in children if isinstance(c, str))
    return not models and "%|" in text  # no stored state: tqdm's text form


def static_notebook(nb, *, slides: bool):
    """A copy of ``nb`` for a static page: widget outputs become a line saying they need a kernel (progress
    bars vanish), no widget state; for slides, code is hidden except in the cells tagged ``exercise``, and so
    is stderr (warnings and logs)."""
    nb = copy.deepcopy(nb)
    models = _widget_models(nb)
    nb.metadata.pop("widgets", None)
    note = {"output_type": "display_data", "metadata": {},
            "data": {"text/html": f'<p class="memseg-live-only">{LIVE_ONLY}</p>', "text/plain": LIVE_ONLY}}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outputs = []
        for o in cell.get("outputs", []):
            data = o.get("data", {})
            if WIDGET in data:
                text = "".join(data.get("text/plain", ""))
                if not _is_progress(models, data[WIDGET].get("model_id", ""), text):
                    outputs.append(copy.deepcopy(note))
                continue
            if not (slides and o.get("output_type") == "stream" and o.get("name") == "stderr"):  # warnings, logs
                outputs.append(o)
        cell.outputs = outputs
        if slides and "exercise" not in cell.metadata.get("tags", []):
            cell.metadata.setdefault("transient", {})["remove_source"] = True
    return nb


def _exporter(kind: str):
    from nbconvert import HTMLExporter, SlidesExporter

    if kind == "slides":
        exporter = SlidesExporter(template_name="reveal", raw_template=SLIDES_TEMPLATE, reveal_theme="white",
                                  reveal_url_prefix=f"{STATIC}/reveal.js", reveal_transition="none")
        exporter.exclude_input_prompt = exporter.exclude_output_prompt = True
    else:
        exporter = HTMLExporter(template_name="lab", raw_template=SITE_TEMPLATE)
    return exporter


def notebook_title(nb, default: str) -> str:
    """The first markdown heading of ``nb`` (without the #s), else ``default``."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return default


def slides_html(nb, stem: str) -> str:
    """One reveal.js deck (the bundle under ``_static`` beside it)."""
    body, _ = _exporter("slides").from_notebook_node(
        static_notebook(nb, slides=True),
        resources={"metadata": {"name": notebook_title(nb, stem)}, "static": STATIC})
    return body


def slides_index(notebooks) -> str:
    items = "\n".join(f'<li><a href="{html.escape(Path(n).stem)}.slides.html">'
                      f'{html.escape(notebook_title(nb, n))}</a></li>'
                      for n, nb in notebooks)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>MemSeg slides</title></head>"
            f"<body style='font: 20px sans-serif; max-width: 900px; margin: 40px auto'><h1>MemSeg: slide decks</h1>"
            f"<p>Arrow keys or space to move, <b>S</b> for the speaker notes, <b>F</b> for full screen, "
            f"<b>Esc</b> for the overview.</p><ul>{items}</ul></body></html>")


_ANCHOR = re.compile(r'<a\s([^>]*?)href="([^"]*)"([^>]*)>(.*?)</a>', re.S)
_SRC = re.compile(r'(<img\s[^>]*?src=")([^"]*)(")')
_NAV = "<!-- memseg-nav -->"
_SCRIPT = re.compile(r"(<script\b.*?</script>)", re.S | re.I)
_EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, data:


@dataclass
class Site:
    """Pages (repository path -> site path) and copied files; renders pages with links between them."""

    pages: dict[str, str]
    assets: set[str] = field(default_factory=set)
    order: list[str] = field(default_factory=list)  # the notebooks, for previous / next
    root: Path | None = None  # the repository and the site's folder: images from elsewhere are copied in
    out: Path | None = None

    def _target(self, src: str, href: str) -> str | None:
        """The site path a relative ``href`` in the page of ``src`` points at, or None outside the site."""
        path = posixpath.normpath(posixpath.join(posixpath.dirname(src), href.split("#")[0]))
        for cand in (path, posixpath.join(path, "README.md")):
            if cand in self.pages:
                return self.pages[cand]
            if cand in self.assets:
                return cand
        return None

    def _copy_image(self, src: str, href: str) -> str | None:
        """An image of the repository outside docs/ (e.g. ../assets/x.png): copied into the site, same path."""
        path = posixpath.normpath(posixpath.join(posixpath.dirname(src), href))
        if self.root is None or self.out is None or path.startswith("..") or not (self.root / path).is_file():
            return None
        (self.out / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.root / path, self.out / path)
        self.assets.add(path)
        return path

    def _rel(self, src: str, site_path: str) -> str:
        return posixpath.relpath(site_path, posixpath.dirname(self.pages[src]))

    def relink(self, body: str, src: str) -> str:
        """Links to pages and files of the site point at them; links elsewhere in the repository become text."""
        def anchor(m: re.Match) -> str:
            before, href, after, text = m.groups()
            href = html.unescape(href)
            if not href or href.startswith("#") or _EXTERNAL.match(href):
                return m.group(0)
            target = self._target(src, href)
            if target is None:
                path = posixpath.normpath(posixpath.join(posixpath.dirname(src), href.split("#")[0]))
                return f'<span class="memseg-repo-file" title="{html.escape(path)} in the repository">{text}</span>'
            frag = "#" + href.split("#", 1)[1] if "#" in href else ""
            return f'<a {before}href="{html.escape(self._rel(src, target) + frag)}"{after}>{text}</a>'

        def image(m: re.Match) -> str:
            href = html.unescape(m.group(2))
            if _EXTERNAL.match(href):
                return m.group(0)
            target = self._target(src, href) or self._copy_image(src, href)
            return m.group(1) + html.escape(self._rel(src, target) if target else href) + m.group(3)

        # outside <script> only: an output's inline JavaScript (plotly.js) may hold "<a href=" strings
        parts = _SCRIPT.split(body)
        return "".join(p if i % 2 else _SRC.sub(image, _ANCHOR.sub(anchor, p)) for i, p in enumerate(parts))

    def nav(self, src: str) -> str:
        links = [f'<a href="{self._rel(src, "index.html")}">MemSeg kit: contents</a>']
        if src in self.order:
            i = self.order.index(src)
            if i > 0:
                links.append(f'<a href="{self._rel(src, self.pages[self.order[i - 1]])}">&larr; previous notebook</a>')
            if i + 1 < len(self.order):
                links.append(f'<a href="{self._rel(src, self.pages[self.order[i + 1]])}">next notebook &rarr;</a>')
        return '<nav class="memseg-nav">' + "".join(links) + "</nav>"

    def _render(self, nb, src: str, title: str) -> str:
        static = self._rel(src, STATIC)
        body, _ = _exporter("site").from_notebook_node(
            nb, resources={"metadata": {"name": title}, "static": static, "nav": _NAV})
        return self.relink(body, src).replace(_NAV, self.nav(src))  # the bar's links are site paths already

    def notebook_page(self, nb, src: str) -> str:
        return self._render(static_notebook(nb, slides=False), src, notebook_title(nb, Path(src).stem))

    def markdown_page(self, text: str, src: str) -> str:
        import nbformat

        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(text)])
        return self._render(nb, src, notebook_title(nb, src))

    def index_page(self, notebooks, docs: list[str], root: Path) -> str:
        def first_words(nb) -> str:
            cell = next((c for c in nb.cells if c.cell_type == "markdown"), None)
            paras = [p for p in (cell.source.split("\n\n") if cell else []) if not p.startswith("#")]
            words = " ".join(paras[0].split()) if paras else ""
            first = re.match(r"(.+?[.?!])(?=\s+[A-Z]|$)", words)  # "Fig. 6" and "§4.2)." do not end it
            return first.group(1) if first else words

        lines = ["# MemSeg kit: the teaching notebooks, executed", "",
                 "The notebooks of [MemSeg](https://arxiv.org/abs/2205.00908) (Yang et al.) with their outputs, as "
                 "`make docs` executed them: in QUICK mode unless told otherwise (small images, a few hundred "
                 "training steps on a CPU), so the numbers stay below the paper's. To run them yourself: `make lab`; "
                 "to present them: `make slides`.", "",
                 "## Notebooks", ""]
        for name, nb in notebooks:
            lines.append(f"* [{notebook_title(nb, name)}](notebooks/{name}) — {first_words(nb)}")
        results = {}  # one page per docs/results/<run>/: its README.md, else its first page
        for d in docs:
            if d.startswith("docs/results/") and d.count("/") == 3:
                run = posixpath.dirname(d)
                if run not in results or d.endswith("/README.md"):
                    results[run] = d
        groups = {"Reference": [d for d in docs if d.count("/") == 1], "Results": sorted(results.values())}
        for heading, items in groups.items():
            if items:
                lines += ["", f"## {heading}", ""]
                for d in items:
                    title = notebook_title(_md_nb((root / d).read_text(encoding="utf-8")), d)
                    lines.append(f"* [{title}]({d})")
        return self.markdown_page("\n".join(lines) + "\n", "index")


def _md_nb(text: str):
    import nbformat

    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(text)])
