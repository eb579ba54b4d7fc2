"""Image files read one way by every reader (training, segmentation masks, predict):
Pillow behind one door, and every way a file can fail to decode turned into a reason.

Pillow's decoders and the plugins other libraries install into `PIL.Image.open` (Ultralytics
patches it to try a HEIF plugin that may be missing) raise many exception types for a bad
file; a reader must skip such a file, not stop on it.

Pictures are read upright: a camera's EXIF orientation tag is applied to the pixels and
to the size read from the header (as viewers, annotation tools and Ultralytics' OpenCV
reader show them), so that boxes and masks drawn on the upright picture fit it.

Every image's size is read from its header and refused past `max_pixels` (MAX_PIXELS by
default: 8192 x 8192) before a pixel is decoded: a 140 KB PNG can declare 12000 x 12000
pixels (2.4 GB once decoded as float). Such a file is skipped like an unreadable one."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

MAX_PIXELS = 8192 * 8192  # the default bound on an image's width x height


class UnreadableImageError(Exception):
    """A file that is not an image Pillow can decode; `str()` is the reason, in words."""


def _reason(exc: BaseException) -> UnreadableImageError:
    from PIL import UnidentifiedImageError
    # a plugin that failed while handling Pillow's own verdict (Ultralytics' open retries
    # with a HEIF plugin) leaves that verdict in the exception's context
    cause: BaseException | None = exc
    for _ in range(8):
        if cause is None:
            break
        if isinstance(cause, UnidentifiedImageError):
            return UnreadableImageError("not an image")
        cause = cause.__context__
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return UnreadableImageError(f"unreadable image ({text})")


_PILLOW_LIMIT = threading.Lock()


@contextmanager
def _opened(path: Path, max_pixels: int | None) -> Iterator:
    """The image, opened (its header read, no pixel decoded) and within `max_pixels`; any
    failure, at the open or while the caller decodes it, an UnreadableImageError.

    Pillow's own bomb check (a warning past Image.MAX_IMAGE_PIXELS, an error past twice
    that, without the size) is turned off for the open and replaced by this one (under a
    lock: Pillow's limit is a module global)."""
    from PIL import Image

    from ..files import open_regular
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    # opened here, not by Pillow: a FIFO or a device listed as an image would block its open
    try:
        with open_regular(path) as file:
            with _PILLOW_LIMIT:
                pillow, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
                try:
                    image = Image.open(file)
                finally:
                    Image.MAX_IMAGE_PIXELS = pillow
            with image:
                width, height = image.size
                if width * height > limit:
                    raise _too_large(f"{width:,} x {height:,} pixels", limit)
                if width * height == 0:
                    raise UnreadableImageError("an image of no pixels")
                yield image
    except UnreadableImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad file
        raise _reason(exc) from None


def _too_large(size: str, limit: int) -> UnreadableImageError:
    return UnreadableImageError(f"image too large ({size}; the limit is {limit:,} pixels, "
                                "raised with the setting `max_image_pixels`)")


ORIENTATION_TAG = 0x0112
TURNED = (5, 6, 7, 8)  # orientations whose upright picture is the stored one turned 90


def _orientation(image) -> int:
    """The EXIF orientation (1: as stored). A PNG's eXIf chunk after its pixels is not
    read: finding it would decode them."""
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    try:
        value = image.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - a corrupt EXIF block is no orientation
        return 1
    return value if value in range(1, 9) else 1


def _upright(image, orientation: int):
    from PIL import Image
    method = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}.get(orientation)
    return image if method is None else image.transpose(method)


def read_pixels(path: Path, mode: str | None, max_pixels: int | None = None) -> np.ndarray:
    """The decoded pixels, upright, as H x W (x C) uint8: converted to `mode` ("L", "RGB"),
    or, with `mode=None`, kept as they are where they are class indices (palette "P" or
    grey "L") and converted to grey otherwise."""
    with _opened(path, max_pixels) as image:
        orientation = _orientation(image)
        if mode is None:
            mode = image.mode if image.mode in ("P", "L") else "L"
        elif image.mode.startswith("I;16"):  # Pillow clips 16-bit pixels: scale them
            from PIL import Image
            wide = np.asarray(image).astype(np.float32)
            image = Image.fromarray(np.round(wide / 257).astype(np.uint8), "L")
        if image.mode != mode:
            image = image.convert(mode)
        return np.asarray(_upright(image, orientation)).copy()


def read_header(path: Path, max_pixels: int | None = None) -> tuple[tuple[int, int], str]:
    """(width, height) of the upright picture and the mode, from the header alone."""
    with _opened(path, max_pixels) as image:
        width, height = image.size
        if _orientation(image) in TURNED:
            width, height = height, width
        return (width, height), image.mode


def verify(path: Path, max_pixels: int | None = None) -> None:
    """Raises UnreadableImageError unless the file's structure is sound and its size within
    `max_pixels` (no pixels decoded)."""
    with _opened(path, max_pixels) as image:
        image.verify()
