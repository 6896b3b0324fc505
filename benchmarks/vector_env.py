"""Benchmark: the natively batched `UnmaskVectorEnv` against `SyncVectorEnv` of single `UnmaskEnv`s.

    python benchmarks/vector_env.py [--envs 64 256] [--steps 30] [--threads 2] [--device cuda]

Both run the same denoiser checkpoint on the same puzzles, side by side in one process,
with the same random legal actions, and are timed over the same number of vector steps
(after one warm-up step). The native env runs one denoiser forward for all boards per step;
the SyncVectorEnv runs one forward per board. Env steps/s = vector steps x envs / seconds.
Two denoisers: the 0.8M-parameter benchmark model (compute-bound on a CPU) and a tiny
1-layer d32 model with random weights (speed does not depend on them), where per-step
Python overhead dominates, as it does for a large model on a GPU. `--device cuda` runs every
env's denoiser on the GPU (boards and observations stay on the host).
Report: docs/results/vector_env.md (vector_env_cuda.md with `--device cuda`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import ROOT, header, sh, write_report
from gymnasium.vector import SyncVectorEnv

sys.path.insert(0, str(ROOT))
from aop_ray import checkpoints  # noqa: E402
from aop_ray.config import ModelConfig  # noqa: E402
from aop_ray.models.denoiser import Denoiser  # noqa: E402
from aop_ray.tasks import Sudoku  # noqa: E402
from envs.unmask import UnmaskEnv, UnmaskVectorEnv  # noqa: E402

CHECKPOINT = "benchmarks/checkpoints/sudoku9"
DATA = "data/sudoku9/test-unique30-seed2"


def legal_actions(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random legal position per board (0 for a finished board awaiting autoreset)."""
    scores = rng.random(mask.shape) * mask
    return scores.argmax(axis=1)


def steps_per_second(env, steps: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    obs, *_ = env.step(legal_actions(obs["action_mask"], rng))  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        obs, *_ = env.step(legal_actions(obs["action_mask"], rng))
    return steps * env.num_envs / (time.perf_counter() - start)


@torch.no_grad()
def bare_forwards_per_second(env: UnmaskVectorEnv, steps: int) -> float:
    """The floor: the same batch of boards through the bare denoiser, `steps` times (board-steps/s)."""
    env.reset(seed=0)
    batch = env.episodes.batch
    tokens = batch.tokens.to(batch.device)
    batch.denoiser(tokens)
    start = time.perf_counter()
    for _ in range(steps):
        batch.denoiser(tokens)
    if batch.device.type == "cuda":
        torch.cuda.synchronize(batch.device)
    return steps * env.num_envs / (time.perf_counter() - start)


def tiny_checkpoint(directory: str) -> str:
    task, cfg = Sudoku(9), ModelConfig(d_model=32, n_layers=1, n_heads=2, ff_mult=2)
    model = Denoiser.for_task(task, cfg)
    return str(
        checkpoints.write_checkpoint(
            Path(directory) / "tiny", checkpoints.denoiser_manifest(task, cfg), {"denoiser": model.state_dict()}
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--steps", type=int, default=30, help="timed vector steps per measurement")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default %(default)s)")
    parser.add_argument("--checkpoint", default=CHECKPOINT)
    parser.add_argument("--device", default="cpu", help="where every env's denoiser runs (default %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not (ROOT / DATA).exists():
        sh(
            [
                sys.executable,
                "-m",
                "aop_ray.data",
                "generate",
                "--param",
                "size=9",
                "--n",
                "1000",
                "--seed",
                "2",
                "--option",
                "clues=30",
                "--option",
                "unique=true",
                "--out",
                DATA,
            ]
        )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models = {
            f"`{args.checkpoint}` (0.8M)": str(ROOT / args.checkpoint),
            "tiny (1 layer, d32)": tiny_checkpoint(tmp),
        }
        for label, checkpoint in models.items():
            kwargs = {"denoiser_checkpoint": checkpoint, "data": str(ROOT / DATA), "device": args.device}
            for n in args.envs:
                native_env = UnmaskVectorEnv(n, **kwargs)
                native = steps_per_second(native_env, args.steps, seed=0)
                bare = bare_forwards_per_second(native_env, args.steps)
                sync_env = SyncVectorEnv([lambda kwargs=kwargs: UnmaskEnv(**kwargs) for _ in range(n)])
                sync = steps_per_second(sync_env, args.steps, seed=0)
                sync_env.close()
                rows.append((label, n, native, sync, bare))
                print(
                    f"{label}, {n} envs: native {native:,.0f} env steps/s, SyncVectorEnv {sync:,.0f}, "
                    f"ratio {native / sync:.1f}x; bare forwards {bare:,.0f}/s",
                    flush=True,
                )
    shown = " ".join(
        [
            "python benchmarks/vector_env.py --envs",
            *map(str, args.envs),
            "--steps",
            str(args.steps),
            "--threads",
            str(args.threads),
            *(["--device", args.device] if args.device != "cpu" else []),
        ]
    )
    lines = [
        *header(
            "Vector env: native batching against SyncVectorEnv of single envs", shown, f", denoiser on {args.device}"
        ),
        f"- 9x9 Sudoku puzzles `{DATA}`, random legal actions, "
        f"{args.steps} timed vector steps after one warm-up, {args.threads} torch threads",
        "",
        "`bare forward` is the floor: the same batch through the denoiser alone; `native / bare` near 1 "
        "means the env adds little beyond the one forward per step.",
        "",
        "| denoiser | envs | native env steps/s | SyncVectorEnv env steps/s | ratio native / sync | "
        "bare forward board-steps/s | native / bare |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {label} | {n} | {a:,.0f} | {b:,.0f} | **{a / b:.1f}x** | {c:,.0f} | {a / c:.2f} |"
        for label, n, a, b, c in rows
    ]
    report = ROOT / "docs" / "results" / ("vector_env.md" if args.device == "cpu" else f"vector_env_{args.device}.md")
    write_report(report, "\n".join(lines) + "\n")
    print(report.read_text())


if __name__ == "__main__":
    main()
