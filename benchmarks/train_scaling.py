"""Benchmark: Ray Train throughput and achieved FLOP/s, per stage and worker layout.

    python benchmarks/train_scaling.py [--steps 60] [--stage denoiser policy]   # CPU: 1 vs 2 workers
    python benchmarks/train_scaling.py --gpu --stage denoiser policy --peak-tflops 989  # one GPU

Runs the real training entry point, `python -m aop_ray.train --config CONFIG`, for each stage
(denoiser: tune_configs/sudoku9_denoiser.yaml; policy: tune_configs/sudoku9_policy.yaml on the
committed denoiser) at the config's global batch, in one invocation. On CPU the layouts are
  1 worker x 2 torch threads, 1 worker x 1 thread, 2 workers x 1 thread (gloo all-reduce);
with `--gpu`, one worker on one GPU (NCCL; `train.precision=auto`, bf16 autocast where the GPU has bf16
units). samples/s is read from each run's progress lines (the global batch over the wall time of a
logging window, all ranks); the first window holds the start-up (and the policy stage's first
trajectory decoding) and is left out.

Achieved FLOP/s = samples/s x the model FLOPs of one training sample, counted by
`torch.utils.flop_counter` on one step of the stage's own loss (forward + backward of the trained
network, the frozen denoiser's forward in the policy stage; matmuls and attention, no
recomputation). With `--peak-tflops`, MFU = achieved / peak. Writes docs/results/train_scaling.md
(docs/results/train_scaling_gpu.md with `--gpu`).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile

import torch
from common import ROOT, header, window_rates, write_report
from torch.utils import flop_counter

from aop_ray import checkpoints
from aop_ray.aop import aop_step, uniform_states
from aop_ray.config import Config, load_config
from aop_ray.losses import denoiser_loss
from aop_ray.models.denoiser import Denoiser
from aop_ray.models.policies import make_policy

CONFIGS = {"denoiser": "tune_configs/sudoku9_denoiser.yaml", "policy": "tune_configs/sudoku9_policy.yaml"}
CPU_LAYOUTS = [(1, 2), (1, 1), (2, 1)]  # (workers, torch threads per worker)
DATA = {
    "denoiser": ("data/sudoku9/train", "data/sudoku9/val"),
    "policy": ("data/sudoku9/train-unique-24-34", "data/sudoku9/val"),
}


def _attention_flops(query: torch.Size, key: torch.Size, *_: object, **__: object) -> int:
    """QK^T and AV: 2 matmuls of B*H*Lq*Lk*dh multiply-adds (CPU's fused kernel has no formula in torch)."""
    b, h, lq, dh = query
    return 2 * 2 * b * h * lq * key[-2] * dh


def _attention_backward_flops(
    grad_out: torch.Size, query: torch.Size, key: torch.Size, *_: object, **__: object
) -> int:
    return 2 * _attention_flops(query, key)  # dQ, dK, dV, dP: four matmuls of the forward's size


flop_counter.register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)(_attention_flops)
flop_counter.register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward)(
    _attention_backward_flops
)


def flops_per_sample(stage: str, cfg: Config, batch: int = 8) -> float:
    """Model FLOPs of one training sample of `stage`, counted on one step of its loss."""
    task = cfg.build_task()
    generator = torch.Generator().manual_seed(0)
    instances = task.generate(batch, seed=0, clues=30)
    x0, fixed = torch.as_tensor(instances.target).long(), torch.as_tensor(instances.fixed)
    with flop_counter.FlopCounterMode(display=False) as counter:
        if stage == "denoiser":
            denoiser_loss(
                Denoiser.for_task(task, cfg.model), x0, fixed, task.vocab_size, cfg.train.loss_weighting, generator
            ).backward()
        else:
            denoiser, _, manifest = checkpoints.load_denoiser(ROOT / cfg.aop.denoiser_checkpoint)
            denoiser.requires_grad_(False).eval()
            policy = make_policy(task, manifest["model"]["d_model"], cfg.policy)
            xt = uniform_states(x0, fixed, task.vocab_size, generator)
            aop_step(denoiser, policy, xt, x0, task.vocab_size, cfg.aop, joint=False)[0].backward()
    return counter.get_total_flops() / batch


def run(
    stage: str, cfg: Config, workers: int, threads: int, gpu: bool, steps: int, log_every: int, workdir: str
) -> list[float]:
    cpus = 1.0 if workers == 1 or gpu else 0.5  # on 2 cores, leaves Ray Data its one CPU slot
    train, val = DATA[stage]
    cmd = [
        sys.executable,
        "-m",
        "aop_ray.train",
        "--config",
        str(ROOT / CONFIGS[stage]),
        f"name=scaling-{stage}-{workers}x{threads}",
        f"train.steps={steps}",
        f"train.log_every={log_every}",
        f"train.checkpoint_every={steps}",
        f"train.eval_every={steps}",
        "train.eval_instances=1",
        f"ray.num_workers={workers}",
        f"ray.torch_threads={threads}",
        f"ray.cpus_per_worker={cpus}",
        f"ray.use_gpu={str(gpu).lower()}",
        f"train.precision={'auto' if gpu else 'fp32'}",  # auto: bf16 on a GPU with bf16 units
        f"data.train.path={ROOT / train}",
        f"data.val.path={ROOT / val}",
    ]
    if stage == "policy":  # the run's working directory is a scratch one: the config's relative path would miss
        cmd.append(f"aop.denoiser_checkpoint={ROOT / cfg.aop.denoiser_checkpoint}")
    cmd.append("--no-mlflow")
    print("+", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
    rates = window_rates(proc.stdout)
    return rates[1:]  # the first window includes start-up


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60, help="training steps per layout")
    parser.add_argument("--log-every", type=int, default=10, help="steps per measured window")
    parser.add_argument("--stage", nargs="+", choices=sorted(CONFIGS), default=["denoiser"], help="stages to run")
    parser.add_argument("--gpu", action="store_true", help="one worker on one GPU instead of the CPU layouts")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the device's peak for the run's precision (e.g. 989 for H200 bf16 dense): adds MFU",
    )
    args = parser.parse_args()
    layouts = [(1, 1)] if args.gpu else CPU_LAYOUTS
    rows = []
    for stage in args.stage:
        cfg = load_config(ROOT / CONFIGS[stage])
        flops, base = flops_per_sample(stage, cfg), None
        for workers, threads in layouts:
            workdir = tempfile.mkdtemp(prefix="aop-scaling-")
            try:
                rates = run(stage, cfg, workers, threads, args.gpu, args.steps, args.log_every, workdir)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            if not rates:
                raise SystemExit(f"{stage}: no logging window after the first; raise --steps")
            rate = statistics.median(rates)
            base = base or rate
            achieved = rate * flops / 1e12
            mfu = f"{achieved / args.peak_tflops:.1%}" if args.peak_tflops else "-"
            where = "1 GPU" if args.gpu else f"{workers} x {threads} thread(s)"
            rows.append(
                f"| {stage} | {where} | {rate:.0f} | {min(rates):.0f}-{max(rates):.0f} | {rate / base:.2f} "
                f"| {flops / 1e6:.0f} | {achieved:.3f} | {mfu} |"
            )
            print(rows[-1], flush=True)
    table = "\n".join(
        [
            "| stage | workers | samples/s (median window) | range | vs first layout | MFLOP per sample "
            "| achieved TFLOP/s | MFU |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    shown = " ".join(
        [
            "python benchmarks/train_scaling.py",
            "--gpu" if args.gpu else "",
            "--stage",
            *args.stage,
            "--steps",
            str(args.steps),
            "--log-every",
            str(args.log_every),
            *(["--peak-tflops", f"{args.peak_tflops:g}"] if args.peak_tflops else []),
        ]
    ).replace("  ", " ")
    title = "Ray Train throughput: " + ("one GPU" if args.gpu else "1 vs 2 workers, CPU")
    report = "\n".join(
        [
            *header(title, shown),
            "- configs: "
            + ", ".join(f"{stage} `{CONFIGS[stage]}`" for stage in args.stage)
            + " (global batch from the config, split over the workers), MLflow off",
            "",
            table,
            "",
            "samples/s: the global batch times the steps of a logging window over its wall time, as the "
            "progress line reports it; median over the windows after the first. MFLOP per sample: model FLOPs "
            "of one training sample counted by torch's FLOP counter on one step of the stage's loss (trained "
            "network forward + backward, frozen denoiser forward). The policy stage's windows also hold its "
            "DAgger re-decodings when `refresh_every` falls inside the run.",
            "",
        ]
    )
    write_report(ROOT / "docs" / "results" / ("train_scaling_gpu.md" if args.gpu else "train_scaling.md"), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
