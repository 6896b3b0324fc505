"""Make a pretrained masked LM an aop-ray denoiser checkpoint, so every command takes it.

    python -m aop_ray.wrap --model antiberty --task antibody --out benchmarks/checkpoints/antiberty
    python -m aop_ray.wrap --model hf:/models/esm2_t6_8M --task antibody --out runs/esm2

The checkpoint holds a manifest only: the task, the model's architecture and
token mapping (`config.PretrainedConfig`), where its weights are and their
sha256. The weights stay where they are; loading checks the digest.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aop_ray import checkpoints, cli
from aop_ray.cli import run_main, say
from aop_ray.config import make_task, parse_assignments
from aop_ray.models import pretrained


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("aop_ray.wrap", description="Wrap a pretrained masked LM as a denoiser checkpoint.")
    parser.add_argument(
        "--model",
        required=True,
        help="'antiberty' (pip install -e '.[antibody]'), hf:DIR (a Hugging Face masked LM) or py:MODULE:FUNCTION "
        "(FUNCTION(task) returns a module with the denoiser interface)",
    )
    parser.add_argument("--task", default="antibody", help="task name (default %(default)s)")
    parser.add_argument("--param", action="append", metavar="KEY=VALUE", help="task parameter, e.g. length=144")
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    return parser


def wrap(model: str, task_params: dict[str, object], out: str | Path) -> Path:
    """Write the denoiser checkpoint of `model` (`antiberty` or `hf:DIR`) for the task at `out`."""
    task = make_task(task_params)
    out = Path(out)
    checkpoints.check_replaceable(out, "--out")
    manifest = checkpoints.denoiser_manifest(task, pretrained.model_config(task, model), step=0)
    return checkpoints.write_checkpoint(out, manifest, {})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> None:
        task = {"name": args.task, **parse_assignments(args.param, "--param")}
        path = wrap(args.model, task, args.out)
        say(f"wrote {path} (model {args.model}, task {args.task}); weights stay where they are")

    return run_main(body, args.debug)


if __name__ == "__main__":
    sys.exit(main())
