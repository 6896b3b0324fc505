"""Writing outputs without harming what is already there.

Every file is written under a unique temporary name beside its target and renamed into place, so a
crash or a second writer never leaves half a file. A directory that another aop-ray process is
writing is refused (an advisory lock on the directory itself, released when the process ends, even
by SIGKILL). A checkpoint only ever replaces a checkpoint. Output locations are checked for
writability before any work starts, so a long evaluation never ends in an unwritable `--out`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from aop_ray.errors import InputError


def write_atomic(path: Path, content: bytes) -> None:
    """`content` at `path`, whole or not at all; concurrent writers each rename a file of their own."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def claim(directory: Path, setting: str) -> Iterator[None]:
    """Hold output `directory` for the block: created if needed, proven writable and held by this process
    before any work starts; removed again if the block fails before writing anything into it."""
    if directory.exists() and not directory.is_dir():
        raise InputError(f"{setting}: {directory} exists and is not a directory")
    created = not directory.exists()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        raise InputError(f"{setting}: cannot write to {directory} ({err.strerror or err})") from None
    try:
        with exclusive(directory, setting):
            yield
    except BaseException:
        if created and not any(directory.iterdir()):
            directory.rmdir()
        raise


@contextlib.contextmanager
def exclusive(directory: Path, setting: str, wait: bool = False) -> Iterator[None]:
    """Hold `directory` (or any existing file used as a lock) for this process; another holder means
    refusal, or with `wait` a (short) wait for it."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise InputError(
                f"{setting}: another aop-ray process is writing {directory}; wait for it or choose another directory"
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock
