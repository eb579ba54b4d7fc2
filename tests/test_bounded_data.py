"""Data read within bounds (issue 29, item 2): an image's size is read from its header and
refused past a limit before any pixel is decoded; an `.npz` file's arrays are checked from
their headers (shape, dtype, size) before any is read; labels, class names, scaling and
folder depth are checked where the data is read, for classification and segmentation,
folders and `.npz`, and predict's reader."""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnndsl.training.data import DataError, load_data, read_images
from cnndsl.training.images import MAX_PIXELS, UnreadableImageError, read_pixels, verify
from cnndsl.training.metrics import format_report
from cnndsl.training.segdata import load_masks

SHAPE = (1, 8, 8)


def bomb_png(path: Path, width: int, height: int) -> Path:
    """A valid 1 x 1 PNG whose header (IHDR, its CRC fixed) declares width x height: it
    decodes to nothing, so a reader that decodes it fails differently from one that
    refuses it from the header."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def png(path: Path, value: int = 0, size: tuple[int, int] = (8, 8), mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)
    return path


@pytest.fixture
def folder_with_bombs(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    for label in ("a", "b"):
        for i in range(3):
            png(root / label / f"{i}.png", 40 * i)
    bomb_png(root / "a" / "huge.png", 100_000, 100_000)
    bomb_png(root / "b" / "small_file.png", 12_000, 12_000)
    return root


# ---- images ------------------------------------------------------------------------------


@pytest.mark.parametrize("width, height", [(100_000, 100_000), (12_000, 12_000),
                                           (MAX_PIXELS + 1, 1)])
def test_an_image_past_the_limit_is_refused_from_its_header(tmp_path, width, height):
    path = bomb_png(tmp_path / "bomb.png", width, height)
    for read in (lambda: read_pixels(path, "L"), lambda: verify(path)):
        with pytest.raises(UnreadableImageError, match=f"image too large \\({width:,} x "
                           f"{height:,} pixels; the limit is {MAX_PIXELS:,} pixels"):
            read()


def test_the_limit_can_be_raised_and_lowered(tmp_path):
    path = png(tmp_path / "i.png", size=(8, 8))
    assert read_pixels(path, "L", max_pixels=64).shape == (8, 8)
    with pytest.raises(UnreadableImageError, match="8 x 8 pixels; the limit is 63"):
        read_pixels(path, "L", max_pixels=63)
    big = bomb_png(tmp_path / "big.png", 9000, 9000)
    with pytest.raises(UnreadableImageError, match="truncated"):  # read, not refused
        read_pixels(big, "L", max_pixels=10**8)


@pytest.mark.parametrize("cache", ["memory", "none"])
def test_bombs_in_a_class_folder_are_skipped_and_counted(folder_with_bombs, cache):
    data = load_data(folder_with_bombs, SHAPE, cache=cache)
    assert len(data.train) + len(data.val) == 6
    skipped = dict((Path(f).name, why) for f, why in data.skipped)
    assert set(skipped) == {"huge.png", "small_file.png"}
    assert "100,000 x 100,000 pixels" in skipped["huge.png"]
    assert "12,000 x 12,000 pixels" in skipped["small_file.png"]


def test_predicts_reader_skips_a_bomb(folder_with_bombs):
    images, files, skipped = read_images(folder_with_bombs / "a", SHAPE)
    assert images.shape == (3, *SHAPE) and len(files) == 3
    assert [Path(f).name for f, _ in skipped] == ["huge.png"]


def test_a_segmentation_image_or_mask_past_the_limit_is_a_data_error(tmp_path):
    root = tmp_path / "seg"
    for i in range(3):
        png(root / "images" / f"{i}.png", 100)
        png(root / "masks" / f"{i}.png", 1)
    bomb_png(root / "images" / "3.png", 12_000, 12_000)
    png(root / "masks" / "3.png", 1)
    with pytest.raises(DataError, match="3.png: image too large \\(12,000 x 12,000"):
        load_masks(root, SHAPE)
    bomb_png(root / "images" / "3.png", 8, 8)
    (root / "images" / "3.png").unlink()
    (root / "masks" / "3.png").unlink()
    bomb_png(root / "masks" / "2.png", 100_000, 100_000)
    with pytest.raises(DataError, match="image too large"):
        load_masks(root, SHAPE)


def test_the_setting_reaches_the_readers(tmp_path, folder_with_bombs):
    import cnndsl
    spec = tmp_path / "s.cnn"
    spec.write_text("network n(classes: int = 2) {\n    input image: 1 x 8 x 8\n"
                    "    flatten -> linear(classes)\n}\n"
                    "train n() {\n    max_image_pixels: 63\n}\n")
    model = cnndsl.load(spec)
    assert model.train_config().max_image_pixels == 63
    from cnndsl.training.tasks import get
    with pytest.raises(DataError, match="no readable image for classes a, b"):
        get("classify").load_data(str(folder_with_bombs), SHAPE, model.train_config())


# ---- .npz --------------------------------------------------------------------------------


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


X = np.arange(10 * 64, dtype=np.uint8).reshape(10, 8, 8)
Y = np.arange(10) % 2


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.array(["a"] * 10), "y": Y}, "`x` (images) holds text"),
    ({"x": np.zeros((10, 8, 8), "datetime64[s]"), "y": Y}, "`x` (images) holds dates"),
    ({"x": np.zeros((10, 8, 8), complex), "y": Y}, "`x` (images) holds complex numbers"),
    ({"x": X, "y": Y.astype(float)}, "`y` (labels) holds float64"),
    ({"x": X, "y": np.array(["0"] * 10)}, "`y` (labels) holds text"),
    ({"x": X, "y": np.array(3)}, "y must hold one label per image (10); found a single value"),
    ({"x": np.zeros((10, 0, 0)), "y": Y}, "images of no pixels"),
    ({"x": np.zeros((0, 8, 8)), "y": np.zeros(0, int)}, "holds no samples"),
    ({"x": np.zeros((10, 2, 8, 8)), "y": Y}, "images have 2 channels; 1 or 3 expected"),
    ({"x": X, "y": np.array([0] * 9 + [10**12])}, "label 1,000,000,000,000 is not a class"),
    ({"x": X, "y": -Y}, "label -1 is not a class"),
    ({"x": X, "y": Y, "classes": np.array(["cat", "cat"])}, "names the class 'cat' twice"),
    ({"x": X, "y": Y + 1, "classes": np.array(["cat", "dog"])}, "label 2 is not a class: "
     "labels lie in 0..1"),
    ({"x": np.full((10, 8, 8), np.nan), "y": Y}, "holds NaN or infinite values"),
    ({"x": np.full((10, 8, 8), 1e300), "y": Y}, "holds NaN or infinite values"),
    ({"x": X.astype(np.int64) - 5, "y": Y}, "int64 with values -5..250: no known range"),
    ({"x": X}, "needs arrays `x` (images) and `y` (labels); it has x"),
])
def test_a_bad_npz_is_refused_in_words(tmp_path, arrays, message):
    path = _npz(tmp_path / "d.npz", **arrays)
    with pytest.raises(DataError) as caught:
        load_data(path, SHAPE)
    assert message in caught.value.message


def test_an_npz_of_python_objects_is_refused_before_anything_is_unpickled(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.array([object()] * 10, dtype=object), y=Y)
    with pytest.raises(DataError, match="`x` \\(images\\) holds Python objects"):
        load_data(path, SHAPE)


def test_labels_up_to_10_to_the_12_do_not_build_class_names(tmp_path):
    import tracemalloc
    path = _npz(tmp_path / "d.npz", x=X, y=np.array([0] * 9 + [10**12]))
    tracemalloc.start()
    with pytest.raises(DataError):
        load_data(path, SHAPE)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50 * 2**20  # 10^12 names would take terabytes


@pytest.mark.parametrize("content, message", [
    (b"not a zip at all", "is not an .npz file"),
    (None, "is not an .npz file"),  # an .npy renamed .npz
])
def test_a_file_that_is_not_a_zip_is_refused(tmp_path, content, message):
    path = tmp_path / "d.npz"
    if content is None:
        np.save(tmp_path / "a.npy", X)
        content = (tmp_path / "a.npy").read_bytes()
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_data(path, SHAPE)


def _header(shape: tuple[int, ...], descr: str) -> bytes:
    """An .npy header declaring `shape` with a few bytes of data behind it."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": descr, "fortran_order": False,
                                                  "shape": shape})
    return b"\x93NUMPY\x01\x00" + header.getvalue()[8:] + bytes(64)


def _declaring(path: Path, shape: tuple[int, ...], masks: bool = False) -> Path:
    """An .npz whose `x` header declares `shape` (float32) with almost no data behind it,
    with labels `y` (or declared `masks`)."""
    labels = io.BytesIO()
    np.save(labels, np.arange(shape[0]) % 2)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.npy", _header(shape, "<f4"))
        if masks:
            archive.writestr("masks.npy", _header((shape[0], *shape[2:]), "|u1"))
        else:
            archive.writestr("y.npy", labels.getvalue())
    return path


def test_an_npz_declaring_more_than_the_memory_allows_is_refused_from_its_header(tmp_path):
    path = _declaring(tmp_path / "d.npz", (100_000, 1, 100, 1000))  # 10^10 values
    with pytest.raises(DataError, match=r"100,000 images of 1 x 100 x 1000 float32 need "
                       r"\d+\.\d\d GiB in memory, over 4\.00 GiB"):
        load_data(path, SHAPE)
    with pytest.raises(DataError, match="over 1000 B"):
        load_data(_npz(tmp_path / "e.npz", x=X, y=Y), SHAPE, max_bytes=1000)


def test_a_zip_bomb_is_refused_before_it_inflates(tmp_path):
    path = tmp_path / "d.npz"  # 40 MB of zeros in 40 KB
    np.savez_compressed(path, x=np.zeros((100, 1, 100, 1000), np.float32), y=np.zeros(100, int))
    assert path.stat().st_size < 100_000
    with pytest.raises(DataError, match="100 images of 1 x 100 x 1000 float32 need 76.32 MiB "
                       "in memory, over 32.00 MiB"):
        load_data(path, SHAPE, max_bytes=2**25)


def test_a_truncated_array_is_a_data_error(tmp_path):
    path = _declaring(tmp_path / "d.npz", (10, 1, 8, 8))
    with pytest.raises(DataError, match="cannot read `x` in"):
        load_data(path, SHAPE)


def test_integer_images_are_scaled_by_their_dtypes_range(tmp_path):
    full = np.full((4, 8, 8), 65535, np.uint16)
    data = load_data(_npz(tmp_path / "a.npz", x=full, y=np.arange(4) % 2), SHAPE)
    assert data.train.images.max().item() == 1.0 and data.warnings == []
    half = np.full((4, 8, 8), 32768, np.uint16)
    data = load_data(_npz(tmp_path / "b.npz", x=half, y=np.arange(4) % 2), SHAPE)
    assert data.train.images.max().item() == pytest.approx(32768 / 65535)
    wide = np.full((4, 8, 8), 255, np.int64)  # np.array of Python ints: 0..255 as uint8
    data = load_data(_npz(tmp_path / "c.npz", x=wide, y=np.arange(4) % 2), SHAPE)
    assert data.train.images.max().item() == 1.0
    big_endian = np.full((4, 8, 8), 0.5, ">f4")
    data = load_data(_npz(tmp_path / "d.npz", x=big_endian, y=np.arange(4) % 2), SHAPE)
    assert data.train.images.max().item() == 0.5


def test_float_images_outside_0_to_1_are_warned_about(tmp_path):
    x = np.full((4, 8, 8), 200.0, np.float32)
    data = load_data(_npz(tmp_path / "a.npz", x=x, y=np.arange(4) % 2), SHAPE)
    assert data.warnings == [f"{tmp_path / 'a.npz'}: `x` holds values from 200 to 200, "
                             "outside 0..1 (images read from files are scaled to 0..1): "
                             "used as they are"]


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.zeros((4, 3, 8, 8)), "masks": np.zeros((4, 8, 8), "datetime64[s]")},
     "`masks` (masks) holds dates"),
    ({"x": np.zeros((4, 3, 8, 8), complex), "masks": np.zeros((4, 8, 8), np.uint8)},
     "holds complex numbers"),
    ({"x": np.zeros((4, 3, 8, 8)), "masks": np.zeros((4, 4, 4), np.uint8)},
     "masks N x H x W of the same size"),
    ({"x": np.zeros((4, 3, 8, 8)), "masks": np.array(1)}, "masks N x H x W of the same size"),
    ({"x": np.zeros((4, 3, 0, 8)), "masks": np.zeros((4, 0, 8), np.uint8)}, "images of no "
     "pixels"),
    ({"x": np.zeros((4, 3, 8, 8)), "masks": np.full((4, 8, 8), 10**9)}, "mask value "
     "1000000000 is not a class (0..254)"),
    ({"x": np.zeros((4, 3, 8, 8)), "masks": np.zeros((4, 8, 8), np.uint8),
      "classes": np.array(["bg", "bg"])}, "names the class 'bg' twice"),
])
def test_a_bad_segmentation_npz_is_refused_in_words(tmp_path, arrays, message):
    path = _npz(tmp_path / "d.npz", **arrays)
    with pytest.raises(DataError) as caught:
        load_masks(path, (3, 8, 8))
    assert message in caught.value.message


def test_segmentation_npz_is_bounded_and_scaled(tmp_path):
    path = _declaring(tmp_path / "d.npz", (100_000, 1, 100, 1000), masks=True)
    with pytest.raises(DataError, match="need .* GiB in memory, over 4.00 GiB"):
        load_masks(path, SHAPE)
    x = np.full((4, 1, 8, 8), 65535, np.uint16)
    data = load_masks(_npz(tmp_path / "e.npz", x=x, masks=np.ones((4, 8, 8), np.uint8)), SHAPE)
    assert data.train.images.max().item() == 1.0


# ---- class names and folders -------------------------------------------------------------


def _class_folders(root: Path, names: list[bytes]) -> Path:
    for name in names:
        for i in range(3):
            png(root / os.fsdecode(name) / f"{i}.png", 60 * i)
    return root


def test_a_class_folder_name_that_is_not_utf8_is_shown_escaped(tmp_path):
    root = _class_folders(tmp_path / "d", [b"caf\xe9", b"line\nbreak", b"dollar$x$"])
    data = load_data(root, SHAPE)
    assert data.train.classes == ["caf\\xe9", "dollar$x$", "line\nbreak"]
    from cnndsl.training.plots import plot_confusion
    plot_confusion([[1, 0, 0], [0, 1, 0], [0, 0, 1]], data.train.classes, tmp_path / "c.png")
    assert Image.open(tmp_path / "c.png").size[0] > 100
    rows = [{"class": c, "precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
            for c in data.train.classes]
    table = format_report({"per_class": rows, "precision": 1.0, "recall": 1.0, "f1": 1.0,
                           "weighted": {"precision": 1.0, "recall": 1.0, "f1": 1.0},
                           "accuracy": 1.0, "confusion_matrix": [[1, 0, 0], [0, 1, 0],
                                                                 [0, 0, 1]]})
    assert "line\\nbreak" in table
    assert len(table.splitlines()) == 14  # 3 rows in each table, none split in two


def test_class_folders_that_escape_to_one_name_are_refused(tmp_path):
    root = _class_folders(tmp_path / "d", [b"caf\xe9", b"caf\\xe9"])
    with pytest.raises(DataError, match="names the class 'caf\\\\\\\\xe9' twice"):
        load_data(root, SHAPE)


def test_a_folder_nested_1500_deep_is_an_error_not_a_crash(tmp_path):
    root = _class_folders(tmp_path / "d", [b"a", b"b"])
    _nest(root / "a", 1500, (root / "a" / "0.png").read_bytes())
    try:
        with pytest.raises(DataError, match="holds folders nested more than 32 deep"):
            load_data(root, SHAPE)
        with pytest.raises(DataError, match="nested more than 32 deep"):
            read_images(root, SHAPE)
    finally:
        _unnest(root / "a", 1500)  # shutil.rmtree (pytest's clean-up) recurses: it would fail


def _nest(folder: Path, depth: int, content: bytes) -> None:
    """folder/n/n/.../x.png, `depth` deep, made by relative steps (the whole path would
    pass PATH_MAX)."""
    fd = os.open(folder, os.O_RDONLY)
    for _ in range(depth):
        os.mkdir("n", dir_fd=fd)
        fd, old = os.open("n", os.O_RDONLY, dir_fd=fd), fd
        os.close(old)
    with open(os.open("x.png", os.O_WRONLY | os.O_CREAT, dir_fd=fd), "wb") as f:
        f.write(content)
    os.close(fd)


def _unnest(folder: Path, depth: int) -> None:
    fds = [os.open(folder, os.O_RDONLY)]
    for _ in range(depth):
        fds.append(os.open("n", os.O_RDONLY, dir_fd=fds[-1]))
    os.unlink("x.png", dir_fd=fds[-1])
    for parent in reversed(fds[:-1]):
        os.close(fds.pop())
        os.rmdir("n", dir_fd=parent)
    os.close(fds[0])


def test_a_folder_nested_within_the_limit_is_read(tmp_path):
    root = _class_folders(tmp_path / "d", [b"a", b"b"])
    png(root / "a" / Path(*["n"] * 32) / "deep.png", 200)
    data = load_data(root, SHAPE)
    assert len(data.train) + len(data.val) == 7


def test_a_symlinked_folder_loop_is_not_followed(tmp_path):
    root = _class_folders(tmp_path / "d", [b"a", b"b"])
    (root / "a" / "loop").symlink_to(root / "a")
    data = load_data(root, SHAPE)
    assert len(data.train) + len(data.val) == 6


def test_normalize_with_one_mean_and_a_std_per_channel_applies_every_std():
    from cnndsl.training.data import eval_transform
    apply = eval_transform([("normalize", {"mean": (0.5,), "std": (0.5, 0.25, 0.125)})])
    out = apply(torch.ones(1, 3, 2, 2))
    assert out[0, :, 0, 0].tolist() == [1.0, 2.0, 4.0]


def test_a_16_bit_png_is_scaled_by_its_range_not_clipped(tmp_path):
    pixels = np.array([[0, 257, 32896, 65535]], np.uint16)
    Image.fromarray(pixels).save(tmp_path / "16.png")
    assert Image.open(tmp_path / "16.png").mode == "I;16"
    assert read_pixels(tmp_path / "16.png", "L").tolist() == [[0, 1, 128, 255]]
    assert read_pixels(tmp_path / "16.png", "RGB")[0, 2].tolist() == [128, 128, 128]


# ---- --memory-limit reaches the data readers ----------------------------------------------

LIMITED = """network n(classes: int = 2) {
    input image: 1 x 8 x 8
    conv(4, 3, padding=same) -> relu -> maxpool(2)
    flatten -> linear(classes)
}
train n() {
    task: TASK
    cache: CACHE
    epochs: 1
}
"""


def _limited_model(tmp_path: Path, task: str, cache: str, limit: int | None):
    import cnndsl
    spec = tmp_path / "n.cnn"
    text = LIMITED.replace("TASK", task).replace("CACHE", cache)
    if task == "segment":
        text = text.replace(" -> maxpool(2)", "").replace("flatten -> linear(classes)",
                                                          "conv(classes, 1)")
    spec.write_text(text)
    return cnndsl.load(spec, memory_limit=limit)


def _data_kinds(tmp_path: Path) -> dict[str, Path]:
    """40 samples of 1 x 8 x 8 (about 10 KiB decoded) of every kind of data."""
    kinds = {"npz": _npz(tmp_path / "c.npz", x=np.zeros((40, 1, 8, 8), np.float32),
                         y=np.arange(40) % 2),
             "seg_npz": _npz(tmp_path / "s.npz", x=np.zeros((40, 1, 8, 8), np.float32),
                             masks=np.tile(np.arange(8, dtype=np.uint8) % 2, (40, 8, 1)))}
    for i in range(40):
        png(tmp_path / "folder" / "ab"[i % 2] / f"{i}.png", 3 * i)
        png(tmp_path / "seg" / "images" / f"{i}.png", 3 * i)
        png(tmp_path / "seg" / "masks" / f"{i}.png", i % 2)
        png(tmp_path / "det" / "images" / f"{i}.png", 3 * i)
        (tmp_path / "det" / "labels").mkdir(exist_ok=True)
        (tmp_path / "det" / "labels" / f"{i}.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    return {**kinds, "folder": tmp_path / "folder", "seg": tmp_path / "seg",
            "det": tmp_path / "det"}


@pytest.mark.parametrize("kind, task, cache", [
    ("npz", "classify", "auto"), ("folder", "classify", "memory"),
    ("seg_npz", "segment", "auto"), ("seg", "segment", "memory")])
def test_memory_limit_bounds_the_data_held_in_memory(tmp_path, kind, task, cache):
    """A set far under the 4 GiB default but over `--memory-limit 8KiB` is refused in one
    line naming the setting; the same set loads without the limit."""
    from cnndsl.diagnostics import CnnError
    from cnndsl.training.run import load_dataset
    data = _data_kinds(tmp_path)[kind]
    model = _limited_model(tmp_path, task, cache, 8 * 1024)
    with pytest.raises(CnnError) as caught:
        load_dataset(model, model.train_config(), data)
    (d,) = caught.value.diagnostics
    assert "\n" not in d.message
    assert "in memory, over 8.00 KiB" in d.message, d.message
    assert "--memory-limit" in d.help
    unlimited = _limited_model(tmp_path, task, cache, None)
    loaded = load_dataset(unlimited, unlimited.train_config(), data)
    assert len(loaded.train) + len(loaded.val) == 40


@pytest.mark.parametrize("kind, task", [("folder", "classify"), ("seg", "segment")])
def test_cache_auto_streams_a_folder_over_the_memory_limit(tmp_path, kind, task):
    from cnndsl.training.run import load_dataset
    data = _data_kinds(tmp_path)[kind]
    model = _limited_model(tmp_path, task, "auto", 8 * 1024)
    loaded = load_dataset(model, model.train_config(), data)
    assert not hasattr(loaded.train, "images")  # read from disk as needed
    assert len(loaded.train) + len(loaded.val) == 40


def test_memory_limit_reaches_the_detection_reader(tmp_path):
    from cnndsl.training.detdata import load_detection_data
    data = _data_kinds(tmp_path)["det"]
    with pytest.raises(DataError, match="over 8.00 KiB") as caught:
        load_detection_data(str(data), SHAPE, cache="memory", max_bytes=8 * 1024)
    assert "--memory-limit" in caught.value.help
    assert not hasattr(load_detection_data(str(data), SHAPE, cache="auto",
                                           max_bytes=8 * 1024).train, "images")
    assert len(load_detection_data(str(data), SHAPE, cache="memory").train.images) == 32


def test_train_memory_limit_refuses_data_under_4_gib_and_the_default_stays(tmp_path, capsys):
    from cnndsl.cli import main
    npz = _npz(tmp_path / "c.npz", x=np.zeros((40, 1, 8, 8), np.float32), y=np.arange(40) % 2)
    _limited_model(tmp_path, "classify", "auto", None)
    spec = tmp_path / "n.cnn"
    code = main(["train", str(spec), "--data", str(npz), "--memory-limit", "8KiB",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1 and "error[E-data]" in err and "over 8.00 KiB" in err
    assert "--memory-limit" in err and not (tmp_path / "run").exists()
    huge = _declaring(tmp_path / "d.npz", (100_000, 1, 100, 1000))
    assert main(["train", str(spec), "--data", str(huge), "--out", str(tmp_path / "r")]) == 1
    assert "over 4.00 GiB" in capsys.readouterr().err


# ---- predict and detection honour `max_image_pixels` -------------------------------------

PIXELS_SPEC = """network n(classes: int = 2) {
    input image: 1 x 8 x 8
    flatten -> linear(classes)
}
train n() {
    max_image_pixels: LIMIT
}
"""


@pytest.mark.parametrize("limit, why", [(63, "8 x 8 pixels; the limit is 63"),
                                        (10**8, "truncated")])
def test_predict_honours_the_specs_max_image_pixels(tmp_path, capsys, limit, why):
    """Lowered, an 8 x 8 image is skipped; raised, a 9000 x 9000 header is decoded (and
    found truncated) instead of refused at the default bound."""
    from cnndsl.cli import main
    spec = tmp_path / "n.cnn"
    spec.write_text(PIXELS_SPEC.replace("LIMIT", str(limit)))
    image = png(tmp_path / "i.png") if limit == 63 else bomb_png(tmp_path / "i.png", 9000, 9000)
    assert main(["predict", str(spec), str(image)]) == 1  # nothing predicted
    err = capsys.readouterr().err
    assert f"warning: skipped {image}: " in err and why in err, err
    assert "image too large" not in err or limit == 63


def test_the_bound_travels_with_an_export():
    import cnndsl
    from cnndsl.deploy.describe import from_onnx_metadata, from_spec
    info = from_spec(cnndsl.loads(PIXELS_SPEC.replace("LIMIT", "63")))
    assert info.max_pixels == 63
    assert from_onnx_metadata(info.to_metadata(), [1, 1, 8, 8]).max_pixels == 63
    default = from_spec(cnndsl.loads(PIXELS_SPEC.replace("LIMIT", str(MAX_PIXELS))))
    assert "cnndsl.max_pixels" not in default.to_metadata()  # exports as before


def test_detection_data_and_predict_honour_max_image_pixels(tmp_path):
    from cnndsl.deploy.describe import ModelInfo
    from cnndsl.deploy.predict import Predictor, predict_files
    from cnndsl.training.detdata import BoxFiles, load_detection_data
    data = _data_kinds(tmp_path)["det"]
    with pytest.raises(DataError, match="0.png: image too large \\(8 x 8 pixels; the limit "
                       "is 63"):
        load_detection_data(str(data), SHAPE, max_pixels=63)
    files = load_detection_data(str(data), SHAPE, cache="none")
    assert isinstance(files.train, BoxFiles)
    files.train.max_pixels = 63
    with pytest.raises(DataError, match="image too large"):
        files.train[0]
    info = ModelInfo(shape=SHAPE, task="detection", max_pixels=63)
    done = predict_files(Predictor(info, lambda x: None, "none"),
                         [data / "images" / "0.png"], progress=False)
    assert not done.results and "the limit is 63" in done.skipped[0][1]
