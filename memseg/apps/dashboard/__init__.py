"""The Voila dashboard of ``[demo] model inference.ipynb``.

    state.py      what the page holds and decides: the model, the current image, the result, the colour scale
    upload.py     uploaded files: size limits, then a bounded decode to RGB
    rendering.py  a result as PNG panels and HTML texts (heat map, overlay, masks, legend)
    widgets.py    the ipywidgets layout and its wiring to the app
    app.py        DashboardApp: the actions that connect them; build_app
"""

from memseg.apps.dashboard.app import DashboardApp, build_app
from memseg.apps.dashboard.state import (
    SCALE_CHECK_IMAGES,
    DashboardState,
    ImageSource,
    Result,
    ScoreScale,
    SimulationParams,
    score_scale,
)
from memseg.apps.dashboard.upload import (
    MAX_UPLOAD_BYTES,
    MAX_UPLOAD_PIXELS,
    UPLOAD_SUFFIXES,
    UploadError,
    decode_upload,
)

__all__ = [
    "MAX_UPLOAD_BYTES",
    "MAX_UPLOAD_PIXELS",
    "SCALE_CHECK_IMAGES",
    "UPLOAD_SUFFIXES",
    "DashboardApp",
    "DashboardState",
    "ImageSource",
    "Result",
    "ScoreScale",
    "SimulationParams",
    "UploadError",
    "build_app",
    "decode_upload",
    "score_scale",
]
