"""Uploaded files: size limits (bytes, pixels, sides the model can score) checked before decoding, then a bounded
decode to RGB (or one clear error naming the file)."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["MAX_UPLOAD_BYTES", "MAX_UPLOAD_PIXELS", "UPLOAD_SUFFIXES", "UploadError", "decode_upload"]

MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # 20 MiB
MAX_UPLOAD_PIXELS = 50_000_000  # 50 Mpx
UPLOAD_SUFFIXES = (".png", ".jpg", ".jpeg")


class UploadError(ValueError):
    """An uploaded file was rejected; the message names the file and what was expected."""


def decode_upload(
    name: str,
    data: bytes | memoryview,
    max_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int = MAX_UPLOAD_PIXELS,
) -> np.ndarray:
    """Decode an uploaded PNG/JPEG to ``uint8 (H, W, 3)`` RGB, checking size limits before decoding.

    Grey, palette, alpha and 16-bit images are converted like :func:`memseg.data.io.load_image`.
    Images above :data:`memseg.data.io.DECODE_MAX_PIXELS` (4 Mpx) are decoded downscaled (JPEG draft
    mode, then a resize; same aspect ratio), as ``memseg predict`` does: the page shows them at a
    bounded display size anyway, and a 50 Mpx upload then costs tens of MB, not gigabytes.

    Raises:
        UploadError: empty, too large (bytes or pixels), not a PNG/JPEG, a size the model cannot score
            (:func:`memseg.engine.inference.check_image_size`: a side under 16 px, an aspect ratio over 10),
            truncated or corrupt data, or an image mode that cannot be shown as RGB.

    Examples:
        >>> decode_upload("empty.png", b"")
        Traceback (most recent call last):
        ...
        memseg.apps.dashboard.upload.UploadError: empty.png: the file is empty (0 bytes); expected a PNG or JPEG image
    """
    from memseg.data.io import (
        DECODE_MAX_PIXELS,
        ImageLoadError,
        decode_bounded,
        pil_to_rgb_array,
    )
    from memseg.engine.inference import check_image_size

    expected = "a PNG or JPEG image"
    size = len(data)
    if size == 0:
        raise UploadError(f"{name}: the file is empty (0 bytes); expected {expected}")
    if size > max_bytes:
        raise UploadError(f"{name}: {size / 2**20:.1f} MB is larger than the {max_bytes / 2**20:.0f} MB limit; "
                          f"expected {expected}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(bytes(data)))
            w, h = img.size  # header only, nothing decoded yet
            if w * h > max_pixels:
                raise UploadError(
                    f"{name}: {w}x{h} = {w * h / 1e6:.0f} Mpx is larger than the {max_pixels / 1e6:.0f} Mpx limit; "
                    f"expected {expected}"
                )
            if img.format not in ("PNG", "JPEG", "MPO"):
                raise UploadError(f"{name}: a {img.format} file; expected {expected}")
            try:  # a size the model cannot score (8x8, 1000x16) is refused here, not at the first model run
                check_image_size(h, w, name)
            except ValueError as err:
                raise UploadError(str(err)) from None
            img = decode_bounded(img, DECODE_MAX_PIXELS)  # full (downscaled) decode: truncated data fails here
    except UploadError:
        raise
    except UnidentifiedImageError as err:
        raise UploadError(f"{name}: not an image (Pillow cannot identify it); expected {expected}") from err
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise UploadError(f"{name}: image too large to decode safely ({err}); expected {expected}") from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise UploadError(f"{name}: truncated or corrupt image data ({err}); expected {expected}") from err
    try:
        return pil_to_rgb_array(img, name)
    except ImageLoadError as err:
        raise UploadError(str(err)) from err
    finally:
        img.close()

