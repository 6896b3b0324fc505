"""Where outputs may go (never into Ray's copy of a job's working directory), and the pipeline's `ray.*` keys."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aop_ray import locations
from aop_ray.config import PipelineConfig, load_config
from aop_ray.errors import InputError
from aop_ray.training.loop import Progress, format_duration, worker_rows

from conftest import ROOT, call_cli

COPY = "/tmp/ray/session_1/runtime_resources/working_dir_files/_ray_pkg_ab12"


def test_working_copy_root_finds_rays_copy_and_nothing_else():
    assert locations.working_copy_root(f"{COPY}/runs/x") == Path(COPY)
    assert locations.working_copy_root(COPY) == Path(COPY)
    assert locations.working_copy_root("/shared/runs/working_dir_files/_ray_pkg_ab12") is None  # no runtime_resources
    assert locations.working_copy_root("/home/me/aop-ray/runs") is None


def test_outputs_inside_the_copy_are_refused_naming_the_setting(monkeypatch):
    monkeypatch.chdir("/")
    locations.check_durable("ray.storage_path", "/shared/runs")
    locations.check_durable("ray.storage_path", "s3://bucket/runs")
    with pytest.raises(
        InputError,
        match=r"^ray.storage_path: '/tmp/ray/.*' is inside Ray's temporary copy.*"
        r"set ray.storage_path to an absolute path",
    ):
        locations.check_durable("ray.storage_path", f"{COPY}/runs")
    locations.check_tracking_uri("http://mlflow.internal:5000")
    locations.check_tracking_uri("sqlite:////shared/mlflow.db")
    with pytest.raises(InputError, match="^MLFLOW_TRACKING_URI: .*--no-mlflow"):
        locations.check_tracking_uri(f"sqlite:///{COPY}/mlflow.db")


def test_a_relative_default_inside_the_copy_is_refused(tmp_path, monkeypatch):
    copy = tmp_path / "runtime_resources" / "working_dir_files" / "_ray_pkg_1"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    with pytest.raises(InputError, match="^--out: 'results' is inside"):
        locations.check_durable("--out", "results")
    with pytest.raises(InputError, match="^MLFLOW_TRACKING_URI"):
        locations.check_tracking_uri("mlruns")


def test_on_this_node_moves_a_path_into_this_process_copy(monkeypatch):
    here = Path("/tmp/ray-node2/session_1/runtime_resources/working_dir_files/_ray_pkg_ab12")
    monkeypatch.setattr(locations, "__file__", str(here / "aop_ray" / "locations.py"))
    assert locations.on_this_node(f"{COPY}/benchmarks/checkpoints/sudoku9") == here / "benchmarks/checkpoints/sudoku9"
    assert locations.on_this_node("/shared/denoiser") == Path("/shared/denoiser")


def test_worker_rows_are_equal_contiguous_slices():
    columns = {"fixed": np.arange(10)[:, None] % 2 == 0, "target": np.arange(10)[:, None]}
    rows = [worker_rows(columns, rank, 3, 2)["target"].flatten().tolist() for rank in range(3)]
    assert rows == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    with pytest.raises(InputError, match="a worker's shard holds 3 instances, fewer than one batch of 4"):
        worker_rows(columns, 0, 3, 4)


def test_progress_line_has_step_total_and_eta():
    assert [format_duration(s) for s in (0, 61.4, 3723, float("nan"))] == ["0:00", "1:01", "1:02:03", "-"]
    progress = Progress(100, 300)
    progress.started -= 10.0  # 10 s for the first 100 steps of this process: 20 s left for 200
    line = progress.line(200, {"loss": 0.5, "samples_per_s": 64.0, "lr": 1e-3})
    assert line == "step 200/300 loss=0.5 samples_per_s=64 eta 0:10"
    validated = {"loss": 0.5, "val_solve_rate": 1.0, "val_cell_accuracy": 0.45}
    assert Progress(0, 10).line(10, validated).startswith("step 10/10 loss=0.5 val_solve_rate=1 val_cell_accuracy=0.45")
    # no verifier (a protein is "solved" once complete): the line leaves the solve rate out
    assert Progress(0, 10, verified=False).line(10, validated).startswith("step 10/10 loss=0.5 val_cell_accuracy=0.45")


def test_the_pipeline_applies_its_ray_keys_to_every_stage():
    pipeline = load_config(
        ROOT / "tune_configs" / "quick.yaml",
        ["ray.storage_path=/shared/runs", "ray.placement_strategy=STRICT_SPREAD"],
        cls=PipelineConfig,
    )
    stage = pipeline.stage(load_config(ROOT / "tune_configs" / "sudoku9_policy.yaml"))
    assert (stage.ray.storage_path, stage.ray.placement_strategy, stage.ray.num_workers) == (
        "/shared/runs",
        "STRICT_SPREAD",
        2,
    )


def test_the_pipeline_refuses_a_bad_ray_key_in_one_line(tmp_path):
    for override, message in (
        ("ray.storage_pth=/x", "ray.storage_pth: unknown key"),
        ("ray.num_workers=0", "ray.num_workers: must be > 0"),
        ("ray.placement_strategy=WIDE", "ray.placement_strategy: must be one of"),
    ):
        proc = call_cli("aop_ray.train", "--quick", override, cwd=ROOT)
        assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def test_config_references_resolve_against_the_file_and_committed_inputs_from_the_project(tmp_path, monkeypatch):
    """Commands work from any directory: a sweep's training configs sit beside it, a committed checkpoint is found
    from the project, an override stays relative to the working directory."""
    from aop_ray.config import SweepConfig

    monkeypatch.chdir(tmp_path)
    spec = load_config(ROOT / "tune_configs" / "sudoku9_orders.yaml", cls=SweepConfig)
    assert spec.train_config == str(ROOT / "tune_configs" / "sudoku9_policy.yaml")
    assert spec.denoiser_checkpoint == str(ROOT / "benchmarks" / "checkpoints" / "sudoku9")
    spec = load_config(ROOT / "tune_configs" / "sudoku9_orders.yaml", ["denoiser_checkpoint=mine"], cls=SweepConfig)
    assert spec.denoiser_checkpoint == "mine"  # not in the working directory nor the project: left as given
    (tmp_path / "benchmarks" / "checkpoints" / "sudoku9").mkdir(parents=True)
    spec = load_config(ROOT / "tune_configs" / "sudoku9_orders.yaml", cls=SweepConfig)
    assert spec.denoiser_checkpoint == "benchmarks/checkpoints/sudoku9"  # the working directory's comes first


def test_quick_pipeline_loads_from_another_directory(tmp_path, monkeypatch):
    from aop_ray.train import QUICK_PIPELINE

    monkeypatch.chdir(tmp_path)
    pipeline = load_config(QUICK_PIPELINE, cls=PipelineConfig)
    assert Path(pipeline.policy_config) == ROOT / "tune_configs" / "sudoku9_policy.yaml"
    assert load_config(pipeline.policy_config).aop.denoiser_checkpoint == str(ROOT / "benchmarks/checkpoints/sudoku9")
