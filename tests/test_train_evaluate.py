"""End to end: a 2-worker Ray Train run of the smoke config, then the evaluate CLI on its checkpoint."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from aop_ray import checkpoints, data
from aop_ray.orders import get_order
from aop_ray.sampling import decode_dataset
from aop_ray.tasks import Sudoku

from conftest import ROOT, SMOKE, call_cli, cli_env, run_cli


def test_two_worker_run_checkpoints_and_logs(trained):
    run_dir = trained / "runs" / "sudoku4-smoke"
    final = run_dir / "final"
    model, task, manifest = checkpoints.load_denoiser(final)
    steps = yaml.safe_load(SMOKE.read_text())["train"]["steps"]
    assert task == Sudoku(4) and manifest["step"] == steps
    assert sorted(os.listdir(final)) == ["denoiser.pt", "manifest.json"]
    ray_checkpoints = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())
    assert ray_checkpoints, "Ray Train kept no periodic checkpoints"
    assert checkpoints.read_manifest(ray_checkpoints[-1])["step"] == steps
    assert (ray_checkpoints[-1] / "optimizer.pt").is_file()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{trained / 'mlflow.db'}")
    run_id = json.loads((run_dir / "aop_run.json").read_text())["mlflow_run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.steps"] == str(steps) and run.data.params["ray.num_workers"] == "2"
    loss = client.get_metric_history(run_id, "loss")
    assert [m.step for m in loss] == list(range(25, steps + 1, 25))
    assert loss[-1].value < loss[0].value
    artifacts = {a.path for a in client.list_artifacts(run_id, "checkpoint")}
    assert artifacts == {"checkpoint/denoiser.pt", "checkpoint/manifest.json"}


def test_the_denoiser_stage_continues_a_trained_denoiser(trained):
    """`aop.denoiser_checkpoint` in stage denoiser: the weights start from it (at a learning rate of 1e-12
    they stay there), its architecture replaces the config's, and the run says so."""
    source = trained / "runs" / "sudoku4-smoke" / "final"
    proc = run_cli(
        "aop_ray.train", "--config", str(SMOKE), f"aop.denoiser_checkpoint={source}", "model.d_model=64",
        "train.steps=2", "train.lr=1e-12", "train.warmup_steps=1", "train.log_every=1", "train.checkpoint_every=2",
        "train.eval_every=0", "ray.num_workers=1", "name=continued", "mlflow.enabled=false", cwd=trained,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"continuing the denoiser {source} (its step 250)" in proc.stdout
    before, _, _ = checkpoints.load_denoiser(source)
    after, _, manifest = checkpoints.load_denoiser(trained / "runs" / "continued" / "final")
    assert manifest["model"]["d_model"] == 32  # the checkpoint's, not the override's 64
    for (name, a), b in zip(before.state_dict().items(), after.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


@pytest.mark.reliability
def test_rerun_without_resume_refuses_to_touch_the_old_run(trained):
    before = sorted(p.name for p in (trained / "runs" / "sudoku4-smoke").iterdir())
    proc = call_cli("aop_ray.train", "--config", str(SMOKE), cwd=trained)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "already exists; pass --resume" in proc.stderr
    assert sorted(p.name for p in (trained / "runs" / "sudoku4-smoke").iterdir()) == before


@pytest.mark.reliability
def test_a_run_stopped_before_it_started_is_started_again_by_resume(trained):
    """A run directory without its state file (the run's first write) holds no progress: `--resume` starts
    the run from step 0 in it instead of refusing both a rerun and a resume. The suite's smoke run is
    started that way (conftest.trained), so this costs no Ray run of its own."""
    console = (trained / "console.txt").read_text()
    assert "holds no run state (stopped before it started): starting it from step 0" in console
    steps = yaml.safe_load(SMOKE.read_text())["train"]["steps"]
    assert checkpoints.read_manifest(trained / "runs" / "sudoku4-smoke" / "final")["step"] == steps


def test_an_evaluation_is_a_parent_run_with_one_child_run_per_order(trained, tmp_path):
    """MLflow's chart and compare views put runs side by side, so each order is a child run of the evaluation,
    every child with the same metric names (the reference's comparison with itself: 0/0, p = 1)."""
    task = Sudoku(4)
    data.write_shards(task.generate(12, seed=5, clues=6), task, tmp_path / "puzzles")
    env = cli_env(tmp_path)
    proc = call_cli(
        "aop_ray.evaluate",
        "--checkpoint",
        str(trained / "runs" / "sudoku4-smoke" / "final"),
        "--data",
        str(tmp_path / "puzzles"),
        "--orders",
        "random,confidence,margin",
        "--reference",
        "margin",
        "--no-planner-nll",
        "--quiet",
        "--run-name",
        "three",
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "* best solve rate; 'vs margin': instances only this order solves / only margin solves" in proc.stdout
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("aop-ray-eval")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.run_name == "three" and len(runs) == 4
    assert sorted(r.info.run_name for r in children) == ["confidence", "margin", "random"]
    names = {frozenset(r.data.metrics) for r in children}
    assert len(names) == 1 and {"solve_rate", "cell_accuracy", "mcnemar_p", "only_solved"} <= next(iter(names))
    margin = next(r for r in children if r.info.run_name == "margin")
    assert (margin.data.metrics["only_solved"], margin.data.metrics["mcnemar_p"]) == (0, 1.0)
    assert all(r.info.status == "FINISHED" for r in runs)
    assert f"MLflow run {parent.info.run_id} at {env['MLFLOW_TRACKING_URI']}" in proc.stdout
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert all(r.data.tags["mlflow.source.git.commit"] == commit.strip() for r in runs)
    dataset = client.get_run(parent.info.run_id).inputs.dataset_inputs[0]
    assert dataset.dataset.name == "puzzles" and dataset.tags[0].value == "evaluation"


def test_evaluate_cli_end_to_end(trained, tmp_path):
    task = Sudoku(4)
    puzzles = task.generate(24, seed=123, clues=6, unique=True)
    lines = ["".join("." if t == 4 else str(t + 1) for t in row) for row in puzzles.tokens]
    (tmp_path / "puzzles.txt").write_text("\n".join(lines) + "\n")
    ckpt = trained / "runs" / "sudoku4-smoke" / "final"
    proc = run_cli(
        "aop_ray.evaluate",
        "--checkpoint",
        str(ckpt),
        "--data",
        str(tmp_path / "puzzles.txt"),
        "--orders",
        "random,margin",
        "--limit",
        "20",
        "--out",
        str(tmp_path / "out"),
        "--quiet",
        "--reference",
        "margin",
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "solve_rate" in proc.stdout and "margin" in proc.stdout
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["order"] for r in rows] == ["random", "margin"]
    for row in rows:
        assert {"order", "solve_rate", "cell_accuracy", "planner_nll", "per_s", "n"} <= set(row)
        assert row["n"] == 20 and row["per_s"] > 0 and row["planner_nll"] > 0
        assert row["forwards_per_instance"] == 10  # 16 cells - 6 clues, one per forward
    # the paired columns agree with the two solve rates: only-random minus only-margin is their difference
    assert rows[1]["reference"] == "margin" and rows[1]["mcnemar_p"] is None
    assert (
        round(20 * (rows[0]["solve_rate"] - rows[1]["solve_rate"]))
        == rows[0]["only_solved"] - rows[0]["only_reference"]
    )
    assert 0 < rows[0]["mcnemar_p"] <= 1 and "vs margin" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "heatmap_margin.png",
        "heatmap_random.png",
        "results.csv",
        "results.json",
        "solved.csv",
    ]
    # solved.csv holds the per-instance outcomes behind the rows: its columns average to the solve rates,
    # and pairing the file with itself through python -m aop_ray.paired reproduces the McNemar counts
    lines = (tmp_path / "out" / "solved.csv").read_text().splitlines()
    assert lines[0] == "instance,content,random,margin" and len(lines) == 21
    flags = np.array([[int(v) for v in line.split(",")[2:]] for line in lines[1:]])
    np.testing.assert_allclose(flags.mean(0), [rows[0]["solve_rate"], rows[1]["solve_rate"]])
    paired = call_cli("aop_ray.paired", "out:margin", "out:random", cwd=tmp_path)
    assert paired.returncode == 0, paired.stderr
    assert f"{rows[0]['only_solved']}/{rows[0]['only_reference']} p={rows[0]['mcnemar_p']:.2g}" in paired.stdout
    # the CLI's numbers are the library's numbers on the same puzzles
    model, _, _ = checkpoints.load_denoiser(ckpt)
    inst = data.load_instances(task, tmp_path / "puzzles.txt").take(slice(0, 20))
    decoded = decode_dataset(
        model,
        task,
        *(torch.as_tensor(a) for a in (inst.tokens, inst.fixed, inst.target)),
        get_order("margin"),
    )
    np.testing.assert_allclose(rows[1]["solve_rate"], decoded.solved.float().mean().item())
    np.testing.assert_allclose(rows[1]["cell_accuracy"], decoded.cell_accuracy.mean().item(), rtol=1e-6)
    # the smoke model has learned something: margin beats random on cell accuracy
    assert rows[1]["cell_accuracy"] > rows[0]["cell_accuracy"]


@pytest.mark.reliability
def test_evaluate_refuses_data_for_another_board(trained, tmp_path):
    (tmp_path / "nine.txt").write_text("0" * 81 + "\n")
    ckpt = trained / "runs" / "sudoku4-smoke" / "final"
    proc = call_cli(
        "aop_ray.evaluate",
        "--checkpoint",
        str(ckpt),
        "--data",
        str(tmp_path / "nine.txt"),
        "--no-mlflow",
        "--out",
        str(tmp_path / "out"),
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {tmp_path / 'nine.txt'}:1: expected 16 cells for a 4x4 Sudoku, got 81"
    assert not (tmp_path / "out").exists()
