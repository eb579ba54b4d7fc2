"""The one image reader: orientation as the camera recorded it (EXIF), for pixels and
for the size read from the header, so that boxes and masks drawn on the upright picture
(as every viewer and annotation tool shows it) land on the same pixels."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cnndsl.training.images import read_header, read_pixels

ORIENTATION = 0x0112


def _stored(tmp_path, orientation: int | None, suffix=".jpg"):
    """A 6 x 4 (W x H) picture stored as it left the sensor, with an orientation tag."""
    pixels = np.zeros((4, 6, 3), np.uint8)
    pixels[0, 0] = (255, 0, 0)  # stored top-left corner: red
    pixels[3, 5] = (0, 0, 255)  # stored bottom-right: blue
    image = Image.fromarray(pixels)
    path = tmp_path / f"photo_{orientation}{suffix}"
    exif = Image.Exif()
    if orientation is not None:
        exif[ORIENTATION] = orientation
    image.save(path, exif=exif, **({"quality": 100, "subsampling": 0}
                                   if suffix == ".jpg" else {}))
    return path, pixels


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
@pytest.mark.parametrize("orientation, upright", [
    (None, lambda p: p), (1, lambda p: p),
    (2, lambda p: p[:, ::-1]),                # mirrored
    (3, lambda p: p[::-1, ::-1]),             # rotated 180
    (6, lambda p: np.rot90(p, -1)),           # rotated 90 clockwise to view
    (8, lambda p: np.rot90(p, 1)),            # rotated 90 anticlockwise to view
    (5, lambda p: np.rot90(p, 1)[::-1]),      # transposed
    (7, lambda p: np.rot90(p, -1)[::-1]),     # transversed
])
def test_pixels_and_header_size_are_the_upright_picture(tmp_path, suffix, orientation, upright):
    path, stored = _stored(tmp_path, orientation, suffix)
    expected = upright(stored)
    pixels = read_pixels(path, "RGB")
    assert pixels.shape == expected.shape
    red = np.argwhere((pixels[..., 0] > 200) & (pixels[..., 2] < 60))
    blue = np.argwhere((pixels[..., 2] > 200) & (pixels[..., 0] < 60))
    assert red.tolist() == np.argwhere(expected[..., 0] == 255).tolist()
    assert blue.tolist() == np.argwhere(expected[..., 2] == 255).tolist()
    (width, height), _ = read_header(path)
    assert (height, width) == expected.shape[:2]


def test_a_palette_mask_keeps_its_class_indices_when_turned(tmp_path):
    mask = Image.fromarray(np.array([[0, 1, 2], [3, 4, 5]], np.uint8), "P")
    mask.putpalette([v for i in range(6) for v in (i * 40, 0, 0)])
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    path = tmp_path / "mask.png"
    mask.save(path, exif=exif)
    assert read_pixels(path, None).tolist() == [[3, 0], [4, 1], [5, 2]]
