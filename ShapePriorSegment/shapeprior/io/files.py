"""The checks every input file gets before a parser sees it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import InputError


def os_problem(error: OSError) -> str:
    """One line for an operating-system error met while reading a file."""
    if isinstance(error, (FileNotFoundError, NotADirectoryError)):
        return "no such file"
    if isinstance(error, IsADirectoryError):
        return "is a directory"
    if isinstance(error, PermissionError):
        return "permission denied"
    return f"cannot be read ({error.strerror or type(error).__name__})"


def readable_file(path: str | os.PathLike, max_bytes: int | None = None) -> Path:
    """``path`` if it names a regular, non-empty file this process may read, of at most
    ``max_bytes``; else :class:`InputError` naming the file and the problem."""
    path = Path(path)
    try:
        info = path.stat()
        if stat.S_ISREG(info.st_mode) and info.st_size:
            with open(path, "rb"):  # permission is only known by trying
                pass
    except OSError as error:
        raise InputError(path, os_problem(error)) from None
    if stat.S_ISDIR(info.st_mode):
        raise InputError(path, "is a directory, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise InputError(path, "is not a regular file")
    if info.st_size == 0:
        raise InputError(path, "is empty")
    if max_bytes is not None and info.st_size > max_bytes:
        raise InputError(path, f"is {info.st_size / 2**20:.0f} MiB; at most {max_bytes / 2**20:.0f} MiB is read")
    return path
