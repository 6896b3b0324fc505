"""What every command-line entry point shares: bad input is one line on stderr and exit code 2."""

from __future__ import annotations

import sys
from typing import Callable

from aop_ray.errors import InputError


def say(line: str) -> None:
    """One progress line. Not `print`: Ray Train patches it to log *and* echo, doubling every line."""
    sys.stdout.write(f"[aop-ray] {line}\n")
    sys.stdout.flush()


def run_main(body: Callable[[], object]) -> int:
    """Run a CLI body; an `InputError` (it names the file, line or key) becomes `error: ...`, exit 2."""
    try:
        body()
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
