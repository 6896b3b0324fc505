"""The main job: denoiser -> AOP policy -> `learned` against every heuristic and rule.

`python -m aop_ray.train` with no `--config` runs `tune_configs/main.yaml` through here
(`--quick` runs `tune_configs/quick.yaml`). Each stage is an ordinary training run, so the
pipeline adds no training logic of its own: it chains `train.run` calls and hands the final
policy checkpoint to `evaluate.run_evaluation`, which prints the table and logs it, with the
heat maps, to MLflow (a parent run, one child run per order).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from aop_ray import checkpoints, data
from aop_ray.cli import say
from aop_ray.config import DecodeConfig, PipelineConfig, load_config
from aop_ray.errors import InputError
from aop_ray.evaluate import Evaluation, run_evaluation
from aop_ray.locations import check_durable, check_tracking_uri
from aop_ray.orders import order_names
from aop_ray.tracking import resolve_uri
from aop_ray.training.driver import run


def run_pipeline(cfg: PipelineConfig, mlflow: bool = True, stamp: str | None = None) -> list[dict]:
    """Run every stage; returns the evaluation rows (the `results.json` content)."""
    started = time.perf_counter()
    prefix = f"{cfg.name}-{stamp or time.strftime('%Y%m%d-%H%M%S')}"
    common = [f"mlflow.experiment={cfg.experiment}"]
    # Load every stage config before any compute, so a typo in the last one costs nothing.
    policy_cfg = cfg.stage(
        load_config(
            cfg.policy_config,
            [*cfg.policy_overrides, *common, f"name={prefix}-policy", "aop.denoiser_checkpoint=pending"],
        )
    )  # set after stage 1
    denoiser_cfg = cfg.stage(
        load_config(cfg.denoiser_config, [*cfg.denoiser_overrides, *common, f"name={prefix}-denoiser"])
    )
    if denoiser_cfg.task != policy_cfg.task:
        raise InputError(
            f"{cfg.policy_config}: task {policy_cfg.task} differs from {cfg.denoiser_config}'s {denoiser_cfg.task}"
        )
    # Every output place is checked before any compute: a job must not lose its results at the end.
    check_durable("ray.storage_path", policy_cfg.ray.storage_path)
    if mlflow:
        check_tracking_uri(resolve_uri(policy_cfg.mlflow.tracking_uri))
    denoiser = cfg.denoiser_checkpoint
    if denoiser and (Path(denoiser) / checkpoints.MANIFEST).is_file():
        say(f"stage 1/3: using the denoiser checkpoint {denoiser}")
    else:
        say(
            f"stage 1/3: training the denoiser ({cfg.denoiser_config}"
            + (f"; no checkpoint at {denoiser}" if denoiser else "")
            + ")"
        )
        denoiser = str(run(denoiser_cfg, mlflow=mlflow))
    say(f"stage 2/3: training the policy ({cfg.policy_config}) on {denoiser}")
    policy_cfg = dataclasses.replace(policy_cfg, aop=dataclasses.replace(policy_cfg.aop, denoiser_checkpoint=denoiser))
    policy = run(policy_cfg, mlflow=mlflow)

    task = policy_cfg.build_task()
    data_path = data.dataset_path(cfg.evaluate.data, task, "evaluate")
    orders = cfg.evaluate.orders or order_names(task)
    out = Path(policy_cfg.ray.storage_path).expanduser().resolve() / f"{prefix}-evaluate"
    say(f"stage 3/3: evaluating {', '.join(orders)} on {data_path}")
    decode = {field.name: getattr(cfg.evaluate, field.name) for field in dataclasses.fields(DecodeConfig)}
    rows = run_evaluation(
        Evaluation(
            checkpoint=str(policy),
            data=str(data_path),
            orders=",".join(orders),
            out=str(out),
            experiment=cfg.experiment,
            run_name=f"{prefix}-evaluate",
            reference="learned" if "learned" in orders else None,  # each row: paired against the policy
            threads=cfg.evaluate.threads,
            mlflow=mlflow,
            **decode,
        )
    )
    say(f"pipeline done in {(time.perf_counter() - started) / 60:.1f} min: policy {policy}, table {out}")
    return rows


def load_pipeline(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    return load_config(path, overrides, cls=PipelineConfig)
