"""Build the slide decks (`make slides`) or the site of executed notebooks (`make docs`).

    python docs/publish.py slides [--out build/slides] [--executed build/executed] [--no-execute] [NOTEBOOK ...]
    python docs/publish.py docs   [--out build/site]   [--executed build/executed] [--no-execute] [NOTEBOOK ...]

Each notebook is executed once into --executed and reused from there until it or the memseg package changes;
reveal.js and MathJax come from the npm registry (cached in --vendor). The work is done by
memseg.notebook.publish; this script only reads the flags.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from memseg.notebook.publish import (
    build_site,
    build_slides,
    ensure_vendor,
    executed_notebooks,
    notebook_names,
    package_mtime,
)
from memseg.paths import project_root


def main(argv: list[str] | None = None) -> int:
    root = project_root()
    parser = argparse.ArgumentParser(prog="python docs/publish.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("slides", "docs"), help="slides: reveal.js decks; docs: the static site")
    parser.add_argument("notebooks", nargs="*", help="notebook file names (default: every notebooks/0*.ipynb)")
    parser.add_argument("--out", type=Path, help="output folder (default build/slides or build/site)")
    parser.add_argument("--executed", type=Path, default=root / "build" / "executed",
                        help="folder of executed notebooks to reuse and to save new executions in (default "
                             "build/executed)")
    parser.add_argument("--no-execute", action="store_true",
                        help="fail instead of executing a notebook without a fresh copy")
    parser.add_argument("--vendor", type=Path, default=root / "build" / "vendor",
                        help="npm cache of reveal.js and MathJax")
    args = parser.parse_args(argv)
    names = args.notebooks or notebook_names(root)
    unknown = [n for n in names if not (root / "notebooks" / n).is_file()]
    if unknown:
        parser.error(f"no such notebook under {root / 'notebooks'}: {', '.join(unknown)} (expected e.g. "
                     f"{notebook_names(root)[0]})")
    try:
        modules = ensure_vendor(args.vendor)
        nbs = executed_notebooks(names, args.executed, run_missing=not args.no_execute, newer_than=package_mtime(root))
    except (RuntimeError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.what == "slides":
        out = args.out or root / "build" / "slides"
        decks = build_slides(nbs, out, modules)
        print(f"{len(decks)} slide decks in {out} (open {out / 'index.html'}; press S for the speaker notes)")
    else:
        out = args.out or root / "build" / "site"
        index = build_site(nbs, out, modules, root)
        print(f"site of {len(nbs)} notebooks and the docs/ pages in {out} (open {index})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
