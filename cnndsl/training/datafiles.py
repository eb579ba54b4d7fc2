"""The small files that describe a data set, read one way for every task: bounded reads
of regular files, an Ultralytics data YAML (`yaml.safe_load` only: plain data, no Python
objects), and class names from `classes.txt` or the YAML's `names:`."""

from __future__ import annotations

from pathlib import Path

from .data import DataError

MAX_TEXT_BYTES = 1 << 20  # a label file, a data YAML, classes.txt
DATA_YAML = ("data.yaml", "data.yml")  # beside images/ and masks/ (segmentation)


def read_bounded(path: Path, limit: int = MAX_TEXT_BYTES, what: str = "a data file") -> bytes:
    """A regular file's bytes, refused past `limit` bytes (never read beyond it)."""
    from ..files import open_regular
    try:
        with open_regular(path) as f:
            raw = f.read(limit + 1)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > limit:
        size = f"{limit // 2**30} GiB" if limit >= 2**30 else f"{limit // 2**20} MiB"
        raise DataError(f"{path}: over {size}, not {what}")
    return raw


def read_data_yaml(path: Path) -> dict:
    """An Ultralytics data YAML as a mapping; a syntax error located at its line."""
    import yaml

    from .detdata import LabelError
    raw = read_bounded(path, what="a data YAML")
    try:
        loaded = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            raise LabelError(path, mark.line + 1, mark.column + 1,
                             f"not valid YAML ({getattr(exc, 'problem', '') or exc})") \
                from None
        raise DataError(f"{path}: not valid YAML ({exc})") from None
    except RecursionError:
        raise DataError(f"{path}: not a data YAML (nested too deeply)") from None
    if not isinstance(loaded, dict):
        raise DataError(f"{path}: a data YAML is a mapping (`names`, and `train` and `val` "
                        "for detection)")
    return loaded


def yaml_class_names(path: Path, spec: dict) -> list[str]:
    """`names:` as Ultralytics writes it: a list, or a mapping numbering the classes 0, 1,
    ... in order; checked against `nc` where given; each name once."""
    from .npzfile import class_names
    names = spec.get("names")
    if isinstance(names, dict):
        if sorted(k for k in names if isinstance(k, int) and not isinstance(k, bool)) != \
                list(range(len(names))):
            raise DataError(f"{path}: `names` must number the classes 0, 1, ... in order")
        names = [names[k] for k in range(len(names))]
    if not isinstance(names, list) or not names or not all(
            isinstance(n, (str, int)) and not isinstance(n, bool) for n in names):
        raise DataError(f"{path}: `names:` must list the class names",
                        help="names: [background, circle, ...] or names: {0: background, "
                        "1: circle, ...}, from class 0")
    names = [str(n) for n in names]
    count = spec.get("nc")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
        raise DataError(f"{path}: `nc` is not a whole number")
    if count is not None and count != len(names):
        raise DataError(f"{path}: `nc` is {count} but `names` has {len(names)} classes")
    return class_names(names, path)


def class_file(root: Path) -> list[str] | None:
    """Class names from `root/classes.txt` (one a line, from class 0), else from the
    `names:` of `root/data.yaml`; None without either."""
    path = root / "classes.txt"
    if not path.is_file():
        yaml_path = next((root / n for n in DATA_YAML if (root / n).is_file()), None)
        if yaml_path is None:
            return None
        return yaml_class_names(yaml_path, read_data_yaml(yaml_path))
    text = read_bounded(path, what="a list of class names").decode("utf-8", "replace")
    from .npzfile import class_names
    return class_names([line.strip() for line in text.splitlines() if line.strip()], path)
