"""Shared fixtures: tiny generated data only (tests never read ../shared/data)."""

from __future__ import annotations

import atexit
import contextlib
import importlib
import io
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
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


RAY = str(Path(sys.executable).with_name("ray"))
_SHARED_RAY: dict[str, str] = {}
_RAY_TESTS: set[str] = set()  # node ids of the tests that may start or join Ray (`ray_test`)

# The suite runs on two pytest-xdist workers (pyproject's addopts: `-n 2 --dist loadgroup`). Every test
# that starts or joins Ray is in one xdist group, so one worker runs them all, one at a time, on one
# shared cluster, while the other runs the rest: Ray commands wait on start-up, polls and subprocesses,
# and `ray stop` stops every Ray process on the machine, so two workers must never both hold a cluster.
# A test is in the group if it requests a fixture below (they run Ray commands) or is marked `ray`.
RAY_FIXTURES = {"trained"}
if os.environ.get("PYTEST_XDIST_WORKER"):  # two workers on two cores: one torch thread each
    import torch

    torch.set_num_threads(1)


@pytest.hookimpl(wrapper=True)  # around every other plugin's hook: xdist groups and `-m "not ray"` see the marks
def pytest_collection_modifyitems(items: list[pytest.Item]):
    for item in items:
        if item.get_closest_marker("ray") or RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.ray)
            item.add_marker(pytest.mark.xdist_group("ray"))
            _RAY_TESTS.add(item.nodeid)
    return (yield)


def pytest_sessionfinish(session: pytest.Session) -> None:
    stop_shared_ray()  # each xdist worker its own; atexit below is the fallback


def ray_test() -> None:
    """Refuse to start Ray from a test outside the Ray group: it would run beside the group's cluster."""
    current = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
    if os.environ.get("PYTEST_XDIST_WORKER") and not current.endswith("@ray"):  # xdist's suffix for the group
        assert current not in _RAY_TESTS, (
            f"pytest-xdist did not group {current} with the Ray tests (`--dist loadgroup`)"
        )
    assert not current or current.removesuffix("@ray") in _RAY_TESTS, (
        f"{current} starts Ray: mark it `@pytest.mark.ray`"
    )


_RAY_TOKEN = Path(tempfile.mkdtemp(prefix="aop-ray-tests-")) / "auth_token"  # this suite's cluster's token


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shared_ray() -> str:
    """The address of one Ray cluster (`ray start --head`) that the suite's commands join, as jobs join a
    real cluster: a private `ray.init` per command costs about 20 s of start-up and shutdown on 2 cores.
    Started on first use, stopped when the suite ends (or by `stop_shared_ray`)."""
    ray_test()
    if "address" not in _SHARED_RAY:
        port = free_port()
        _RAY_TOKEN.write_text(secrets.token_hex(32))
        env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"} | _ray_auth()
        head = subprocess.run(
            [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
             "--include-dashboard=false", "--disable-usage-stats"],
            env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert head.returncode == 0, head.stdout[-2000:] + head.stderr[-2000:]
        _SHARED_RAY["address"] = f"127.0.0.1:{port}"
        atexit.register(stop_shared_ray)
    return _SHARED_RAY["address"]


def stop_shared_ray() -> None:
    """Stop the shared cluster (`ray stop` stops every Ray process of this machine)."""
    if _SHARED_RAY.pop("address", None) is not None:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)


RAY_COMMANDS = {"aop_ray.train", "aop_ray.tune"}  # the entry points that start or join Ray


def cli_env(cwd: Path, ray: bool = True) -> dict[str, str]:
    """A subprocess environment with MLflow in `cwd`, joining the suite's shared Ray cluster if `ray` (only
    tests in the Ray group may: `ray_test`)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}", "PYTHONUNBUFFERED": "1"}
    return env | {"RAY_ADDRESS": shared_ray()} | _ray_auth() if ray else env


def _ray_auth() -> dict[str, str]:
    """Token authentication, as Ray 2.60 clusters have it: the cluster and its clients read one token."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(_RAY_TOKEN)}


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
        env=cli_env(cwd, ray=module in RAY_COMMANDS),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """A working directory holding the 4x4 smoke denoiser run (runs/sudoku4-smoke), shared by the suite."""
    workdir = tmp_path_factory.mktemp("train")
    # Started as a run stopped before its first write would be resumed: an empty run directory and
    # --resume, which starts it from step 0 (test_train_evaluate checks the console said so).
    (workdir / "runs" / "sudoku4-smoke").mkdir(parents=True)
    proc = run_cli("aop_ray.train", "--config", str(SMOKE), "--resume", cwd=workdir)
    (workdir / "console.txt").write_text(proc.stdout + proc.stderr)
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
