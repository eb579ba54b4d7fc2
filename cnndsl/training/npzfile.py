"""`.npz` data read within bounds: every array's header (shape, dtype) is read from the
zip member before any array is, so a file that declares more than the memory allows, or
arrays that are not numbers (strings, dates, objects, complex), is refused before its
data is inflated. Nothing is unpickled (`allow_pickle=False`)."""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import DataError, over_limit

MAX_CLASSES = 100_000  # labels without class names: at most this many classes
MAX_CLASS_NAME = 200  # characters in one class name

# dtype kinds: u unsigned, i signed, f float, b bool, U unicode text
IMAGE_KINDS = "uifb"
LABEL_KINDS = "ui"
NAME_KINDS = "Uui"
KIND_WORDS = {"c": "complex numbers", "U": "text", "S": "bytes", "O": "Python objects",
              "M": "dates", "m": "time spans", "V": "records"}


@dataclass(frozen=True)
class Header:
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize


class NpzFile:
    """An open `.npz`: `headers` read on opening, each array loaded on demand."""

    def __init__(self, path: Path):
        from ..files import open_regular
        self.path = path
        try:
            self._file = open_regular(path)
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
        try:
            self._zip = zipfile.ZipFile(self._file)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError):
            self._file.close()
            raise DataError(f"{path} is not an .npz file (a zip of .npy arrays)",
                            help="write it with numpy.savez or numpy.savez_compressed") from None
        self.members = {n[:-4]: n for n in self._zip.namelist() if n.endswith(".npy")}
        self.headers: dict[str, Header] = {}

    def __enter__(self) -> NpzFile:
        return self

    def __exit__(self, *exc) -> None:
        self._zip.close()
        self._file.close()

    def need(self, names: tuple[str, ...], what: str) -> None:
        if any(name not in self.members for name in names):
            raise DataError(f"{self.path} needs {what}; it has "
                            f"{', '.join(sorted(self.members)) or 'none'}")

    def header(self, name: str, kinds: str, what: str) -> Header:
        """`name`'s shape and dtype, from its header; refused unless its dtype is of
        `kinds`."""
        try:
            with self._zip.open(self.members[name]) as member:
                version = np.lib.format.read_magic(member)
                read = {(1, 0): np.lib.format.read_array_header_1_0,
                        (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read is None:
                    raise ValueError(f".npy format {version[0]}.{version[1]}")
                shape, _, dtype = read(member)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError) as exc:
            raise DataError(f"{self.path}: `{name}` is not a readable .npy array ({exc})") \
                from None
        if dtype.kind not in kinds or dtype.hasobject or dtype.names:
            found = KIND_WORDS.get(dtype.kind, str(dtype))
            raise DataError(f"{self.path}: `{name}` ({what}) holds {found} ({dtype})",
                            help="images are numbers (uint8, uint16 or floats in 0..1); "
                            "labels and masks are integers")
        self.headers[name] = Header(tuple(int(d) for d in shape), dtype)
        return self.headers[name]

    def load(self, name: str) -> np.ndarray:
        """The array whose header was read and accepted, in native byte order."""
        header = self.headers[name]
        try:
            with self._zip.open(self.members[name]) as member:
                array = np.lib.format.read_array(member, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError) as exc:
            raise DataError(f"cannot read `{name}` in {self.path}: {exc}") from None
        if array.shape != header.shape:  # pragma: no cover - read_array follows the header
            raise DataError(f"{self.path}: `{name}` does not match its header")
        return array.astype(array.dtype.newbyteorder("="), copy=False)


def check_memory(path: Path, need: int, max_bytes: float, detail: str) -> None:
    """What the arrays the headers declare need once read and converted, against the
    limit, before any is read."""
    if need > max_bytes:
        raise over_limit(path, detail, need, max_bytes)


def read_images_header(npz: NpzFile, name: str = "x") -> Header:
    """`x`: N x H x W or N x C x H x W numbers, N, H and W at least 1, C 1 or 3."""
    x = npz.header(name, IMAGE_KINDS, "images")
    shape = x.shape if len(x.shape) != 3 else (x.shape[0], 1, *x.shape[1:])
    if len(shape) != 4:
        raise DataError(f"{npz.path}: `{name}` must be N x H x W or N x C x H x W; found "
                        f"{_shape(x.shape)}")
    if shape[1] not in (1, 3):
        raise DataError(f"{npz.path}: images have {shape[1]} channels; 1 or 3 expected")
    if shape[0] == 0:
        raise DataError(f"{npz.path} holds no samples (`{name}` is {_shape(x.shape)})")
    if 0 in shape[2:]:
        raise DataError(f"{npz.path}: images of no pixels (`{name}` is {_shape(x.shape)})")
    return Header(shape, x.dtype)


def read_class_names(npz: NpzFile) -> list[str] | None:
    """The optional `classes` array: one name per class, each once."""
    if "classes" not in npz.members:
        return None
    header = npz.header("classes", NAME_KINDS, "class names")
    if len(header.shape) != 1 or header.size > MAX_CLASSES or \
            header.dtype.kind == "U" and header.dtype.itemsize > 4 * MAX_CLASS_NAME:
        raise DataError(f"{npz.path}: `classes` must list at most {MAX_CLASSES:,} names of "
                        f"at most {MAX_CLASS_NAME} characters; found {_shape(header.shape)} "
                        f"{header.dtype}")
    return class_names([str(c) for c in npz.load("classes")], npz.path)


def class_names(names: list[str], where) -> list[str]:
    """Names shown in tables and plots: anything not encodable spelt with escapes
    (a folder name that is not UTF-8), each name once."""
    shown = [displayable(name) for name in names]
    seen: set[str] = set()
    for name in shown:
        if name in seen:
            raise DataError(f"{where} names the class {name!r} twice",
                            help="each class needs its own name")
        seen.add(name)
    return shown


def displayable(name: str) -> str:
    """`name` as valid UTF-8: bytes a file name held that are not UTF-8 as `\\xe9`, lone
    surrogates as `\\udcff`."""
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = name.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


def check_labels(y: np.ndarray, names: list[str] | None, path: Path) -> list[str]:
    """Labels in 0..K-1 (K: the names, else the largest label + 1, at most MAX_CLASSES),
    checked before any class name is made; returns the class names."""
    low, top = int(y.min()), int(y.max())
    limit = len(names) if names is not None else MAX_CLASSES
    if low < 0 or top >= limit:
        bad = low if low < 0 else top
        raise DataError(f"{path}: label {bad:,} is not a class: labels lie in "
                        f"0..{limit - 1:,}" + ("" if names is not None else
                                              f" (at most {MAX_CLASSES:,} classes)"),
                        help="labels are class indices 0, 1, ...; the `classes` array names "
                        "them")
    return names if names is not None else [str(i) for i in range(top + 1)]


def unit_floats(x: np.ndarray, path: Path, warnings: list[str], name: str = "x"
                ) -> np.ndarray:
    """Images as float32 in 0..1: unsigned integers scaled by their dtype's range (uint8 /
    255, uint16 / 65535), signed ones holding 0..255 by 255; floats as they are, warned
    about outside 0..1; NaN and infinities refused (they make the loss NaN)."""
    kind = x.dtype.kind
    if kind == "b":
        return x.astype(np.float32)
    if kind == "u":
        return (x / np.float32(np.iinfo(x.dtype).max)).astype(np.float32)
    if kind == "i":
        low, high = int(x.min()), int(x.max())
        if low < 0 or high > 255:
            raise DataError(f"{path}: `{name}` is {x.dtype} with values {low}..{high}: no "
                            "known range to scale to 0..1",
                            help="store images as uint8 (0..255), uint16 (0..65535) or "
                            "floats in 0..1")
        return (x / np.float32(255)).astype(np.float32)
    with np.errstate(over="ignore"):  # past float32's range: infinite, refused below
        x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise DataError(f"{path}: `{name}` holds NaN or infinite values (in float32)",
                        help="they make the loss NaN: replace or drop those samples")
    low, high = float(x.min()), float(x.max())
    if low < 0 or high > 1:
        warnings.append(f"{path}: `{name}` holds values from {low:g} to {high:g}, outside "
                        "0..1 (images read from files are scaled to 0..1): used as they are")
    return x


def _shape(shape) -> str:
    return " x ".join(map(str, shape)) or "a single value"
