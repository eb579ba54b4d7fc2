"""Image files read one way by every reader (training, segmentation masks, predict):
Pillow behind one door, and every way a file can fail to decode turned into a reason.

Pillow's decoders and the plugins other libraries install into `PIL.Image.open` (Ultralytics
patches it to try a HEIF plugin that may be missing) raise many exception types for a bad
file; a reader must skip such a file, not stop on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class UnreadableImageError(Exception):
    """A file that is not an image Pillow can decode; `str()` is the reason, in words."""


def _reason(exc: BaseException) -> UnreadableImageError:
    from PIL import UnidentifiedImageError
    if isinstance(exc, UnidentifiedImageError):
        return UnreadableImageError("not an image")
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return UnreadableImageError(f"unreadable image ({text})")


def read_pixels(path: Path, mode: str | None) -> np.ndarray:
    """The decoded pixels as H x W (x C) uint8: converted to `mode` ("L", "RGB"), or, with
    `mode=None`, kept as they are where they are class indices (palette "P" or grey "L")
    and converted to grey otherwise."""
    from PIL import Image
    try:
        with Image.open(path) as image:
            if mode is None:
                mode = image.mode if image.mode in ("P", "L") else "L"
            if image.mode != mode:
                image = image.convert(mode)
            return np.asarray(image).copy()
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad file
        raise _reason(exc) from None


def read_header(path: Path) -> tuple[tuple[int, int], str]:
    """(width, height) and the mode, from the header alone."""
    from PIL import Image
    try:
        with Image.open(path) as image:
            return image.size, image.mode
    except Exception as exc:  # noqa: BLE001
        raise _reason(exc) from None


def verify(path: Path) -> None:
    """Raises UnreadableImageError unless the file's structure is sound (no pixels decoded)."""
    from PIL import Image
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as exc:  # noqa: BLE001
        raise _reason(exc) from None
