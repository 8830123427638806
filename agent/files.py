"""Reading a file named from outside (CLI, config, upload): only a regular file, only up to a limit.

A FIFO would block in `open()` until a writer comes, a device such as /dev/zero never ends, and a check by
name can be raced by a swap; so the file is opened without blocking and checked on the open descriptor.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class FileRefused(Exception):
    """Why the file was not read, in words for a one-line error (without the path: callers add it)."""


def read_regular_file(path: Path, limit: int) -> bytes:
    """The bytes of `path` if it is a regular file of at most `limit` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise FileRefused(f"cannot read file: {exc.strerror or exc}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileRefused("not a regular file")
        if info.st_size > limit:
            raise FileRefused(f"{info.st_size} bytes, over the {limit} byte limit")
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise FileRefused(f"cannot read file: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    if len(data) > limit:
        raise FileRefused(f"grew over the {limit} byte limit while it was read")
    return data
