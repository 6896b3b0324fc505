"""Training entry point: `python -m aop_ray.train --config FILE [dotted.key=value ...]`, or the main job.

This module only parses and dispatches: one stage goes to `training.driver.run`, the main job
(no `--config`) to `pipeline.run_pipeline`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from aop_ray import cli
from aop_ray.cli import run_main
from aop_ray.config import load_config, shipped
from aop_ray.errors import InputError
from aop_ray.pipeline import load_pipeline, run_pipeline
from aop_ray.training.driver import run

MAIN_PIPELINE = shipped("tune_configs/main.yaml")
QUICK_PIPELINE = shipped("tune_configs/quick.yaml")


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser(
        "aop_ray.train",
        description="Train aop-ray models on Ray Train. With no --config, run the main job: the pipeline "
        f"{MAIN_PIPELINE} (denoiser, or its committed checkpoint -> AOP policy -> evaluation of "
        "'learned' against every heuristic and rule). With --config, run one training stage from "
        "a YAML config (see tune_configs/ and docs/configs.md). Overrides are dotted.key=value.",
        epilog="examples: python -m aop_ray.train --quick | python -m aop_ray.train --config "
        "tune_configs/sudoku9_denoiser.yaml train.steps=200 name=quick",
    )
    parser.add_argument(
        "--config", default=None, help="YAML config of one training stage (validated: unknown keys are errors)"
    )
    parser.add_argument(
        "--pipeline", default=None, help=f"YAML pipeline config to run instead of the main job's {MAIN_PIPELINE}"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"run the 1-2 minute preset pipeline {QUICK_PIPELINE} (a smoke test of the main job)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="dotted.key=value",
        help="override a config value, e.g. train.lr=3e-4 ray.num_workers=1 (or, for a "
        "pipeline, e.g. denoiser_checkpoint=PATH evaluate.limit=100)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run <ray.storage_path>/<name> of --config from its last checkpoint "
        "(without it an existing run directory is an error, never overwritten)",
    )
    parser.add_argument(
        "--no-mlflow",
        action="store_true",
        help="do not log to MLflow (default: log to $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)",
    )
    return parser


def _dispatch(args: argparse.Namespace) -> Any:
    if args.config:
        if args.quick or args.pipeline:
            raise InputError("--config runs one stage; --quick and --pipeline run a pipeline: give one of them")
        return run(load_config(args.config, args.overrides), resume=args.resume, mlflow=not args.no_mlflow)
    if args.resume:
        raise InputError("--resume continues one stage: give its --config (the pipeline starts fresh runs)")
    if args.quick and args.pipeline:
        raise InputError("--quick is a preset pipeline: give --quick or --pipeline, not both")
    path = args.pipeline or (QUICK_PIPELINE if args.quick else MAIN_PIPELINE)
    return run_pipeline(load_pipeline(path, args.overrides), mlflow=not args.no_mlflow)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(lambda: _dispatch(args), args.debug)


if __name__ == "__main__":
    sys.exit(main())
