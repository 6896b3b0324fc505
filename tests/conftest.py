"""Shared fixtures: tiny generated data only (tests never read ../shared/data)."""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from aop_ray.tasks import Sudoku


@pytest.fixture(scope="session")
def sudoku4() -> Sudoku:
    return Sudoku(4)


@pytest.fixture(scope="session")
def sudoku9() -> Sudoku:
    return Sudoku(9)


ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "tune_configs" / "sudoku4_smoke.yaml"


def cli_env(cwd: Path) -> dict[str, str]:
    """A subprocess environment with MLflow in `cwd` and a private local Ray."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    return env


def call_cli(module: str, *args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m module args` run in this process: the same `main`, exit code and streams, without the
    few seconds of interpreter and import start-up a subprocess costs. For the many refusal tests,
    which end before any compute; runs that start Ray use `run_cli`."""
    out, err = io.StringIO(), io.StringIO()
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = importlib.import_module(module).main(list(args))
            except SystemExit as exit_:  # argparse
                code = exit_.code
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess([module, *args], code, out.getvalue(), err.getvalue())


def run_cli(module: str, *args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=cli_env(cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """A working directory holding the 4x4 smoke denoiser run (runs/sudoku4-smoke), shared by the suite."""
    workdir = tmp_path_factory.mktemp("train")
    proc = run_cli("aop_ray.train", "--config", str(SMOKE), cwd=workdir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # Tests that compare orders need a denoiser past the loss plateau: say so here, not as a puzzling 0 == 0 later.
    solved = [float(v) for v in re.findall(r"val_solve_rate=([0-9.]+)", proc.stdout + proc.stderr)]
    assert solved and solved[-1] >= 0.5, f"the smoke denoiser did not learn (val_solve_rate {solved})"
    # A successful run's console is clean: no traceback, no Ray error line, one progress line per report.
    console = proc.stdout + proc.stderr
    assert "Traceback" not in console and not re.search(r"\d E \d+ \d+\]", console), console[-3000:]
    steps = yaml.safe_load(SMOKE.read_text())["train"]["steps"]
    assert console.count(f"step {steps}/{steps} ") == 1, console[-3000:]
    return workdir
