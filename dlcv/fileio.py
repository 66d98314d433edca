"""Atomic file writes: a reader never sees half a checkpoint, CSV or cache, even if the writer is killed; a replace
interrupted by a kill is completed (or rolled back) by the next writer or reader (recover)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

log = logging.getLogger(__name__)
LEGACY_TMP_AGE_S = 24 * 3600  # temporaries named without their writer's PID are removed only when this old


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it (rename is atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def listing(names: list[str], most: int = 5) -> str:
    """The first `most` names, then how many more: for a message that says what a folder holds."""
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def check_file_target(path: str | os.PathLike, option: str = "--out") -> Path:
    """Refuse, before any work, a file destination that is a folder or lies under a file (one line naming the fix)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{option} {path} is a folder; give a file path, e.g. {path / 'predictions.csv'}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"{option} {path}: {parent} is a file, not a folder; choose another path")
            break
    return path


def describe_os_error(err: OSError) -> str:
    """One line for an OSError: our own messages as they are, the system's as '<path>: <reason>'."""
    if err.errno is None or err.strerror is None:
        return str(err)
    where = f"{err.filename} -> {err.filename2}" if err.filename2 else str(err.filename or "")
    return f"{where}: {err.strerror.lower()}; check the path and its permissions" if where else err.strerror


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """atomic_write_bytes for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: object, path: str | os.PathLike) -> None:
    """torch.save through atomic_write_bytes (resume state: optimizers, step, RNG)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (a lock or temporary file's owner)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another account's process
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def recover(path: str | os.PathLike) -> None:
    """Finish what a killed writer of `path` left: a complete new copy (`.<name>.new-PID`) replaces `path`; with no
    new copy and no `path`, the previous one (`.<name>.old-PID`) is put back; half-written temporaries
    (`.<name>.tmp-PID-*`) are removed. Only leftovers of dead processes are touched, so it is safe to call from
    every writer and reader; errors (a read-only folder) are logged, never raised."""
    path = Path(path)
    prefix = f".{path.name}."
    try:
        names = [n for n in os.listdir(path.parent) if n.startswith(prefix)]
    except OSError:
        return
    found: dict[str, list[Path]] = {"new": [], "old": [], "tmp": []}
    for name in names:
        rest = name[len(prefix):]
        match = re.fullmatch(r"(new|old|tmp)-(\d+)(?:-\w+)?", rest)
        if match and not pid_alive(int(match[2])):
            found[match[1]].append(path.parent / name)
        elif re.fullmatch(r"[a-z0-9_]{8}\.tmp", rest):  # mkdtemp/mkstemp names of earlier versions: no PID
            with contextlib.suppress(OSError):
                if time.time() - os.lstat(path.parent / name).st_mtime > LEGACY_TMP_AGE_S:
                    found["tmp"].append(path.parent / name)
    if not any(found.values()):
        return
    newest = lambda paths: max(paths, key=lambda p: p.lstat().st_mtime_ns)  # noqa: E731
    try:
        if found["new"]:  # killed after the copy was complete: complete the replace
            new = newest(found["new"])
            found["new"].remove(new)
            if path.exists() or path.is_symlink():
                aside = path.with_name(f"{prefix}old-{os.getpid()}-recover")
                os.replace(path, aside)
                found["old"].append(aside)
            os.replace(new, path)
            log.warning("completed an interrupted replace of %s", path)
        elif found["old"] and not (path.exists() or path.is_symlink()):  # killed between the renames: roll back
            old = newest(found["old"])
            found["old"].remove(old)
            os.replace(old, path)
            log.warning("restored %s from an interrupted replace", path)
    except OSError as err:
        log.warning("could not recover %s (%s); its leftovers are kept", path, err)
        return
    for leftover in found["new"] + found["old"] + found["tmp"]:
        _remove(leftover)


def _give_normal_modes(folder: Path) -> None:
    """Files and folders as open()/mkdir would make them (umask applied): some writers (mkstemp, safetensors)
    create 0600 files that a web server or grader running as another account could not read."""
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask)  # mkdtemp makes 0700
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it replaces `path` whole, on error it is removed.

    The swap is: tmp -> `.<name>.new-PID` (complete), path -> `.<name>.old-PID`, new -> path, remove old; a kill at
    any point leaves names that recover() completes or rolls back, so one of the two copies always survives.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover(path)
    pid = os.getpid()
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{pid}-", dir=path.parent))
    try:
        yield tmp
        _give_normal_modes(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    new = path.with_name(f".{path.name}.new-{pid}")
    _remove(new)
    os.replace(tmp, new)
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{pid}")
        _remove(old)
        os.replace(path, old)
    os.replace(new, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
