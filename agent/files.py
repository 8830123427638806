"""Files read from outside and files replaced in place: the two ways a file can hurt the agent.

Reading a file named from outside (CLI, config, upload): only a regular file, only up to a limit.

A FIFO would block in `open()` until a writer comes, a device such as /dev/zero never ends, and a check by
name can be raced by a swap; so the file is opened without blocking and checked on the open descriptor.
"""

from __future__ import annotations

import os
import stat
import tempfile
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


def write_atomically(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Replace `path` so a crash leaves the old file or the new one, never half of one; keeps its mode
    and owner (the settings file may hold the broker password), or sets `mode`."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        stat = None
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            if mode is not None:
                os.fchmod(stream.fileno(), mode)
            elif stat is not None:
                os.fchmod(stream.fileno(), stat.st_mode & 0o7777)
                if os.geteuid() == 0:
                    os.fchown(stream.fileno(), stat.st_uid, stat.st_gid)
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in `folder` survive a power cut (the entry is on disk, not only the data)."""
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def bundled_sample(name: str) -> Path | None:
    """A sample file shipped with the package (agent/_samples in a wheel, samples/ in a source checkout): the
    demo's clip, and the faces a model update is checked on. None when this installation lacks it."""
    package = Path(__file__).resolve().parent
    for folder in (package / "_samples", package.parent / "samples"):
        if (folder / name).is_file():
            return folder / name
    return None
