"""Benchmark: Ray Train throughput with 1 and 2 workers on this machine (9x9 denoiser stage).

    python benchmarks/train_scaling.py [--steps 60]

Runs the real training entry point, `python -m aop_ray.train --config
tune_configs/sudoku9_denoiser.yaml`, at the same global batch with
  1 worker x 2 torch threads, 1 worker x 1 thread, 2 workers x 1 thread (gloo all-reduce),
one after another in this one invocation, and reads samples/s (the global batch over the wall
time of the logging window, all ranks) from each run's progress lines; the first window holds
the start-up and is left out. Writes benchmarks/train_scaling.md.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

from common import ROOT, header, write_report

CONFIG = "tune_configs/sudoku9_denoiser.yaml"
LAYOUTS = [(1, 2), (1, 1), (2, 1)]  # (workers, torch threads per worker)
REPORT = ROOT / "benchmarks" / "train_scaling.md"


def run(workers: int, threads: int, steps: int, log_every: int, workdir: str) -> list[float]:
    cpus = 1.0 if workers == 1 else 0.5  # leaves Ray Data its one CPU slot on 2 cores
    cmd = [sys.executable, "-m", "aop_ray.train", "--config", str(ROOT / CONFIG), f"name=scaling-{workers}x{threads}",
           f"train.steps={steps}", f"train.log_every={log_every}", f"train.checkpoint_every={steps}",
           "train.eval_instances=1", f"ray.num_workers={workers}", f"ray.torch_threads={threads}",
           f"ray.cpus_per_worker={cpus}", f"data.train.path={ROOT / 'data' / 'sudoku9' / 'train'}",
           f"data.val.path={ROOT / 'data' / 'sudoku9' / 'val'}", "--no-mlflow"]
    print("+", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
    rates = [float(m) for m in re.findall(r"\[aop-ray\] step=\d+ .*?samples_per_s=([0-9.e+]+)", proc.stdout)]
    return rates[1:]  # the first window includes start-up


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60, help="training steps per layout")
    parser.add_argument("--log-every", type=int, default=10, help="steps per measured window")
    args = parser.parse_args()
    rows, base = [], None
    for workers, threads in LAYOUTS:
        workdir = tempfile.mkdtemp(prefix="aop-scaling-")
        try:
            rates = run(workers, threads, args.steps, args.log_every, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        rate = statistics.median(rates)
        base = base or rate
        rows.append(f"| {workers} | {threads} | {rate:.0f} | {min(rates):.0f}-{max(rates):.0f} | {rate / base:.2f} |")
        print(rows[-1], flush=True)
    table = "\n".join(["| workers | threads each | samples/s (median window) | range | vs 1x2 |",
                       "|---|---|---|---|---|", *rows])
    report = "\n".join([
        *header("Ray Train throughput: 1 vs 2 workers (9x9 denoiser stage, CPU)",
                f"python benchmarks/train_scaling.py --steps {args.steps} --log-every {args.log_every}"),
        f"- config: `{CONFIG}` (global batch from the config, split over the workers), MLflow off", "",
        table, "",
        "samples/s: the global batch times the steps of a logging window over its wall time, as the "
        "progress line reports it; median over the windows after the first. No GPU was lent to this "
        "project's sessions, so there is no GPU row and no achieved FLOP/s.", ""])
    write_report(REPORT, report)
    print(f"wrote {REPORT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
