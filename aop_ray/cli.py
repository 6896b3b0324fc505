"""What every command-line entry point shares: bad input is one line on stderr and exit code 2; Ctrl-C and
SIGTERM end with one line and 130 / 143; an internal error is one line plus the file holding its traceback."""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import sys
import tempfile
import threading
import traceback
from typing import Any, Callable

from aop_ray.allocator import keep_freed_memory
from aop_ray.errors import InputError, Terminated
from aop_ray.readers import short

DEBUG_ENV = "AOP_RAY_DEBUG"


def say(line: str) -> None:
    """One progress line. Not `print`: Ray Train patches it to log *and* echo, doubling every line."""
    sys.stdout.write(f"[aop-ray] {line}\n")
    sys.stdout.flush()


def prog(module: str) -> str:
    """The command as the user typed it, for usage lines: `aop-train` from the entry point, else `python -m ...`."""
    name = os.path.basename(sys.argv[0]) if sys.argv else ""
    return name if name.startswith("aop-") else f"python -m {module}"


def parser(module: str, **kwargs: Any) -> argparse.ArgumentParser:
    """An entry point's parser: its usage names the command as typed, and it takes `--debug`."""
    result = argparse.ArgumentParser(prog=prog(module), **kwargs)
    add_debug(result)
    return result


def add_debug(parser: argparse.ArgumentParser) -> None:
    """`--debug` on `parser` (a subcommand's parser takes it too, after the subcommand)."""
    parser.add_argument(
        "--debug", action="store_true", help=f"show an internal error's full traceback (or set {DEBUG_ENV}=1)"
    )


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (a count of instances, processes, shard rows)."""
    value = int(text) if text.isascii() and text.strip().isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {short(text)}")
    return value


_terminated = threading.Event()


def terminated() -> bool:
    """Whether this process got SIGTERM: a library that turns signals into its own exit (Ray's `ray.get`
    raises `SystemExit`) hides which signal it was, and the exit code says it."""
    return _terminated.is_set()


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM stops a run as Ctrl-C does, through whatever handles Ctrl-C now: during a Ray Train fit
    that is Ray's own handler, which aborts the run gracefully (an exception raised here, inside
    Ray's C code, would surface as a `SystemError`); elsewhere Python's, raising `KeyboardInterrupt`."""
    _terminated.set()
    handler = signal.getsignal(signal.SIGINT)
    if not callable(handler):
        raise Terminated()
    handler(signal.SIGINT, frame)


def run_main(body: Callable[[], object], debug: bool = False) -> int:
    """Run a CLI body and turn how it ended into one stderr line and an exit code.

    An `InputError` (it names the file, line or key) is exit 2. Ctrl-C is 130 and SIGTERM 143, raised in
    the main thread so every `finally` runs (an MLflow run is marked KILLED, temporary files go). Any
    other exception is a bug, not the user's input: one line and the file its traceback was saved to,
    exit 1 (`debug` or `AOP_RAY_DEBUG=1` lets it propagate instead)."""
    keep_freed_memory()  # every command's tensors reuse freed memory (aop_ray/allocator.py)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        body()
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated):
        _leave_ray()
        if terminated():
            print("error: terminated (SIGTERM)", file=sys.stderr)
            return 143
        print("error: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except Exception as err:
        if debug or os.environ.get(DEBUG_ENV):
            raise
        saved = _save_traceback()
        print(
            f"error: internal error {type(err).__name__}: {' '.join(str(err).split())[:200]} (traceback: {saved}; "
            "--debug shows it)",
            file=sys.stderr,
        )
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _leave_ray() -> None:
    """Disconnect from Ray before the last line is printed. Until then the driver echoes its actors' logs,
    and as a stopped run's local cluster is torn down Ray's own `PlacementGroupCleaner` sometimes logs a
    line of its own, which would land after ours (docs/reliability.md). Ray is looked up, not imported:
    a command that never started Ray does not pay for the import."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def _save_traceback() -> str:
    """The current exception's traceback in a new file under the temporary directory; its path."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    fd, path = tempfile.mkstemp(prefix=f"aop-ray-traceback-{stamp}-", suffix=".txt")
    with os.fdopen(fd, "w") as handle:
        handle.write(" ".join(sys.argv) + "\n\n" + traceback.format_exc())
    return path
