"""What every command-line entry point shares: bad input is one line on stderr and exit code 2."""

from __future__ import annotations

import os
import sys
from typing import Callable

from aop_ray.errors import InputError


def say(line: str) -> None:
    """One progress line. Not `print`: Ray Train patches it to log *and* echo, doubling every line."""
    sys.stdout.write(f"[aop-ray] {line}\n")
    sys.stdout.flush()


def prog(module: str) -> str:
    """The command as the user typed it, for usage lines: `aop-train` from the entry point, else `python -m ...`."""
    name = os.path.basename(sys.argv[0]) if sys.argv else ""
    return name if name.startswith("aop-") else f"python -m {module}"


def run_main(body: Callable[[], object]) -> int:
    """Run a CLI body; an `InputError` (it names the file, line or key) becomes `error: ...`, exit 2."""
    try:
        body()
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
