"""Atomic writes: an output file is either the old one or the complete new one."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path


@contextmanager
def atomic_path(target: str | Path):
    """Yield a temporary path beside `target`; rename it over `target` only on success.
    Every error names the target, never the temporary file."""
    target = Path(target)
    check_target(target)
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(target)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp",
                                   dir=target.parent)
        os.close(fd)
        yield Path(tmp)
        adopt(tmp, target)
        os.replace(tmp, target)
    except OSError as exc:
        if exc.filename in (None, tmp, str(target.parent)) or _is_temporary(exc.filename,
                                                                              target):
            raise OSError(exc.errno, exc.strerror or str(exc), str(target)) from None
        raise
    finally:
        if tmp is not None and os.path.lexists(tmp):
            os.unlink(tmp)


def check_target(target: Path) -> None:
    """Outputs go to a new path or replace a regular file that may be written: never a
    device (`-o /dev/null` as root would replace the system's), a FIFO, a folder, a
    symbolic link (renaming over it replaces the link, as `-o /dev/stdout` would), or a
    read-only file (root may write anything, so the mode bits decide)."""
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(target)) from None
    if stat.S_ISLNK(info.st_mode):
        raise OSError(errno.EINVAL, "a symbolic link; outputs are not written through links "
                      "(give the path it points to)", str(target))
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise OSError(errno.EINVAL, f"{kind}; outputs go to regular files", str(target))
    if not info.st_mode & 0o222:
        raise OSError(errno.EACCES, "read-only; not replaced", str(target))


def adopt(tmp: str | Path, target: Path) -> None:
    """Give the new file what the file it replaces has: its mode (mkstemp makes 0600) and
    its owner (root replacing another user's file must not take it over); a new path gets
    what a plain open() would give it."""
    try:
        info = os.stat(target)
    except FileNotFoundError:
        os.chmod(tmp, 0o666 & ~_umask())
        return
    os.chmod(tmp, info.st_mode & 0o777)
    mine = os.stat(tmp)
    if (mine.st_uid, mine.st_gid) != (info.st_uid, info.st_gid):
        try:
            os.chown(tmp, info.st_uid, info.st_gid)
        except PermissionError:
            raise OSError(errno.EPERM, "owned by another user; not replaced",
                          str(target)) from None


def _mode_for(target: Path) -> int:
    """The mode the file already has, else what a plain open() would give it."""
    try:
        return target.stat().st_mode & 0o777
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _is_temporary(name, target: Path) -> bool:
    base = os.path.basename(os.fsdecode(name)) if isinstance(name, (str, bytes)) else ""
    return base.startswith(f".{target.name}.") and base.endswith(".tmp")


def remove_leftovers(target: Path) -> None:
    """Temporary files of earlier writes of this target that a killed run left behind:
    `.NAME.PID.random.tmp` whose process is gone (or that carry no process id). Another
    live process's file is its own business."""
    import glob
    for name in glob.glob(glob.escape(str(target.parent / f".{target.name}.")) + "*.tmp"):
        path = Path(name)
        middle = path.name[len(target.name) + 2:-len(".tmp")].split(".")[0]
        if middle.isdigit() and _alive(int(middle)):
            continue
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                path.unlink()
        except OSError:
            pass  # gone already, or not ours to remove


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def write_file(path: str | Path, data: bytes) -> None:
    """`data` into `path` (a temporary file of `atomic_path`), synced to the disk."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        write_file(tmp, data)


def write_files(files: dict[Path, bytes]) -> None:
    """Files that belong together (a run's checkpoints, metrics and state of one epoch),
    each written atomically, and all of them before any replaces its target: a failure
    (a full disk) leaves every target as it was."""
    with ExitStack() as stack:
        temporaries = [(stack.enter_context(atomic_path(target)), data)
                       for target, data in files.items()]
        for tmp, data in temporaries:
            write_file(tmp, data)


def write_text(target: str | Path, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))
