"""Atomic writes: a temp file in the target's directory, flushed and fsynced, then renamed over it.

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


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call write(tmp_path) and move the result to `path`, so readers never see half a file."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
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
