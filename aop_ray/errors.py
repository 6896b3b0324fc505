"""The error every entry point turns into one line: bad user input, named by file and line or by key."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad user input (a file, a config key, a CLI argument).

    The message always names where the problem is (file and line, or key), so
    command-line entry points print it as one line and exit non-zero.
    """


def located(path: str | Path, line: int | None, message: str) -> InputError:
    """An `InputError` whose message starts with `file:line:`."""
    where = f"{path}:{line}" if line is not None else f"{path}"
    return InputError(f"{where}: {message}")


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like `KeyboardInterrupt` so that cleanup runs the same way.

    A `BaseException`, as `KeyboardInterrupt` is, so no `except Exception` swallows it."""
