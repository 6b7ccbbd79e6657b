"""Atomic writes: a temp file in the target's directory, flushed and fsynced, then renamed over it (and
the directory fsynced).

A write that fails (disk full, file-size limit, permissions) leaves no partial file and raises one
WriteError naming the file and the errno.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from foodcls.errors import WriteError


def write_error(path: str | Path, error: OSError) -> WriteError:
    code = errno.errorcode.get(error.errno, str(error.errno)) if error.errno else type(error).__name__
    reason = os.strerror(error.errno) if error.errno else str(error)
    return WriteError(f"{path}: cannot write ({reason}, {code})")


def umask() -> int:
    """The process's umask, read without changing it (os.umask can only set it, and setting it for a
    moment would race with other threads creating files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def default_mode(directory: bool = False) -> int:
    """The mode a plain open() or mkdir() would give: mkstemp and mkdtemp make 0600 / 0700 files and
    directories, which users sharing a results folder could not read."""
    return (0o777 if directory else 0o666) & ~umask()


def sync_directory(directory: str | Path) -> None:
    """fsync a directory, so that a rename in it survives a power cut (POSIX leaves it in the page cache).
    Best effort: the file is complete and in place already; some filesystems refuse a directory fsync
    (EINVAL), and a failure costs nothing but that durability."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call write(tmp_path) and move the result to `path`, so readers never see half a file; the file gets
    the mode the umask gives, and the directory is synced after the rename."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write(tmp)
        os.chmod(tmp, default_mode())
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        sync_directory(path.parent)
    except OSError as error:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise write_error(path, error) from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
