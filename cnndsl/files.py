"""Reading the files a user names: regular files only.

A FIFO, a terminal or a device given as a spec, weights, an input array, training data or
a state to resume from would block `open()` or never end; each is refused at once, by what
the opened file is (fstat), not by its name.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO


def open_regular(path: str | bytes | Path) -> BinaryIO:
    """The file opened for reading in binary, or OSError (naming the path) when it is not
    a regular file. The open itself cannot block: O_NONBLOCK, cleared once it is known to
    be a regular file."""
    name = os.fsdecode(path)
    if "\0" in name:
        raise OSError(errno.EINVAL, "a NUL character in the path", name)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", name)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def load_json(text: str | bytes):
    """`json.loads`, but a document nested past Python's recursion limit (a few bytes of
    `[[[[...` in a user's file) is a `json.JSONDecodeError` like any other bad JSON, not
    a RecursionError."""
    import json
    try:
        return json.loads(text)
    except RecursionError:
        doc = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        raise json.JSONDecodeError("nested too deeply", doc, 0) from None
