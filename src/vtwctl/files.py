"""Files written by vtwctl: strict JSON, atomic replacement, exclusive locks, checks before work.

* ``dumps``: strict JSON (no ``NaN``/``Infinity``: a non-finite float becomes ``null``).
* ``atomic_write``: write a temporary file in the same directory, fsync, rename over the target.
* ``lock``: an exclusive advisory lock on a file (``flock``; ``msvcrt`` on Windows) held for a
  block, refused at once with a ``VTWError`` naming the file if another process holds it.
  Re-entrant within one process, so a command can take it before loading a model and the
  library can take it again around the work.
* ``check_file_target`` / ``check_dir_target``: a path the command will write later must be
  writable *now*, before minutes of model loading or computing (the message names the path).
* ``check_regular``: a path vtwctl reads or writes as a file must be a regular file (or not exist):
  ``/dev/full``, ``/dev/stdout``, a FIFO or a socket would be read forever or block.
* ``environment_error``: the one line for an ``OSError`` the environment caused (a full disk, a
  file size limit, a read-only file system, no permission), or None for any other.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import VTWError


def strict(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (JSON has no NaN or Infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def dumps(obj: Any, **kw: Any) -> str:
    """Strict JSON text of ``obj`` (non-finite floats as null, other objects through ``str``)."""
    return json.dumps(strict(obj), allow_nan=False, default=str, **kw)


def _umask() -> int:
    """The process's umask (read without changing it where /proc tells it; else set and restored)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode(path: str | os.PathLike) -> int:
    """The permission bits a file written to ``path`` should have: the existing file's, else what
    ``open()`` would give under the umask (0o666 & ~umask), so teammates share a store as they share
    any file."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~_umask()


def atomic_write(path: str | os.PathLike, text: str) -> Path:
    """Replace ``path`` by ``text`` atomically: readers see the old or the new file, never a mix. The
    file keeps the existing file's permissions, or gets the umask's (not ``mkstemp``'s 0600)."""
    path = Path(path)
    mode = new_file_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with contextlib.suppress(OSError):
            os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return path


# -- locks --------------------------------------------------------------------------------------
_held: dict[str, list] = {}  # resolved path -> [fd, depth]


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _wait_lock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows: poll
        import time

        while not _try_lock(fd):
            time.sleep(0.05)
        return
    fcntl.flock(fd, fcntl.LOCK_EX)


@contextlib.contextmanager
def lock(path: str | os.PathLike, what: str = "file", wait: bool = False) -> Iterator[Path]:
    """Hold an exclusive lock on ``path`` (created if missing) for the block.

    ``wait=False`` refuses at once with a VTWError when another process holds the lock; ``wait=True``
    waits for it (short critical sections such as a store update).
    """
    path = Path(path)
    key = str(path.resolve())
    if key in _held:  # re-entrant within this process
        _held[key][1] += 1
        try:
            yield path
        finally:
            _held[key][1] -= 1
        return
    check_regular(path, what)  # opening a FIFO would block, a device is no file to lock
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except IsADirectoryError:
        raise VTWError(f"{path} is a directory, not a {what}") from None
    except OSError as exc:
        raise VTWError(f"cannot open {what} {path}: {exc.strerror or exc}") from None
    try:
        if wait:
            _wait_lock(fd)
        elif not _try_lock(fd):
            raise VTWError(f"{path} is in use by another vtwctl process (it holds the lock on this {what}); "
                           "wait for it to finish or pass another path")
        _held[key] = [fd, 1]
        try:
            yield path
        finally:
            del _held[key]
    finally:
        os.close(fd)  # closing the descriptor releases the lock


# -- checks before work -------------------------------------------------------------------------
# The checks try the operation (open for append, create a temporary file) rather than asking
# os.access, which says yes to root on read-only mounts and on /proc.
def _reason(exc: OSError) -> str:
    return exc.strerror or exc.__class__.__name__


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_creatable(path: Path, what: str) -> None:
    """``path`` does not exist yet: its nearest existing ancestor must be a directory we can write in."""
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise VTWError(f"cannot write {what} {path}: {base} is a file, not a directory")
    try:
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as exc:
        raise VTWError(f"cannot write {what} {path}: {base} is not writable ({_reason(exc)})") from None


def check_file_target(path: str | os.PathLike | None, what: str = "output file") -> None:
    """A file vtwctl will (over)write later must be writable now: not a directory, writable if it
    exists, and creatable (with its missing parent directories) if it does not."""
    if path is None:
        return
    p = Path(path).expanduser()
    if p.is_dir():
        raise VTWError(f"{what} {p} is a directory; give a file name")
    check_regular(p, what)
    if p.exists():
        try:
            with p.open("a"):
                pass
        except OSError as exc:
            raise VTWError(f"cannot write {what} {p}: {_reason(exc)}") from None
        return
    _check_creatable(p, what)


def check_dir_target(path: str | os.PathLike | None, what: str = "output directory") -> None:
    """A directory vtwctl will write files into later must be usable now."""
    if path is None:
        return
    p = Path(path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise VTWError(f"{what} {p} is a file, not a directory")
        try:
            with tempfile.TemporaryFile(dir=p):
                pass
        except OSError as exc:
            raise VTWError(f"cannot write into {what} {p}: {_reason(exc)}") from None
        return
    _check_creatable(p, what)


# -- special files and environment errors ---------------------------------------------------------
_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a pipe (FIFO)"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


def check_regular(path: str | os.PathLike, what: str = "file") -> None:
    """``path`` must be a regular file or not exist: a device (``/dev/full``, ``/dev/null``), a pipe
    (``/dev/stdout`` into ``| cat``) or a socket is refused with a ``VTWError`` naming it, before any
    read (``/dev/full`` and ``/dev/zero`` never end) or open (a FIFO blocks)."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # not there (yet): the callers say what is wrong with it
        return
    except OSError as exc:
        raise VTWError(f"cannot use {what} {path}: {_reason(exc)}") from None
    if stat.S_ISREG(mode):
        return
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    raise VTWError(f"{what} {path} is {kind}, not a regular file; give the path of a file")


# errno -> what the user is told to do about it
_ENVIRONMENT = {
    errno.ENOSPC: "the disk is full: free some space and run the command again",
    errno.EFBIG: "the file grew past the file size limit (ulimit -f) or the file system's",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EIO: "an input/output error from the disk or the network file system",
    errno.EMFILE: "too many open files (ulimit -n)",
    errno.ENFILE: "too many open files in the system",
}
if hasattr(errno, "EDQUOT"):
    _ENVIRONMENT[errno.EDQUOT] = "the disk quota is exhausted: free some space and run the command again"


def environment_error(exc: BaseException, doing: str | None = None) -> str | None:
    """One line for an ``OSError`` the environment caused (a full disk, a size limit, a read-only or
    unwritable place, an I/O error), naming the file when it is known; None for any other error
    (those are bugs). ``doing``: what vtwctl was doing ("writing results file X")."""
    if not isinstance(exc, OSError) or exc.errno not in _ENVIRONMENT:
        return None
    where = doing or (f"{exc.filename}" if exc.filename else None)
    cause = f"{exc.strerror or os.strerror(exc.errno)} ({_ENVIRONMENT[exc.errno]})"
    return f"{where}: {cause}" if where else cause
