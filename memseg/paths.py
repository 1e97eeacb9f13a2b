"""Where things are: the project folder and the DTD textures, each resolved in one place.

Every entry point (CLI, demo, notebooks, training API) asks here, so a run finds the same files
whatever the current directory is, and can say where they came from.

Examples:
    >>> from memseg.paths import locate_dtd
    >>> loc = locate_dtd()          # --dtd > $MEMSEG_DTD > <project>/data/dtd > <project>/../shared/data/dtd
    >>> print(loc.describe())       # e.g. "textures: DTD at /data/dtd (project default)"
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ENV_DTD", "ENV_ROOT", "DTDLocation", "project_root", "locate_dtd", "dtd_root"]

ENV_ROOT = "MEMSEG_ROOT"
ENV_DTD = "MEMSEG_DTD"


def project_root() -> Path:
    """The project folder (holding `configs/`, `notebooks/`, `runs/`).

    Env `MEMSEG_ROOT` wins; else the checkout this package lives in (editable install); else the
    current directory.
    """
    env = os.environ.get(ENV_ROOT)
    if env:
        return Path(env).expanduser().resolve()
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").is_file() and (here / "memseg").is_dir():
        return here
    return Path.cwd().resolve()


_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _has_images(root: Path) -> bool:
    """A DTD root: ``images/`` inside, or texture files one or two levels down (cheap check, no decoding)."""
    if (root / "images").is_dir():
        return True
    if not root.is_dir():
        return False
    return any(q.suffix.lower() in _IMAGE_SUFFIXES for pattern in ("*", "*/*") for q in root.glob(pattern))


@dataclass(frozen=True)
class DTDLocation:
    """The DTD root a run uses (``path``, None when there is none) and where that choice came from."""

    path: Path | None
    source: str  # "--dtd", "MEMSEG_DTD", "project default" or "none found"
    searched: tuple[Path, ...] = field(default=())  # the default places looked at

    def describe(self) -> str:
        """One line for logs: which textures a run uses, or why it has none and how to give some."""
        if self.path is not None:
            return f"textures: DTD at {self.path} ({self.source})"
        looked = ", ".join(str(p) for p in self.searched) or "nowhere"
        return (f"textures: no DTD found (looked in {looked}); texture anomalies are off, structural ones only "
                f"- pass --dtd DIR or set {ENV_DTD} (DTD root holding images/<category>/*.jpg)")


def locate_dtd(explicit: str | os.PathLike | None = None, root: str | os.PathLike | None = None,
               flag: str = "--dtd") -> DTDLocation:
    """Resolve the DTD root once: ``explicit`` (the flag) > ``$MEMSEG_DTD`` > ``<project>/data/dtd`` >
    ``<project>/../shared/data/dtd``.

    An explicit or environment value must be a folder holding ``images/`` (a typo there should stop
    the run, not quietly switch textures off); the project defaults are used only when present.

    Args:
        explicit: the value of ``flag`` (``--dtd``), or None.
        root: project folder for the defaults (default :func:`project_root`).
        flag: how the explicit value is named in messages.

    Raises:
        FileNotFoundError: the flag or env names a folder without ``images/``.
    """
    for value, source in ((explicit, flag), (os.environ.get(ENV_DTD), ENV_DTD)):
        if value is None or str(value).strip() == "":
            continue
        path = Path(value).expanduser()
        if not _has_images(path):
            raise FileNotFoundError(
                f"{source} {path}: not a DTD root (expected a folder holding images/<category>/*.jpg, "
                "or texture images)")
        return DTDLocation(path.resolve(), source)
    base = Path(root) if root is not None else project_root()
    searched = (base / "data" / "dtd", base.parent / "shared" / "data" / "dtd")
    for candidate in searched:
        if _has_images(candidate):
            return DTDLocation(candidate.resolve(), "project default", searched)
    return DTDLocation(None, "none found", searched)


def dtd_root(explicit: str | os.PathLike | None = None, root: str | os.PathLike | None = None) -> Path | None:
    """:func:`locate_dtd`'s path only (None when no textures are available)."""
    return locate_dtd(explicit, root).path
