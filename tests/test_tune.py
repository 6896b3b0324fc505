"""Tune sweeps and the MLflow report: config validation, the summary math, and a real interrupted and
resumed smoke sweep (2 orders x 2 seeds on 4x4) whose MLflow runs the report reads back."""

from __future__ import annotations

import csv
import json
import math
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from aop_ray.config import SweepConfig, load_config
from aop_ray.errors import InputError
from aop_ray.report import summarize
from aop_ray.tune import group_label

from conftest import ROOT, call_cli, cli_env, run_cli

pytestmark = pytest.mark.ray

SMOKE_SWEEP = ROOT / "tune_configs" / "smoke.yaml"


@pytest.mark.reliability
def test_sweep_config_refusals_name_the_key(tmp_path):
    def load(*overrides, search=None):
        path = tmp_path / "sweep.yaml"
        path.write_text(SMOKE_SWEEP.read_text() + (f"search: {json.dumps(search)}\n" if search else ""))
        return load_config(path, list(overrides), cls=SweepConfig)

    assert load().orders == ["margin", "learned"]
    assert load().evaluate.threshold is None and load("evaluate.threshold=0.99").evaluate.threshold == 0.99
    for overrides, message in [
        (["seedz=[1]"], "seedz: unknown key"),
        (["seeds=[1,1]"], "seeds: needs at least one seed and no repeats"),
        (["resources.eval_cpus=-1"], "resources.eval_cpus: must be > 0"),
        (
            (["orders=[learned]"], {"train.lr": {"loguniform": [0.1, 0.01]}}),
            "search.train.lr.loguniform: expected [low, high]",
        ),
        ((["orders=[learned]"], {"train.lr": {"grid": [0.1], "choice": [0.1]}}), "search.train.lr: give exactly one"),
        (([], {"train.lr": {"grid": [0.1]}}), "search: hyper-parameters apply to learned trials only"),
        ((["orders=[learned]"], {"train.lr": {"grid": [0.1], "gird": [1]}}), "search.train.lr.gird: unknown key"),
        (["scheduler.type=asha"], "scheduler.type: asha stops trials early"),
        (["orders=[learned]", "train_config=null"], "train_config: order 'learned' needs"),
        (["evaluate.k=0"], "evaluate.k: must be >= 1, got 0"),
        (["evaluate.threshold=0"], "evaluate.threshold: a probability in (0, 1], got 0"),
    ]:
        overrides, search = overrides if isinstance(overrides, tuple) else (overrides, None)
        with pytest.raises(InputError) as err:
            load(*overrides, search=search)
        assert message in str(err.value), (overrides, str(err.value))


def test_search_config_builds_asha_and_checks_its_reports():
    """The shipped search: ASHA on a metric present in every report, max_t leaving room for the final evaluation."""
    from ray.tune.schedulers import ASHAScheduler

    from aop_ray.tune import _check_scheduler_metric, _scheduler, expected_trials

    spec = load_config(ROOT / "tune_configs" / "sudoku9_policy_search.yaml", cls=SweepConfig)
    scheduler = _scheduler(spec)
    assert isinstance(scheduler, ASHAScheduler) and scheduler.metric == "val_solve_rate"
    assert expected_trials(spec) == 16
    cfg = load_config(ROOT / spec.train_config, spec.train_overrides)
    _check_scheduler_metric(spec, cfg)  # 12 reports + 1 final = max_t 13
    spec.scheduler.max_t = 12
    with pytest.raises(InputError, match="scheduler.max_t: a trial reports 12 times"):
        _check_scheduler_metric(spec, cfg)
    cfg.train.eval_every = 0
    with pytest.raises(InputError, match="scheduler.metric: val_solve_rate is reported only at evaluations"):
        _check_scheduler_metric(spec, cfg)


def test_concurrency_fits_the_cluster():
    from aop_ray.tune import fit_concurrency

    assert fit_concurrency(8, 0.75, 2.0) == 2
    assert fit_concurrency(8, 1.0, 4.0) == 4
    assert fit_concurrency(2, 0.5, 16.0) == 2
    with pytest.raises(InputError, match="resources: one trial reserves 2.25 CPUs, but the cluster has 2"):
        fit_concurrency(2, 2.25, 2.0)


def test_group_label_names_searched_values():
    assert group_label("margin", {}) == "margin"
    assert (
        group_label("learned", {"train.lr": 0.000312345, "aop.states": "uniform"})
        == "learned states:uniform lr:0.000312"
    )


def test_summarize_mean_std_over_seeds_exactly():
    records = [
        {"order": "margin", "group": "margin", "seed": s, "n": 100, "solve_rate": 0.5, "cell_accuracy": 0.9}
        for s in (0, 1)
    ]
    records += [
        {"order": "learned", "group": "learned", "seed": s, "n": 100, "solve_rate": v, "cell_accuracy": 0.8}
        for s, v in ((1, 0.6), (0, 0.4), (2, 0.5))
    ]
    records += [{"order": "random", "group": "random", "seed": 0, "n": 100, "solve_rate": 0.1}]
    rows = summarize(records)
    assert [r["group"] for r in rows] == ["random", "margin", "learned"]  # heuristics first, learned last
    random, margin, learned = rows
    assert learned["n_seeds"] == 3 and learned["seeds"] == "0 1 2"
    assert learned["solve_rate_mean"] == pytest.approx(0.5)
    assert learned["solve_rate_std"] == pytest.approx(0.1)  # sample std (ddof 1) of 0.4, 0.5, 0.6
    assert margin["solve_rate_std"] == 0.0
    assert math.isnan(random["solve_rate_std"])  # one seed: no spread, not a fake zero
    assert "cell_accuracy_mean" not in random
    assert margin["eval_se"] == pytest.approx(0.05)  # sqrt(0.5 * 0.5 / 100)


@pytest.mark.reliability
def test_tune_cli_refusals_are_one_line(tmp_path):
    for argv, message in [
        ([], "give --config FILE to start a sweep or --resume PATH"),
        (["--resume", str(tmp_path)], "aop_sweep.json not found"),
        (["--config", str(SMOKE_SWEEP), "ordrs=[margin]"], "ordrs: unknown key"),
        (
            ["--config", str(SMOKE_SWEEP), "orders=[best]", f"denoiser_checkpoint={tmp_path}", "denoiser_config=null"],
            "denoiser_checkpoint: no checkpoint at",
        ),
    ]:
        proc = call_cli("aop_ray.tune", *argv, cwd=tmp_path)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert message in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr
    proc = call_cli(
        "aop_ray.report",
        "--experiment",
        "nothing-here",
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    )
    assert proc.returncode == 2 and "no experiment 'nothing-here'" in proc.stderr


# ----------------------------------------------------------------------------- the real sweep
def _mlflow_runs(workdir: Path, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000)


@pytest.fixture(scope="module")
def sweep(trained) -> dict:
    """The smoke sweep, interrupted (SIGINT) once a learned trial is training, then resumed to the end."""
    workdir = trained  # it holds the 4x4 smoke denoiser at runs/sudoku4-smoke/final
    sweep_dir = workdir / "runs" / "tune" / "smoke"
    # The config's references to its training configs resolve against the config file, not the working
    # directory. Two trials at a time (the config's): interrupted once a trial has finished and a learned
    # trial has started training.
    proc = subprocess.Popen(
        [sys.executable, "-m", "aop_ray.tune", "--config", str(SMOKE_SWEEP)],
        cwd=workdir,
        env=cli_env(workdir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if list(sweep_dir.glob("train/*/aop_run.json")) and list(sweep_dir.glob("evaluations/*/results.json")):
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    first_out = proc.communicate(timeout=300)[0]
    state = json.loads(sorted(sweep_dir.glob("experiment_state-*.json"))[-1].read_text())
    terminated = [
        t["trial_id"] for t in (json.loads(entry[0]) for entry in state["trial_data"]) if t["status"] == "TERMINATED"
    ]  # what Tune itself recorded as finished at the interrupt
    before = {
        trial_id: (sweep_dir / "evaluations" / trial_id / "results.json").stat().st_mtime_ns for trial_id in terminated
    }
    resumed = run_cli("aop_ray.tune", "--resume", str(sweep_dir), cwd=workdir, timeout=600)
    return {
        "workdir": workdir,
        "dir": sweep_dir,
        "first": (proc.returncode, first_out),
        "before": before,
        "resumed": resumed,
    }


@pytest.mark.reliability
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(sweep):
    rc, out = sweep["first"]
    assert rc == 130, out[-3000:]
    assert f"python -m aop_ray.tune --resume {sweep['dir']}" in out
    assert sweep["before"], "no trial finished before the interrupt"
    resumed = sweep["resumed"]
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    after = {p.parent.name: p.stat().st_mtime_ns for p in sweep["dir"].glob("evaluations/*/results.json")}
    assert len(after) == 4
    for trial_id, mtime in sweep["before"].items():  # finished before the interrupt: not run again
        assert after[trial_id] == mtime


def test_every_trial_is_one_finished_mlflow_run_with_artifacts(sweep):
    from mlflow.tracking import MlflowClient

    runs = _mlflow_runs(sweep["workdir"], "aop-ray-smoke")
    parents = [r for r in runs if r.data.tags.get("aop_ray.role") == "sweep"]
    trials = [r for r in runs if r.data.tags.get("aop_ray.role") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.tags["aop_ray.trial_id"] for r in trials) == sorted(
        p.name for p in sweep["dir"].glob("evaluations/*")
    )  # one run per trial: no duplicates after the resume
    assert {r.info.status for r in trials} == {"FINISHED"}
    assert sorted((r.data.tags["aop_ray.order"], r.data.params["seed"]) for r in trials) == [
        ("learned", "0"),
        ("learned", "1"),
        ("margin", "0"),
        ("margin", "1"),
    ]
    client = MlflowClient(f"sqlite:///{sweep['workdir'] / 'mlflow.db'}")
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        files = [a.path for a in client.list_artifacts(run.info.run_id, "evaluation")]
        assert f"evaluation/heatmap_{run.data.tags['aop_ray.order']}.png" in files
        assert 0.0 <= run.data.metrics["solve_rate"] <= 1.0
        if run.data.tags["aop_ray.order"] == "learned":  # curves from the Train workers, and the checkpoint
            assert "loss" in run.data.metrics and Path(run.data.tags["aop_ray.checkpoint"]).is_dir()
            assert len(client.get_metric_history(run.info.run_id, "loss")) >= 2
    summary = [a.path for a in client.list_artifacts(parents[0].info.run_id, "summary")]
    assert {"summary/summary.csv", "summary/summary.png", "summary/summary.md"} <= set(summary)


def test_report_rebuilds_the_table_from_mlflow(sweep, tmp_path):
    """The report's mean/std per order equal those of Tune's own per-trial result files."""
    by_order: dict[str, list[float]] = {}
    for result_file in sweep["dir"].glob("*/result.json"):
        last = json.loads(result_file.read_text().strip().splitlines()[-1])
        by_order.setdefault(last["order"], []).append(last["solve_rate"])
    assert sorted(by_order) == ["learned", "margin"] and all(len(v) == 2 for v in by_order.values())
    out = tmp_path / "report"
    proc = run_cli(
        "aop_ray.report", "--experiment", "aop-ray-smoke", "--out", str(out), cwd=sweep["workdir"], timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "| margin | 2 |" in proc.stdout and "| learned | 2 |" in proc.stdout
    rows = {r["group"]: r for r in csv.DictReader((out / "summary.csv").open())}
    for order, values in by_order.items():
        assert float(rows[order]["solve_rate_mean"]) == pytest.approx(np.mean(values))
        assert float(rows[order]["solve_rate_std"]) == pytest.approx(np.std(values, ddof=1))
    assert (out / "summary.png").read_bytes()[:4] == b"\x89PNG"
    driver_csv = (sweep["dir"] / "summary" / "summary.csv").read_text()
    assert (out / "summary.csv").read_text() == driver_csv  # the sweep's own summary, rebuilt from MLflow alone


def test_mlflow_ui_serves_one_run_per_trial_and_the_pngs(sweep):
    """What the browser gets from `mlflow ui`: the page, the runs with comparable metrics, the heat maps."""
    import socket
    import urllib.parse
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "ui",
            "--backend-store-uri",
            f"sqlite:///{sweep['workdir'] / 'mlflow.db'}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",  # the default 4 server processes take about 20 s to start on 2 cores
        ],
        cwd=sweep["workdir"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"

    def get(endpoint: str, **query: str) -> bytes:
        with urllib.request.urlopen(f"{base}{endpoint}?{urllib.parse.urlencode(query)}", timeout=30) as response:
            return response.read()

    try:
        deadline = time.time() + 90
        while True:
            try:
                get("/health")
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "mlflow ui did not start"
                time.sleep(1)
        assert b"<html" in get("/").lower()
        exp = json.loads(get("/api/2.0/mlflow/experiments/get-by-name", experiment_name="aop-ray-smoke"))
        request = urllib.request.Request(
            f"{base}/api/2.0/mlflow/runs/search",
            method="POST",
            data=json.dumps({"experiment_ids": [exp["experiment"]["experiment_id"]], "max_results": 100}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            runs = json.loads(response.read())["runs"]
        trials = [r for r in runs if {"key": "aop_ray.role", "value": "trial"} in r["data"]["tags"]]
        assert len(trials) == 4
        for run in trials:  # the same metric on every run: comparable side by side
            assert "solve_rate" in {m["key"] for m in run["data"]["metrics"]}
        run_id = trials[0]["info"]["run_id"]
        files = json.loads(get("/api/2.0/mlflow/artifacts/list", run_id=run_id, path="evaluation"))["files"]
        png = next(f["path"] for f in files if f["path"].endswith(".png"))
        assert get("/get-artifact", path=png, run_uuid=run_id)[:4] == b"\x89PNG"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_sweep_state_round_trips_through_json_and_refuses_other_files(tmp_path):
    from aop_ray.tune import SweepState

    spec = load_config(ROOT / "tune_configs" / "sudoku9_orders.yaml", cls=SweepConfig)
    train = load_config(spec.train_config)
    state = SweepState(
        spec=spec,
        sweep_dir="/s/d",
        denoiser="/d",
        tracking_uri=None,
        train_config=train,
        concurrency=2,
        eval_data="/e",
        oracle=None,
        parent_run_id="abc",
    )
    again = SweepState.from_json(state.to_json(), "aop_sweep.json")
    assert again == state and again.to_json() == state.to_json()
    for text, message in (
        ("[1, 2]", "aop_sweep.json: not this version's sweep state (config: expected a mapping"),
        ("{", "aop_sweep.json:1: not a sweep state"),
        ('{"config": {}}', "aop_sweep.json: not this version's sweep state (config: unknown key"),
    ):
        with pytest.raises(InputError, match=re.escape(message)):
            SweepState.from_json(text, "aop_sweep.json")
