"""Benchmark: bf16 against fp32 on this machine, and what the learned order costs.

    python benchmarks/precision.py train     # a denoiser trained in bf16 vs fp32, same steps (Ray Train)
    python benchmarks/precision.py quality   # every order on the 1,000 hard puzzles, bf16 vs fp32, paired
    python benchmarks/precision.py speed     # side by side: matmul peak, decode/s, train samples/s, overhead
    python benchmarks/precision.py report    # only rewrite the report from the parts measured so far

Each part writes its measurements (with date, machine, command and commit) to out/precision/<part>.json,
then docs/results/precision.md is rebuilt from every part measured so far: the parts take from 5 to 40
minutes on 2 cores and are run apart (`speed` on an otherwise idle machine; `quality` does not time).

- `train`: `python -m aop_ray.train --config tune_configs/sudoku9_denoiser.yaml` for the same steps and
  seed in each precision, one worker on one thread (the comparison, not the recipe): the loss curve from
  the progress lines and the validation solve rate (margin order, 200 unique 30-clue puzzles).
- `quality`: `python -m aop_ray.evaluate` on the committed headline checkpoint (token-axis policy and its
  denoiser) with every order, once per precision; per order the paired counts (puzzles only one
  precision solves) and the exact McNemar p.
- `speed`: in one process, alternating the precisions each repeat so both see the same load: a
  2048x2048 matmul (the peak), the denoiser forward, a whole greedy decode per order (puzzles/s), one
  training step per stage (samples/s, and achieved TFLOP/s from torch's FLOP counter), and the learned
  order's overhead over the denoiser alone, measured like the heuristics' (benchmarks/sampler_overhead.py).
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, commit, machine

OUT = ROOT / "out" / "precision"
REPORT = ROOT / "docs" / "results" / "precision.md"
DENOISER_CONFIG = "tune_configs/sudoku9_denoiser.yaml"
PROGRESS = re.compile(r"step (\d+)/\d+ loss=([0-9.e+-]+) samples_per_s=([0-9.e+-]+)(?: val_solve_rate=([0-9.e+-]+))?")


def record(part: str, command: str, results: dict) -> None:
    """out/precision/<part>.json: the measurements with where, when and at which commit they were taken."""
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"date": f"{datetime.datetime.now():%Y-%m-%d %H:%M}", "machine": machine(), "commit": commit()}
    (OUT / f"{part}.json").write_text(json.dumps({**meta, "command": command, **results}, indent=1))


def train_run(precision: str, steps: int, workdir: Path) -> dict:
    """One denoiser training run in `precision`; its progress lines parsed into curves."""
    cmd = [
        sys.executable,
        "-m",
        "aop_ray.train",
        "--config",
        str(ROOT / DENOISER_CONFIG),
        f"name=precision-{precision}",
        f"train.steps={steps}",
        f"train.precision={precision}",
        "train.log_every=25",
        f"train.checkpoint_every={steps}",
        f"train.eval_every={steps // 2}",
        "ray.num_workers=1",
        "ray.cpus_per_worker=1",
        "ray.torch_threads=1",
        f"ray.storage_path={workdir}",
        f"data.train.path={ROOT / 'data/sudoku9/train'}",
        f"data.val.path={ROOT / 'data/sudoku9/val'}",
        "--no-mlflow",
    ]
    print("+", " ".join(cmd), flush=True)
    start = datetime.datetime.now()
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
    seconds = (datetime.datetime.now() - start).total_seconds()
    curve = [
        {"step": int(s), "loss": float(loss), "samples_per_s": float(rate), "val_solve_rate": float(v) if v else None}
        for s, loss, rate, v in PROGRESS.findall(proc.stdout)
    ]
    first = next((ln for ln in proc.stdout.splitlines() if "worker(s) on" in ln), "")
    return {"precision": precision, "seconds": seconds, "curve": curve, "first_line": first.strip()}


def part_train(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="aop-precision-"))
    try:
        runs = [train_run(p, args.steps, workdir) for p in ("fp32", "bf16")]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    record("train", f"python benchmarks/precision.py train --steps {args.steps}", {"steps": args.steps, "runs": runs})


PARTS = {"train": part_train}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=[*PARTS, "report"])
    parser.add_argument("--steps", type=int, default=300, help="train: steps per precision (default 300)")
    args = parser.parse_args()
    if args.part in PARTS:
        PARTS[args.part](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
