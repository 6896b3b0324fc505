"""Benchmark: Ray Train's controller poll interval, 2 s (Ray's default) against 0.2 s (aop-ray's).

    python benchmarks/report_poll.py [--pairs 2]

A worker's `ray.train.report` waits until the controller has taken its previous report (a queue of
one), and the controller looks every `RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`: every report after the first
can stall training for up to that long, and the end of a run is noticed up to that late.
`aop_ray.ray_session` sets 0.2 s unless the environment sets it. This runs the real entry point,
`python -m aop_ray.train --no-mlflow` on a local Ray, with each interval in turn (A B A B ...,
so drift of this VM's speed hits both), on two configs:
- `smoke`: the tests' 4x4 denoiser (tune_configs/sudoku4_smoke.yaml, 250 steps, a report every 25
  steps), where the wait dominates;
- `sudoku9 policy`: the headline policy config (tune_configs/sudoku9_policy.yaml on the committed
  denoiser, 150 of its steps, no validation, its own cadence: a report every 50 steps).
A first run per config, not counted, generates its data. Reported per config and interval: the
whole command's wall seconds and the median samples/s of the logging windows after the first, as
the progress line gives them; then the ratio 0.2 s / 2 s of each, paired run by run. Writes docs/results/report_poll.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from common import ROOT, header, window_rates, write_report

from aop_ray.ray_session import POLL_INTERVAL

INTERVALS = ("2", "0.2")  # Ray's default, ours
CASES = {
    "smoke": ["--config", str(ROOT / "tune_configs/sudoku4_smoke.yaml")],
    "sudoku9 policy": [
        "--config",
        str(ROOT / "tune_configs/sudoku9_policy.yaml"),
        "train.steps=150",
        "train.eval_every=0",
        f"aop.denoiser_checkpoint={ROOT / 'benchmarks/checkpoints/sudoku9'}",
    ],
}


def run(args: list[str], interval: str, workdir: str, name: str) -> tuple[float, float]:
    """(wall seconds, median samples/s after the first window) of one training run on a fresh local Ray."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {POLL_INTERVAL: interval}
    cmd = [sys.executable, "-m", "aop_ray.train", *args, f"name={name}", "--no-mlflow"]
    print("+", f"{POLL_INTERVAL}={interval}", " ".join(cmd), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
    rates = window_rates(proc.stdout)
    return seconds, statistics.median(rates[1:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=2, help="runs of each interval per config, alternating")
    args = parser.parse_args()
    rows = []
    for case, case_args in CASES.items():
        measured: dict[str, list[tuple[float, float]]] = {i: [] for i in INTERVALS}
        workdir = tempfile.mkdtemp(prefix="aop-poll-")  # one per config: its generated data serves every run
        try:
            run(case_args, "0.2", workdir, "warm-up")  # not counted: it generates the data
            for pair in range(args.pairs):
                for interval in INTERVALS:
                    measured[interval].append(run(case_args, interval, workdir, f"poll-{interval}-{pair}"))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        slow, fast = measured["2"], measured["0.2"]
        wall = [f[0] / s[0] for s, f in zip(slow, fast)]
        rate = [f[1] / s[1] for s, f in zip(slow, fast)]
        for interval in INTERVALS:
            runs = measured[interval]
            rows.append(
                f"| {case} | {interval} s | {statistics.median(r[0] for r in runs):.1f} "
                f"| {statistics.median(r[1] for r in runs):.0f} | "
                + (
                    f"{statistics.median(wall):.2f} ({min(wall):.2f}-{max(wall):.2f}) "
                    f"| {statistics.median(rate):.2f} ({min(rate):.2f}-{max(rate):.2f}) |"
                    if interval == "0.2"
                    else "1 | 1 |"
                )
            )
            print(rows[-1], flush=True)
    report = "\n".join(
        [
            *header(
                "Ray Train's poll interval: 2 s against 0.2 s", f"python benchmarks/report_poll.py --pairs {args.pairs}"
            ),
            f"- {args.pairs} runs of each interval per config, alternating; each run a fresh local Ray, MLflow off",
            "",
            "| config | poll | wall s (median) | samples/s (median window) | wall vs 2 s (range) "
            "| samples/s vs 2 s (range) |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            "wall s: the whole `python -m aop_ray.train` command, Ray's start-up and shutdown included. "
            "samples/s: the median over logging windows after the first (start-up), as the progress line "
            "reports it. Ratios are paired run by run (0.2 s run over the 2 s run beside it).",
            "",
        ]
    )
    write_report(ROOT / "docs" / "results" / "report_poll.md", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
