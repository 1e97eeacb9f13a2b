"""Image and mask IO: decode any common image file to uint8 RGB, masks to bool, arrays to tensors.

Conversion rules of :func:`load_image` (documented because they change pixel values):

- ``RGB`` is returned as is; ``1``/``L`` (grey) are replicated to three channels.
- Alpha (``LA``, ``RGBA``, ``RGBa``, ``PA`` and palette images with a transparency entry) is
  **composited on black**: ``rgb * alpha / 255``. Fully transparent pixels become black, so the
  arbitrary colour a tool left under transparency never reaches the model.
- ``P`` (palette) is expanded through its palette.
- 16-bit / 32-bit integer grey (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``, ``I``) is scaled to 8 bit
  by the *actual bit range*: the smallest bit depth ``b >= 8`` holding the image's maximum value,
  ``v8 = round(v * 255 / (2**b - 1))``. A 12-bit sensor image (max <= 4095) therefore keeps its
  brightness instead of looking black in a 16-bit range. Negative ``I`` values (rare) fall back to
  a min-max stretch.
- ``F`` (float): values in [0, 1] are scaled by 255; values in [0, 255] are kept; anything else is
  min-max stretched. NaN/inf become 0.
- Other modes (``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ...) go through Pillow's ``convert("RGB")``.
- EXIF orientation is **not** applied: images and their masks stay pixel-aligned as stored.

Every file is fully decoded (``Image.load()``), so truncated files are detected here and not at
some later resize; ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never set. Zero-byte, truncated,
corrupt and non-image files raise :class:`ImageLoadError` (a ``ValueError``) naming the file and
what was expected; a missing file raises ``FileNotFoundError``.

Large images (bounded memory). ``load_image(path, max_pixels=..., max_decoded_pixels=...)``:

- ``max_pixels``: images with more pixels (width x height, read from the header before decoding)
  raise :class:`ImageTooLargeError` naming the file and the limit (``memseg predict`` uses
  :data:`MAX_IMAGE_PIXELS`, flag ``--max-pixels``). Without it, Pillow's decompression-bomb guard
  (about 89 Mpx) is the limit, as before.
- ``max_decoded_pixels``: larger images are decoded *downscaled* (same aspect ratio) to at most
  this many pixels (:data:`DECODE_MAX_PIXELS` for prediction): JPEG through the decoder's draft
  mode (DCT scaling by 1/2, 1/4 or 1/8, so the full-size image never exists in memory), then an
  antialiased Pillow resize in the file's own mode (before the conversion to RGB, so 16-bit and
  float images never reach a full-size int64/float64 array). A 48 Mpx photo thus costs tens of MB,
  not gigabytes. Palette and 1-bit images are expanded to RGB(A)/L first so the resize averages
  colours, not palette indices; the 16-bit bit-range rule then reads the downscaled values.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from memseg.config import SizeLike, as_size
from memseg.viz import resize_mask as resize_binary_mask

# torch is imported inside the functions that make tensors, so `memseg --help` (which reads the
# pixel limits below) stays fast.
if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
"""Accepted image file suffixes (compared case-insensitively)."""

_EXPECTED = "an image file (PNG, JPEG, BMP or TIFF)"

MAX_IMAGE_PIXELS = 100_000_000
"""Default largest image ``memseg predict`` accepts (width x height, 100 Mpx; flag ``--max-pixels``).

Above Pillow's decompression-bomb hard limit (2 x ``PIL.Image.MAX_IMAGE_PIXELS``, about 179 Mpx)
no file can be opened whatever the limit."""

DECODE_MAX_PIXELS = 4_000_000
"""Prediction decodes larger images downscaled to at most this many pixels (same aspect ratio).

4 Mpx is far more than the model uses (it works at 128-256 px) and keeps the full size of MVTec
AD (up to 1024 x 1024) and BTAD (up to 1600 x 1600) images; a 48 Mpx 8000 x 6000 photo comes
back at 2309 x 1732, and its anomaly map and overlay at that size."""



class ImageLoadError(ValueError):
    """An image or mask file could not be decoded; the message names the file."""


class ImageTooLargeError(ImageLoadError):
    """An image has more pixels than the caller's ``max_pixels`` limit; the message names both."""


def is_image_file(path: str | Path) -> bool:
    """True when ``path`` has one of :data:`IMAGE_SUFFIXES` (case-insensitive); content is not checked."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def bounded_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """``(width, height)`` scaled down (same aspect ratio, each side >= 1) to at most ``max_pixels``.

    Sizes already within the bound come back unchanged.
    """
    if width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))


def decode_bounded(img: Image.Image, max_pixels: int | None) -> Image.Image:
    """Decode an opened (not yet loaded) Pillow image, downscaled to at most ``max_pixels``.

    JPEG files use the decoder's draft mode (DCT scaling), other formats are decoded at full size
    and resized right away in their own mode; ``None`` decodes at full size. Returns the loaded image
    (``img`` itself or a new one). Decoding errors propagate as Pillow raises them.
    """
    w, h = img.size
    target = bounded_size(w, h, max_pixels) if max_pixels else (w, h)
    if target != (w, h) and img.format in ("JPEG", "MPO"):
        img.draft(None, target)  # decodes at the smallest 1/2^k scale still >= target
    img.load()  # full decode: truncated data fails here
    if not max_pixels or img.width * img.height <= max_pixels:
        return img
    small = shrink_image(img, max_pixels)
    img.close()  # frees the full-size pixels (and the file of a multi-frame image) now
    return small


def shrink_image(img: Image.Image, max_pixels: int) -> Image.Image:
    """A downscaled copy of ``img`` with at most ``max_pixels`` (same aspect ratio); ``img`` if it fits.

    Antialiased bilinear resize in the image's own mode; palette and 1-bit images are expanded
    first (to RGB/RGBA and L) so colours, not palette indices, are averaged. ``img`` is left open.
    """
    target = bounded_size(img.width, img.height, max_pixels)
    if target == img.size:
        return img
    if img.mode == "1":
        img = img.convert("L")
    elif img.mode in ("P", "PA"):
        img = img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB")
    return img.resize(target, Image.Resampling.BILINEAR)  # antialiased when shrinking


def open_image(path: str | Path, max_pixels: int | None = None, max_decoded_pixels: int | None = None) -> Image.Image:
    """Open and fully decode an image file with Pillow (first frame for multi-frame files).

    ``max_pixels``: refuse larger images (header size) with :class:`ImageTooLargeError`;
    ``max_decoded_pixels``: decode larger images downscaled (see the module docstring).

    Raises ``FileNotFoundError`` if it does not exist and :class:`ImageLoadError` if it is empty,
    truncated, corrupt or not an image.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file (expected {_EXPECTED})")
    if path.is_dir():
        raise ImageLoadError(f"{path}: is a directory, expected {_EXPECTED}")
    if path.stat().st_size == 0:
        raise ImageLoadError(f"{path}: file is empty (0 bytes), expected {_EXPECTED}")
    try:
        with warnings.catch_warnings():
            # Pillow warns (not raises) on some damaged files; we want a clean error instead. With an
            # explicit max_pixels the caller's limit replaces Pillow's soft one (its hard one stays).
            warnings.simplefilter("ignore" if max_pixels else "error", Image.DecompressionBombWarning)
            img = Image.open(path)
            w, h = img.size  # header only, nothing decoded yet
            if max_pixels and w * h > max_pixels:
                img.close()
                raise ImageTooLargeError(
                    f"{path}: {w}x{h} = {w * h / 1e6:.1f} Mpx is above the limit of {max_pixels / 1e6:g} Mpx; "
                    f"expected a smaller image"
                )
            img = decode_bounded(img, max_decoded_pixels)
    except ImageTooLargeError:
        raise
    except UnidentifiedImageError as err:
        raise ImageLoadError(f"{path}: not a recognised image format, expected {_EXPECTED}") from err
    except PermissionError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageLoadError(f"{path}: image is implausibly large ({err}), expected {_EXPECTED}") from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        # OSError: "image file is truncated", broken PNG chunks, bad JPEG data ...
        raise ImageLoadError(f"{path}: truncated or corrupt image data ({err}), expected {_EXPECTED}") from err
    return img


def _stretch(values: np.ndarray) -> np.ndarray:
    """Min-max stretch to uint8 (a constant image maps to 0)."""
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, np.uint8)
    return np.round((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _integer_to_uint8(values: np.ndarray) -> np.ndarray:
    """Scale integer grey values to uint8 by the smallest bit depth (>= 8) that holds the maximum."""
    values = values.astype(np.int64)
    if values.size == 0:
        return values.astype(np.uint8)
    if values.min() < 0:
        return _stretch(values.astype(np.float64))
    vmax = int(values.max())
    bits = max(8, math.ceil(math.log2(vmax + 1))) if vmax > 0 else 8
    scale = 255.0 / (2**bits - 1)
    return np.round(values * scale).astype(np.uint8)


def _float_to_uint8(values: np.ndarray) -> np.ndarray:
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if values.size == 0:
        return values.astype(np.uint8)
    lo, hi = float(values.min()), float(values.max())
    if lo >= 0.0 and hi <= 1.0:
        return np.round(values * 255.0).astype(np.uint8)
    if lo >= 0.0 and hi <= 255.0:
        return np.round(values).astype(np.uint8)
    return _stretch(values)


def _composite_on_black(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 -> (H, W, 3) uint8, colour multiplied by alpha (background black)."""
    rgb = rgba[..., :3].astype(np.uint16)
    alpha = rgba[..., 3:4].astype(np.uint16)
    return ((rgb * alpha + 127) // 255).astype(np.uint8)


def pil_to_rgb_array(img: Image.Image, path: str | Path = "<image>") -> np.ndarray:
    """Convert a decoded Pillow image of any mode to ``uint8 (H, W, 3)`` (rules in the module docstring)."""
    mode = img.mode
    if mode == "RGB":
        arr = np.asarray(img, dtype=np.uint8)
    elif mode in ("1", "L"):
        arr = np.asarray(img.convert("L"), dtype=np.uint8)
    elif mode in ("LA", "La", "PA", "RGBA", "RGBa") or (mode == "P" and "transparency" in img.info):
        arr = _composite_on_black(np.asarray(img.convert("RGBA"), dtype=np.uint8))
    elif mode == "P":
        arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    elif mode.startswith("I;16") or mode == "I":
        arr = _integer_to_uint8(np.asarray(img))
    elif mode == "F":
        arr = _float_to_uint8(np.asarray(img))
    else:
        try:
            arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
        except (ValueError, OSError) as err:
            raise ImageLoadError(f"{path}: unsupported image mode {mode!r}, expected an RGB, grey, palette, "
                                 f"alpha, 16-bit or float image") from err
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageLoadError(f"{path}: decoded to shape {arr.shape}, expected (H, W, 3)")
    if not arr.flags.writeable or not arr.flags.c_contiguous:
        arr = np.array(arr, copy=True, order="C")  # Pillow's buffers are read-only
    return arr


def load_image(path: str | Path, max_pixels: int | None = None, max_decoded_pixels: int | None = None) -> np.ndarray:
    """Decode an image file to ``uint8 (H, W, 3)`` RGB (any size, not resized by default).

    See the module docstring for how grey, palette, alpha, 16-bit and float images are converted,
    and for ``max_pixels`` (refuse larger images) and ``max_decoded_pixels`` (decode larger images
    downscaled, e.g. :data:`DECODE_MAX_PIXELS`).
    Raises :class:`ImageLoadError` naming the file for empty, truncated, corrupt or non-image files.
    """
    img = open_image(path, max_pixels=max_pixels, max_decoded_pixels=max_decoded_pixels)
    try:
        return pil_to_rgb_array(img, path)
    finally:
        img.close()


def _mask_values(img: Image.Image) -> np.ndarray:
    """A single-channel array whose non-zero entries mark the defect (alpha ignored, palette by index)."""
    mode = img.mode
    if mode in ("1", "L", "P", "F", "I") or mode.startswith("I;16"):
        return np.asarray(img)
    if mode in ("LA", "La", "PA"):
        return np.asarray(img)[..., 0]
    if mode in ("RGB", "RGBA", "RGBa", "RGBX"):
        return np.asarray(img)[..., :3].max(axis=2)
    return np.asarray(img.convert("L"))


def load_mask(path: str | Path, size: SizeLike | None = None) -> np.ndarray:
    """Load a ground-truth mask as ``bool (H, W)``: a pixel is defective when its value is ``> 0``.

    Colour masks count a pixel when any colour channel is non-zero (alpha is ignored); palette
    masks use the palette index (index 0 = background). With ``size=(H, W)`` (or an int) the mask
    is resized with **nearest neighbour** before binarising, so no grey edges appear.
    """
    img = open_image(path)
    try:
        values = _mask_values(img)
    finally:
        img.close()
    mask = np.array(values > 0)
    if size is not None:
        mask = resize_mask(mask, size)
    return mask


def resize_mask(mask: np.ndarray, size: SizeLike) -> np.ndarray:
    """Nearest-neighbour resize of a bool ``(H, W)`` mask to ``size`` = (H, W)."""
    return resize_binary_mask(mask, as_size(size))  # the display resize of memseg.viz (always a new array)


def to_tensor(image: np.ndarray, size: SizeLike | None = None) -> torch.Tensor:
    """``uint8 (H, W, 3)`` array -> ``FloatTensor (3, h, w)`` in [0, 1], resized bilinear with antialias.

    ``size`` is (height, width) or an int for a square; ``None`` keeps the native size.
    """
    import torch
    import torch.nn.functional as F

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"to_tensor expects a uint8 (H, W, 3) array, got {image.dtype} {image.shape}")
    if not image.flags.writeable or not image.flags.c_contiguous:
        image = np.array(image, copy=True, order="C")
    x = torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)  # (3, H, W)
    if size is None:
        return x
    h, w = as_size(size)
    if x.shape[1:] == (h, w):
        return x
    x = F.interpolate(x[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]
    return x.clamp_(0.0, 1.0)


def to_uint8_tensor(image: np.ndarray, size: SizeLike | None = None) -> torch.Tensor:
    """Like :func:`to_tensor` but returns ``uint8 (3, h, w)`` (compact training caches)."""
    import torch

    return to_tensor(image, size).mul_(255.0).round_().to(torch.uint8)
