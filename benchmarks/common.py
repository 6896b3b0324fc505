"""What every benchmark script shares: run a command timed, describe the machine and the commit."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]


def sh(cmd: list[str]) -> float:
    """Run `cmd` from the repository root (failing loudly); returns its wall-clock seconds."""
    print("+", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    return time.perf_counter() - start


def window_rates(stdout: str) -> list[float]:
    """samples/s of every logging window of a `python -m aop_ray.train` run, as its progress lines report
    them (the first window holds the start-up)."""
    return [float(m) for m in re.findall(r"\[aop-ray\] step +\d+/\d+ .*?samples_per_s=([0-9.e+]+)", stdout)]


def versus(row: dict) -> str:
    """The paired cell of an `evaluate --reference` row: only it / only the reference, exact McNemar p."""
    if row.get("mcnemar_p") is None:
        return "-"
    return f"{row['only_solved']} / {row['only_reference']}, p = {row['mcnemar_p']:.2g}"


def machine() -> str:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    mem = (
        int(next(ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")))
        / 2**20
    )
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{os.cpu_count()} x {cpu}, {mem:.0f} GiB RAM, {gpu}, torch {torch.__version__}, "
        f"Python {platform.python_version()}"
    )


def commit() -> str:
    """The short commit hash, marked when tracked files differ from it."""
    head = (
        subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        or "uncommitted"
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return head + (" (with uncommitted changes)" if dirty else "")


class Evaluation(NamedTuple):
    rows: list[dict]
    command: str  # as a reader would type it
    seconds: float
    commit: str  # the commit it ran at

    def line(self) -> str:
        return f"`{self.command}` ({self.seconds / 60:.1f} min, at commit {self.commit})"


def fingerprint(path: Path) -> str:
    """A short content hash of a checkpoint directory (or file), so that reuse keys on what was evaluated."""
    digest = hashlib.sha256()
    for file in sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file()):
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


def evaluate(
    checkpoint: str, data: str, orders: str, out: str, *options: str, reuse: bool = False, run: bool = True
) -> Evaluation | None:
    """One `python -m aop_ray.evaluate` run into `out` (relative to the root). With `reuse`, an earlier
    run of the same command (threads aside: they change the speed, not the results) is read back
    instead; with `run=False` nothing new is run, and None says there was no such earlier run."""
    cmd = [
        sys.executable,
        "-m",
        "aop_ray.evaluate",
        "--checkpoint",
        checkpoint,
        "--data",
        data,
        "--orders",
        orders,
        "--out",
        out,
        "--run-name",
        f"benchmark-{Path(out).parent.name}-{Path(out).name}",
        "--quiet",
        *options,
    ]
    shown = " ".join(["python" if c == sys.executable else c for c in cmd]).replace(str(ROOT.parent), "..")
    threads = cmd.index("--threads") if "--threads" in cmd else None
    same = " ".join(c for i, c in enumerate(cmd[1:], 1) if threads is None or i not in (threads, threads + 1))
    same += f" @{fingerprint(ROOT / checkpoint)}"  # a checkpoint replaced in place must not reuse old results
    record = ROOT / out / "command.json"
    earlier = json.loads(record.read_text()) if reuse and record.is_file() else None
    if earlier is not None and earlier["same"] == same:
        return Evaluation(
            json.loads((ROOT / out / "results.json").read_text()),
            earlier["command"],
            earlier["seconds"],
            earlier["commit"],
        )
    if not run:
        return None
    evaluated = commit()
    seconds = sh(cmd)
    record.write_text(json.dumps({"command": shown, "same": same, "seconds": seconds, "commit": evaluated}))
    return Evaluation(json.loads((ROOT / out / "results.json").read_text()), shown, seconds, evaluated)


def reuse_arguments(doc: str, out: str) -> argparse.Namespace:
    """The command line of a report script that evaluates into `out`: only `--reuse`."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--reuse", action="store_true", help=f"read back evaluations already in {out}/ that used the same command"
    )
    return parser.parse_args()


def describe_model(manifest: dict) -> str:
    m = manifest["model"]
    return f"{m['n_layers']} layers, d{m['d_model']}, {m['n_heads']} heads, {manifest.get('step')} steps"


def header(title: str, command: str, machine_note: str = "") -> list[str]:
    """The lines every measured report opens with: what ran, where, when, at which commit."""
    import datetime

    return [
        f"# {title}",
        "",
        f"- date: {datetime.datetime.now():%Y-%m-%d %H:%M}",
        f"- machine: {machine()}{machine_note}",
        f"- commit: {commit()}",
        f"- command: `{command}`",
    ]


NOTES = "## Notes"


def write_report(path: Path, text: str) -> None:
    """Write a generated report, keeping its hand-written `## Notes` section (the reading of the numbers)
    from the previous version: a rerun refreshes the measurements without erasing the analysis."""
    old = path.read_text() if path.is_file() else ""
    notes = old[old.index(NOTES) :] if NOTES in old else ""
    path.write_text(text.rstrip("\n") + "\n\n" + notes if notes else text)
