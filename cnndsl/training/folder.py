"""A training run's folder: a new one for each run (`runs/train`, `runs/train2`, ... as
Ultralytics names them), never another run's replaced by accident, locked for the run's
life, and checked writable, with every file it will write a regular file or absent,
before the first batch.

The lock is `fcntl.flock` on `.cnndsl.lock` in the folder: the system releases it when
its process ends, however it ends, so a lock file left by a killed run holds nothing. The
file names the holder (process id and host) for the message a second run gets.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..atomic import check_target
from ..diagnostics import CnnError, Diagnostic

try:
    import fcntl
except ImportError:  # Windows: runs are not locked there
    fcntl = None

WEIGHTS = ("best.safetensors", "last.safetensors")
STATE_FILE = "state.pt"
SIDECAR = "model.json"  # what predict needs beside the weights (deploy/describe.py)
METRICS = "metrics.json"
LOCK_FILE = ".cnndsl.lock"
MOST_RUNS = 9999  # runs/train .. runs/train9999, as Ultralytics' increment_path


def run_files(plots: tuple[str, ...]) -> tuple[str, ...]:
    """Every file a run writes into its folder, in the order the final message lists them."""
    return (*WEIGHTS, METRICS, *plots, STATE_FILE, SIDECAR)


def io_error(message: str, help: str | None = None) -> CnnError:
    return CnnError([Diagnostic(code="E-io", message=message, help=help)])


@dataclass
class RunFolder:
    """A claimed folder: locked until `release`."""

    path: Path
    created: bool  # made by this run (removed again if the run leaves it empty)
    lock_fd: int | None = None

    def release(self) -> None:
        if self.lock_fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path / LOCK_FILE)  # still ours: removed while held
            os.close(self.lock_fd)
            self.lock_fd = None
        if self.created:
            with contextlib.suppress(OSError):
                self.path.rmdir()  # only when nothing was written


def claim(out: Path | None, *, default: Path | None = None, resume: Path | None = None,
          exist_ok: bool = False, files: tuple[str, ...] = ()) -> RunFolder:
    """The folder a run writes `files` into: `out`, or without it a new folder named after
    `default`. Refused (E-io, nothing written) when another run holds it, when it holds
    another run's files (unless it is the folder resumed, or `exist_ok`), when it cannot be
    written, or when one of `files` there is not a regular file that may be replaced."""
    try:
        if out is None:
            folder = RunFolder(_next_free(default), created=True)
        else:
            folder = RunFolder(out, created=_make(out))
    except OSError as exc:  # a parent that cannot be written, or is a file
        raise io_error(f"cannot make the run's folder {exc.filename or out or default}: "
                       f"{exc.strerror or exc}", help="give a folder that can be written "
                       "with --out") from None
    try:
        folder.lock_fd = _lock(folder.path)
        resumed_here = resume is not None and _same(resume, folder.path)
        if not (resumed_here or exist_ok):
            _refuse_another_run(folder.path, files)
        check_writable(folder.path, files)
    except BaseException:
        folder.release()
        raise
    return folder


def _next_free(base: Path) -> Path:
    """`base`, else `base2`, `base3`, ...: the first that does not exist, created here
    (mkdir without exist_ok), so that two runs started at once never share one."""
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, MOST_RUNS + 1):
        path = base if n == 1 else base.with_name(f"{base.name}{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise io_error(f"{base} .. {base.name}{MOST_RUNS} all exist",
                   help="name the folder with --out, or clear old runs away")


def _make(out: Path) -> bool:
    try:
        info = os.lstat(out)
    except FileNotFoundError:
        out.mkdir(parents=True)
        return True
    if stat.S_ISLNK(info.st_mode) and out.is_dir():
        return False  # a link to a folder: the folder is what is written into
    if not stat.S_ISDIR(info.st_mode):
        raise io_error(f"--out {out}: not a folder", help="give a folder for the run's files")
    return False


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _lock(folder: Path) -> int | None:
    """Hold `folder`'s lock, or refuse: another live run has it."""
    if fcntl is None:
        return None
    path = folder / LOCK_FILE
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
                         | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise io_error(f"cannot lock {path}: {exc.strerror or exc}",
                           help="the run folder's lock file must be a regular file") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.read(fd, 200).decode("utf-8", "replace").split()
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                raise io_error(f"cannot lock {path}: {exc.strerror or exc}") from None
            who = f" (process {holder[0]} on {holder[1]})" if len(holder) >= 2 else ""
            raise io_error(f"{folder} is in use by another training run{who}",
                           help="wait for it to end, or train into another --out folder") \
                from None
        try:  # the last holder may have removed the file between our open and our lock
            if os.path.samestat(os.fstat(fd), os.lstat(path)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    return fd


def _refuse_another_run(folder: Path, files: tuple[str, ...]) -> None:
    found = [name for name in files if os.path.lexists(folder / name)]
    if found:
        raise io_error(f"{folder} holds another run ({', '.join(found)}); not replaced",
                       help=f"train into a new --out folder, continue it with --resume "
                       f"{folder}, or replace it with --exist-ok")


def check_writable(folder: Path, files: tuple[str, ...]) -> None:
    """The folder takes new files, and each of `files` there is absent or a regular file
    that may be replaced (as `atomic.check_target` decides): found now, not after an
    epoch. A folder without write permission is read-only even for root, as files are."""
    try:
        if not os.stat(folder).st_mode & 0o222:
            raise OSError(errno.EACCES, "read-only", str(folder))
        fd, probe = tempfile.mkstemp(prefix=".cnndsl-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise io_error(f"cannot write to {folder}: {exc.strerror or exc}",
                       help="give a folder that can be written with --out") from None
    for name in files:
        try:
            check_target(folder / name)
        except OSError as exc:
            raise io_error(f"cannot write {folder / name}: {exc.strerror or exc}",
                           help="move it away, or give another --out folder") from None
