"""Injected faults on real Ray runs: a SIGKILLed Train worker, a SIGKILLed driver, a corrupted checkpoint.

Each faulty run is the smoke denoiser config of the `trained` fixture under
another name, so that uninterrupted run (same config, same seed) is the
reference its final metrics are compared with.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_aop_train import metric_history

from aop_ray import checkpoints

from conftest import ROOT, SMOKE, call_cli, cli_env, run_cli

pytestmark = pytest.mark.reliability
STEPS = 250  # the smoke config's
FAST = ["train.checkpoint_every=25", "train.log_every=25"]  # cadence only: the same training math as the reference


def _titled(title: bytes) -> list[int]:
    """PIDs whose command line starts with `title` (Linux /proc): the suite runs one Ray job at a time,
    so every `ray::RayTrainWorker` on the machine is the run's."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(title):
                pids.append(int(entry.name))
        except OSError:  # the process ended while we looked
            continue
    return pids


def _registered(run_dir: Path) -> list[dict]:
    """The checkpoints Ray Train has registered (a directory alone may still be half-reported), oldest first."""
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return []
    return snapshot.get("checkpoint_results", [])


def _start(workdir: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "aop_ray.train", "--config", str(SMOKE), *args],
        cwd=workdir,
        env=cli_env(workdir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_checkpoints(proc: subprocess.Popen, run_dir: Path, n: int) -> list[dict]:
    deadline = time.monotonic() + 300
    while len(_registered(run_dir)) < n and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None and len(_registered(run_dir)) >= n, "the run ended (or stalled) before the fault"
    return _registered(run_dir)


def _resumed_at(output: str) -> list[int]:
    return [int(line.rsplit(" ", 1)[1]) for line in output.splitlines() if "resumed from checkpoint at step" in line]


def _assert_finished_like_the_reference(workdir: Path, name: str) -> None:
    """Every step's loss is logged once, and the end matches the uninterrupted run within noise."""
    assert checkpoints.read_manifest(workdir / "runs" / name / "final")["step"] == STEPS
    steps = [m.step for m in metric_history(workdir, name, "loss")]
    assert sorted(steps) == list(range(25, STEPS + 1, 25)), steps  # every step once: no gap, no repeat
    # Batches, noise and initial weights are functions of (seed, rank, step), so the resumed run is the
    # uninterrupted one up to float reduction order: the same training loss and validation accuracy.
    for key in ("loss", "val_cell_accuracy"):
        ours = metric_history(workdir, name, key)[-1]
        reference = metric_history(workdir, "sudoku4-smoke", key)[-1]
        assert ours.step == reference.step == STEPS
        assert ours.value == pytest.approx(reference.value, rel=1e-3, abs=1e-4), key


def test_a_run_survives_a_killed_driver_a_corrupted_checkpoint_sigterm_and_a_killed_worker(trained):
    """One run, four faults (one scenario keeps CI to three Ray runs):

    1. the driver is SIGKILLed after two checkpoints, and the newest checkpoint is then truncated;
    2. rerunning is refused without --resume, and with --resume but a changed value;
    3. with --resume the corrupted file is named and the run continues from the checkpoint before
       it, until SIGTERM stops it: one line, exit 143, its MLflow run KILLED (Ray Train's graceful
       abort, the path Ctrl-C takes too);
    4. resumed again, one of its two Train workers is SIGKILLed, and Ray restarts the group from the
       last checkpoint.
    It must end exactly where the uninterrupted run of the same seed ended, in the same MLflow run
    (FINISHED), with every step logged once and at most `train.checkpoint_keep` checkpoints left.
    """
    name = "faults"
    args = [f"name={name}", *FAST, "ray.max_failures=1"]
    run_dir = trained / "runs" / name
    proc = _start(trained, *args)
    try:
        _wait_for_checkpoints(proc, run_dir, 2)
        proc.send_signal(signal.SIGKILL)  # Ray ends a job's actors when its driver dies
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 60
    while _titled(b"ray::RayTrainWorker") and time.monotonic() < deadline:  # let the workers die
        time.sleep(0.5)
    older, newest = _registered(run_dir)[-2:]
    weights = run_dir / newest["checkpoint_dir_name"] / "denoiser.pt"
    weights.write_bytes(weights.read_bytes()[:100])

    env = cli_env(trained)  # refusals: in this process, they end before any Ray or compute
    again = call_cli("aop_ray.train", "--config", str(SMOKE), *args, cwd=trained, env=env)
    assert again.returncode == 2 and "already exists; pass --resume" in again.stderr
    changed = call_cli(
        "aop_ray.train", "--config", str(SMOKE), *args, "train.lr=0.01", "--resume", cwd=trained, env=env
    )
    assert changed.returncode == 2 and changed.stderr.strip().count("\n") == 0
    assert "--resume: train.lr is 0.01 but the run was started with 0.003" in changed.stderr

    proc = _start(trained, *args, "--resume")
    try:
        _wait_until_past(proc, run_dir, newest["metrics"]["step"])
        proc.send_signal(signal.SIGTERM)
        stopped, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stopped[-4000:]
    # The last line is ours and no aop-ray frame failed: the CLI leaves Ray before printing it, so what Ray's
    # PlacementGroupCleaner logs as the local cluster goes down comes before it (docs/reliability.md).
    assert stopped.strip().splitlines()[-1] == "error: terminated (SIGTERM)" and "aop_ray/" not in stopped
    assert f"stopped; continue from the last checkpoint with --resume ({run_dir})" in stopped
    assert f"{weights}: truncated or corrupted checkpoint" in stopped
    assert _resumed_at(stopped) == [older["metrics"]["step"]], stopped[-4000:]
    assert _run_status(trained, name) == "KILLED"

    stopped_at = max((c["metrics"]["step"] for c in _registered(run_dir)), default=-1)
    proc = _start(trained, *args, "--resume")
    try:
        killed_at = _wait_until_past(proc, run_dir, stopped_at)
        workers = _titled(b"ray::RayTrainWorker")
        assert len(workers) == 2, "the resumed run ended (or stalled) before the kill"
        os.kill(workers[0], signal.SIGKILL)
        output, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-4000:]
    resumed = _resumed_at(output)
    assert len(resumed) == 2 and killed_at <= resumed[1] < STEPS, output[-4000:]
    _assert_finished_like_the_reference(trained, name)
    assert _run_status(trained, name) == "FINISHED"
    assert len(list(run_dir.glob("checkpoint_*"))) <= 2


def _wait_until_past(proc: subprocess.Popen, run_dir: Path, step: int) -> int:
    """Wait until a checkpoint after `step` is registered; its step. (Ray rewrites its snapshot while a run
    starts: an unreadable or empty snapshot just means "not yet".)"""

    def newest() -> int:
        return max((c["metrics"]["step"] for c in _registered(run_dir)), default=-1)

    deadline = time.monotonic() + 300
    while newest() <= step and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None and newest() > step, "the run ended (or stalled) before the fault"
    return newest()


def _run_status(workdir: Path, name: str) -> str:
    from mlflow.tracking import MlflowClient

    run_id = json.loads((workdir / "runs" / name / "aop_run.json").read_text())["mlflow_run_id"]
    return MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").get_run(run_id).info.status


def test_ctrl_c_stops_an_evaluation_with_its_mlflow_run_killed_and_nothing_written(tmp_path):
    from mlflow.tracking import MlflowClient

    data = run_cli(
        "aop_ray.data",
        "generate",
        "--param",
        "size=9",
        "--n",
        "2000",
        "--option",
        "clues=30",
        "--out",
        str(tmp_path / "puzzles"),
        cwd=tmp_path,
        timeout=300,
    )
    assert data.returncode == 0, data.stderr
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aop_ray.evaluate",
            "--checkpoint",
            str(ROOT / "benchmarks/checkpoints/sudoku9"),
            "--data",
            str(tmp_path / "puzzles"),
            "--orders",
            "random,margin",
            "--out",
            str(tmp_path / "out"),
        ],
        cwd=tmp_path,
        env=cli_env(tmp_path, ray=False),  # an evaluation needs no Ray
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    try:
        deadline = time.monotonic() + 120
        while not _running_runs(store) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)  # the parent run opens once the inputs are read, just before decoding
        time.sleep(1)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "error: interrupted (Ctrl-C)", err[-3000:]
    assert "Traceback" not in err and not (tmp_path / "out").exists()
    client = MlflowClient(store)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "KILLED"


def _running_runs(store: str) -> list:
    from aop_ray.tracking import client_for  # takes the store's lock: never races the evaluation creating it

    if not Path(store.removeprefix("sqlite:///")).exists():
        return []
    try:
        client = client_for(store)
        return client.search_runs([e.experiment_id for e in client.search_experiments()], "status = 'RUNNING'")
    except Exception:  # the store is still being created by the evaluation
        return []
