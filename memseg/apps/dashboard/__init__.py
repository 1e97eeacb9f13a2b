"""The Voila dashboard of ``[demo] model inference.ipynb``."""

from memseg.apps.dashboard.app import DashboardApp, build_app

__all__ = ["DashboardApp", "build_app"]
