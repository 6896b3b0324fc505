"""Benchmark: bf16 against fp32 on this machine, and what the learned order costs.

    python benchmarks/precision.py train     # a denoiser trained in bf16 vs fp32, same steps (Ray Train)
    python benchmarks/precision.py quality   # every order on the 1,000 hard puzzles, bf16 vs fp32, paired
    python benchmarks/precision.py speed     # side by side: matmul peak, decode/s, train samples/s, overhead
    python benchmarks/precision.py compile   # a whole decode with the denoiser eager and under torch.compile
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
import dataclasses
import datetime
import functools
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, commit, evaluate, machine, sh, write_report

from aop_ray.allocator import keep_freed_memory

OUT = ROOT / "out" / "precision"
REPORT = ROOT / "docs" / "results" / "precision.md"
DENOISER_CONFIG = "tune_configs/sudoku9_denoiser.yaml"
PROGRESS = re.compile(r"step +(\d+)/\d+ loss=([0-9.e+-]+) samples_per_s=([0-9.e+-]+)(?: val_solve_rate=([0-9.e+-]+))?")


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
    return {"precision": precision, "seconds": seconds, "curve": curve, "first_line": first[first.find("[aop-ray]") :]}


def part_train(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="aop-precision-"))
    try:
        runs = [train_run(p, args.steps, workdir) for p in ("fp32", "bf16")]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    record("train", f"python benchmarks/precision.py train --steps {args.steps}", {"steps": args.steps, "runs": runs})


HEADLINE = "benchmarks/checkpoints/sudoku9-policy"  # the token-axis headline policy and its denoiser
HARD = "data/sudoku9/test-unique24-28-seed4"  # the hard set of docs/results/sudoku9_aop.md
ORDERS = ["random", "confidence", "margin", "entropy", "singles", "learned"]


def hard_set() -> str:
    """The 1,000 hard generated puzzles (unique, 24-28 clues, seed 4), generated once as sudoku9_aop.py does."""
    if not (ROOT / HARD).exists():
        sh(
            [
                *(sys.executable, "-m", "aop_ray.data", "generate", "--param", "size=9", "--n", "1000"),
                *("--seed", "4", "--option", "clues=[24,28]", "--option", "unique=true", "--out", HARD),
            ]
        )
    return HARD


def part_quality(args: argparse.Namespace) -> None:
    from aop_ray.paired import compare, read_outcomes

    data, runs = hard_set(), {}
    for precision in ("fp32", "bf16"):
        options = ("--precision", precision, "--no-planner-nll", "--threads", str(args.threads), "--no-mlflow")
        runs[precision] = evaluate(HEADLINE, data, ",".join(ORDERS), f"out/precision/{precision}", *options)
    rows = []
    for order in ORDERS:
        fp32, bf16 = (read_outcomes(f"{ROOT}/out/precision/{p}:{order}") for p in ("fp32", "bf16"))
        only_bf16, only_fp32, p = compare(fp32, bf16)
        rows.append(
            {
                "order": order,
                "fp32": float(fp32.solved.float().mean()),
                "bf16": float(bf16.solved.float().mean()),
                "only_bf16": only_bf16,
                "only_fp32": only_fp32,
                "mcnemar_p": p,
                "n": len(fp32.solved),
            }
        )
        print(rows[-1], flush=True)
    commands = {p: run.command for p, run in runs.items() if run is not None}
    record("quality", "python benchmarks/precision.py quality", {"evaluations": commands, "rows": rows})


def best(fn, repeats: int) -> float:
    """The fastest of `repeats` timed calls (after one warm-up): on a shared machine the minimum is the
    least disturbed measurement of the same work."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_peak(dtype, n: int = 2048) -> float:
    """GFLOP/s of one n x n matmul in `dtype`: the ceiling a model can reach in that precision here."""
    import torch

    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    return 2 * n**3 / best(lambda: a @ b, 3) / 1e9


def fixed_set_tokens(task, n: int):
    """The first `n` hard puzzles' tokens."""
    from aop_ray import data

    return data.load_instances(task, ROOT / hard_set()).tokens[:n]


def compile_gain(module, argument) -> dict:
    """Seconds of one call eager and under `torch.compile` (inductor, C++ on the CPU), and the compile time."""
    import torch

    eager = best(functools.partial(module, argument), 3)
    start = time.perf_counter()
    compiled = torch.compile(module)
    compiled(argument)
    compile_s = time.perf_counter() - start
    return {"eager_s": eager, "compiled_s": best(functools.partial(compiled, argument), 3), "compile_s": compile_s}


def train_steps(stage: str, precision: str, models: dict, batch: dict, flops: dict) -> dict:
    """samples/s of the stage's optimisation step in `precision`, and where one step's time goes."""
    import torch

    from aop_ray import precision as prec
    from aop_ray.aop import aop_step, uniform_states
    from aop_ray.losses import denoiser_loss

    cpu = torch.device("cpu")
    trained = models["denoiser"] if stage == "denoiser" else models["policy"]
    optimizer = torch.optim.AdamW(trained.parameters(), lr=1e-4)
    x0, fixed, mask = batch["x0"], batch["fixed"], models["mask"]
    phases = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}

    def step() -> None:
        g = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        with prec.autocast(precision, cpu):
            if stage == "denoiser":
                loss = denoiser_loss(models["denoiser"], x0, fixed, mask, "mean", g)
            else:
                xt = uniform_states(x0, fixed, mask, g)
                loss = aop_step(models["frozen"], models["policy"], xt, x0, mask, models["aop"], joint=False)[0]
        t1 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        optimizer.step()
        t3 = time.perf_counter()
        for name, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2)):
            phases[name] += dt

    seconds = best(step, 3)
    for name in phases:
        phases[name] /= 4  # the mean over the 4 calls (warm-up included): a profile, not the rate
    rate = len(x0) / seconds
    return {"samples_per_s": rate, "tflops": rate * flops[stage] / 1e12, "phases": phases}


def part_speed(args: argparse.Namespace) -> None:
    import torch
    from torch.utils import flop_counter

    from aop_ray import checkpoints, data
    from aop_ray.aop import aop_step, uniform_states
    from aop_ray.config import AopConfig, ModelConfig
    from aop_ray.losses import denoiser_loss
    from aop_ray.models.denoiser import Denoiser
    from aop_ray.orders import DecodeState, get_order
    from aop_ray.sampling import DEFAULT_DECODE, decode_dataset, unmask
    from aop_ray.stats import mcnemar

    sys.path.insert(0, str(ROOT / "tests"))
    from sampler_overhead import measure
    from test_policy import reference_token_axis

    torch.set_num_threads(args.threads)
    keep_freed_memory()
    results: dict = {"threads": args.threads, "puzzles": args.puzzles, "overhead_batch": args.overhead_batch}
    results["matmul_gflops"] = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print("matmul", results["matmul_gflops"], flush=True)

    denoiser, task, manifest = checkpoints.load_denoiser(ROOT / HEADLINE)
    policy = checkpoints.load_policy(ROOT / HEADLINE, task, manifest["model"], torch.device("cpu"))
    instances = data.load_instances(task, ROOT / hard_set()).take(slice(0, args.puzzles))
    tokens, fixed, target = (torch.as_tensor(a) for a in (instances.tokens, instances.fixed, instances.target))

    decode = {}
    for name in ORDERS:
        order = get_order(name, policy=policy, task=task)
        decode[name] = {}
        for precision in ("fp32", "bf16"):
            cfg = dataclasses.replace(DEFAULT_DECODE, precision=precision, batch_size=args.puzzles)
            run = functools.partial(decode_dataset, denoiser, task, tokens, fixed, target, order, cfg)
            decode[name][precision] = args.puzzles / best(run, 2)
        print("decode", name, decode[name], flush=True)
    results["decode_per_s"] = decode

    overhead, batch_tokens = {}, torch.as_tensor(fixed_set_tokens(task, args.overhead_batch))
    for name in ("confidence", "learned"):
        order = get_order(name, policy=policy, task=task)
        m = measure(denoiser, order, batch_tokens, task.vocab_size, 2, name == "learned")
        overhead[name] = {k: m[k] for k in ("rollout", "forwards", "ratio", "policy", "steps")}
        print("overhead", name, overhead[name], flush=True)
    definition = lambda state: reference_token_axis(policy, state)  # noqa: E731
    m = measure(denoiser, definition, batch_tokens, task.vocab_size, 2, True)
    overhead["learned, as defined (every concatenation built)"] = {
        k: m[k] for k in ("rollout", "forwards", "ratio", "policy", "steps")
    }
    print("overhead definition", m, flush=True)
    results["overhead"] = overhead

    fixed_set = data.load_instances(task, ROOT / hard_set()).take(slice(0, args.same))
    same_tokens = torch.as_tensor(fixed_set.tokens)
    fast = unmask(denoiser, policy, same_tokens, task.vocab_size)
    slow = unmask(denoiser, definition, same_tokens, task.vocab_size)
    same_args = [torch.as_tensor(a) for a in (fixed_set.tokens, fixed_set.fixed, fixed_set.target)]
    only_fast, only_definition, _ = mcnemar(task.solved(fast.tokens, *same_args), task.solved(slow.tokens, *same_args))
    results["same_decisions"] = {
        "puzzles": args.same,
        "identical_rollouts": int(((fast.step_of == slow.step_of) & (fast.tokens == slow.tokens)).all(1).sum()),
        "only_fast_solves": only_fast,
        "only_definition_solves": only_definition,
    }
    print("same decisions", results["same_decisions"], flush=True)

    with torch.no_grad():
        state = DecodeState(
            tokens=tokens, masked=tokens == task.vocab_size, logits=denoiser(tokens).float(), hidden=None, step=0
        )
        compiled = {"denoiser": compile_gain(denoiser, tokens), "policy": compile_gain(policy, state)}
    print("compile", compiled, flush=True)
    results["compile"] = compiled

    cfg = ModelConfig(
        **{k: manifest["model"][k] for k in ("d_model", "n_layers", "n_heads", "ff_mult", "relation_bias")}
    )
    fresh = Denoiser.for_task(task, cfg)
    frozen = denoiser.requires_grad_(False).eval()
    train_policy = checkpoints.load_policy(ROOT / HEADLINE, task, manifest["model"], torch.device("cpu")).train()
    aop = AopConfig(
        **{k: v for k, v in manifest["aop"].items() if k in {f.name for f in dataclasses.fields(AopConfig)}}
    )
    batch = {
        "x0": torch.as_tensor(instances.target[: args.train_batch]).long(),
        "fixed": torch.as_tensor(instances.fixed[: args.train_batch]),
    }
    models = {"denoiser": fresh, "frozen": frozen, "policy": train_policy, "aop": aop, "mask": task.vocab_size}
    flops = {}
    with flop_counter.FlopCounterMode(display=False) as counter:
        denoiser_loss(fresh, batch["x0"], batch["fixed"], task.vocab_size, "mean", torch.Generator()).backward()
    flops["denoiser"] = counter.get_total_flops() / args.train_batch
    with flop_counter.FlopCounterMode(display=False) as counter:
        xt = uniform_states(batch["x0"], batch["fixed"], task.vocab_size, torch.Generator())
        aop_step(frozen, train_policy, xt, batch["x0"], task.vocab_size, aop, joint=False)[0].backward()
    flops["policy"] = counter.get_total_flops() / args.train_batch
    training = {}
    for stage in ("denoiser", "policy"):
        training[stage] = {"flops_per_sample": flops[stage]}
        for precision in ("fp32", "bf16"):
            training[stage][precision] = train_steps(stage, precision, models, batch, flops)
        print("train", stage, training[stage], flush=True)
    results["training"] = training

    results["allocator"] = allocator_comparison(args)
    record("speed", f"python benchmarks/precision.py speed --threads {args.threads}", results)


def part_compile(args: argparse.Namespace) -> None:
    """A whole greedy decode (confidence, the first --overhead-batch hard puzzles) with the denoiser eager
    and under `torch.compile(dynamic=True)`, twice each: the first compiled run pays the compile, and
    decoding shrinks the batch as puzzles finish, so a fixed-shape forward says little on its own."""
    import torch

    from aop_ray import checkpoints
    from aop_ray.orders import get_order
    from aop_ray.sampling import unmask

    torch.set_num_threads(args.threads)
    keep_freed_memory()
    denoiser, task, _ = checkpoints.load_denoiser(ROOT / HEADLINE)
    tokens = torch.as_tensor(fixed_set_tokens(task, args.overhead_batch))
    order, runs = get_order("confidence"), {}
    for label, module in (("eager", denoiser), ("compiled", torch.compile(denoiser, dynamic=True))):
        runs[label] = []
        for _ in range(2):
            start = time.perf_counter()
            rollout = unmask(module, order, tokens, task.vocab_size)
            runs[label].append(time.perf_counter() - start)
        runs[label + "_tokens"] = rollout.tokens
    same = int((runs.pop("eager_tokens") == runs.pop("compiled_tokens")).all(1).sum())
    print(runs, same, flush=True)
    command = f"python benchmarks/precision.py compile --threads {args.threads} --overhead-batch {args.overhead_batch}"
    record("compile", command, {"puzzles": args.overhead_batch, "seconds": runs, "identical_rollouts": same})


FORWARD = """
import json, sys, time, torch
from aop_ray import checkpoints, data
from aop_ray.allocator import keep_freed_memory
kept = keep_freed_memory()
torch.set_num_threads({threads})
denoiser, task, _ = checkpoints.load_denoiser("{checkpoint}")
tokens = torch.as_tensor(data.load_instances(task, "{data}").tokens[:{batch}])
times = []
with torch.no_grad():
    for _ in range(4):
        start = time.perf_counter()
        denoiser(tokens)
        times.append(time.perf_counter() - start)
print(json.dumps({{"kept": kept, "forward_s": min(times[1:])}}))
"""


def allocator_comparison(args: argparse.Namespace) -> dict:
    """The denoiser's forward (batch 256) with glibc's defaults and with freed memory kept, each in its own
    process (the setting is process-wide), alternated twice so both see the same load."""
    import os

    script = FORWARD.format(threads=args.threads, checkpoint=ROOT / HEADLINE, data=ROOT / hard_set(), batch=256)
    runs: dict[str, list[float]] = {"default": [], "keep": []}
    for _ in range(2):
        for mode in runs:
            env = {**os.environ, "AOP_RAY_MALLOC": mode}
            out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
            runs[mode].append(json.loads(out.stdout.splitlines()[-1])["forward_s"])
    result = {mode: min(times) for mode, times in runs.items()}
    print("allocator", result, flush=True)
    return result


def load(part: str) -> dict | None:
    path = OUT / f"{part}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def provenance(measured: dict) -> str:
    return f"measured {measured['date']} at commit {measured['commit']}: `{measured['command']}`"


def speed_sections(speed: dict) -> list[str]:
    peak = speed["matmul_gflops"]
    lines = [
        "## Speed, fp32 against bf16, side by side",
        "",
        provenance(speed) + f", {speed['threads']} threads, the allocator keeping freed memory (the default).",
        "",
        f"A 2048 x 2048 matmul: **{peak['fp32']:.0f} GFLOP/s in fp32, {peak['bf16']:.0f} in bf16** "
        f"({peak['bf16'] / peak['fp32']:.2f}x).",
        "",
        "| order | fp32 puzzles/s | bf16 puzzles/s | bf16 / fp32 |",
        "|---|---|---|---|",
    ]
    for order, rate in speed["decode_per_s"].items():
        lines.append(f"| {order} | {rate['fp32']:.2f} | {rate['bf16']:.2f} | {rate['bf16'] / rate['fp32']:.2f} |")
    lines += [
        "",
        "Greedy decoding of the first hard puzzles in one batch, the fastest of 2 timed runs per cell.",
        "",
        "| training stage | MFLOP / sample | fp32 samples/s | bf16 samples/s | bf16 / fp32 "
        "| fp32 TFLOP/s (of matmul peak) | bf16 TFLOP/s (of matmul peak) |",
        "|---|---|---|---|---|---|---|",
    ]
    for stage, row in speed["training"].items():
        fp32, bf16 = row["fp32"], row["bf16"]
        lines.append(
            f"| {stage} | {row['flops_per_sample'] / 1e6:.0f} | {fp32['samples_per_s']:.0f} "
            f"| {bf16['samples_per_s']:.0f} "
            f"| {bf16['samples_per_s'] / fp32['samples_per_s']:.2f} "
            f"| {fp32['tflops']:.3f} ({fp32['tflops'] * 1e3 / peak['fp32']:.0%}) "
            f"| {bf16['tflops']:.3f} ({bf16['tflops'] * 1e3 / peak['bf16']:.0%}) |"
        )
    lines += [
        "",
        "One optimisation step on one process (what each Ray worker runs), the fastest of 3; the policy stage is "
        "the headline token-axis policy on the frozen committed denoiser (uniform forward-process states). "
        "FLOPs: torch's FLOP counter on one step (matmuls; forward and backward).",
        "",
        "## The learned order's cost",
        "",
        "| order | forwards | rollout s | in denoiser forwards s | in policy s | rollout / denoiser forwards |",
        "|---|---|---|---|---|---|",
    ]
    for order, m in speed["overhead"].items():
        lines.append(
            f"| {order} | {m['steps']} | {m['rollout']:.2f} | {m['forwards']:.2f} | {m['policy']:.2f} "
            f"| **{m['ratio']:.3f}** |"
        )
    same = speed["same_decisions"]
    lines += [
        "",
        "Measured as in `benchmarks/sampler_overhead.py` (every denoiser and policy call timed where it runs), "
        f"medians of 2 rollouts of the first {speed['overhead_batch']} hard puzzles in one batch. The last row "
        "runs the policy as `tests/test_policy.py` writes "
        "out its definition, every concatenation built, as the module computed it before this change.",
        "",
        f"Same decisions: on the first {same['puzzles']} hard puzzles, {same['identical_rollouts']} rollouts are "
        f"identical (every step's position and token); puzzles only the new form solves: {same['only_fast_solves']}, "
        f"only the definition: {same['only_definition_solves']}.",
        "",
        "## Where the time goes",
        "",
        "| step | part | seconds |",
        "|---|---|---|",
    ]
    learned = speed["overhead"]["learned"]
    steps = learned["steps"]
    lines.append(
        f"| decoding (one step of a batch of {speed['overhead_batch']}, the mean) | denoiser forward | "
        f"{learned['forwards'] / steps:.4f} |"
    )
    lines.append(f"| | policy forward (features, pooling, trunk) | {learned['policy'] / steps:.4f} |")
    rest = learned["rollout"] - learned["forwards"] - learned["policy"]
    lines.append(f"| | sampler bookkeeping (selection, records) | {rest / steps:.4f} |")
    for stage, row in speed["training"].items():
        for precision in ("fp32", "bf16"):
            phases = row[precision]["phases"]
            lines.append(
                f"| training, {stage} stage, {precision} | forward / backward / optimizer | "
                + " / ".join(f"{phases[k]:.4f}" for k in ("forward", "backward", "optimizer"))
                + " |"
            )
    compiled = speed["compile"]
    lines += [
        "",
        "## torch.compile",
        "",
        "| module | eager s | compiled s | speed-up | compile s |",
        "|---|---|---|---|---|",
        *(
            f"| {name} | {c['eager_s']:.4f} | {c['compiled_s']:.4f} | {c['eager_s'] / c['compiled_s']:.2f} "
            f"| {c['compile_s']:.0f} |"
            for name, c in compiled.items()
        ),
        "",
        "One forward at a fixed batch of the first hard puzzles (`--puzzles`), the fastest of 3 after the compile.",
        *compile_decode_lines(),
        "",
        "## The allocator",
        "",
        f"The denoiser's forward on 256 boards, each mode in its own process, alternated twice: glibc's defaults "
        f"{speed['allocator']['default']:.3f} s, freed memory kept {speed['allocator']['keep']:.3f} s "
        f"(**{speed['allocator']['default'] / speed['allocator']['keep']:.2f}x**).",
    ]
    return lines


def compile_decode_lines() -> list[str]:
    measured = load("compile")
    if measured is None:
        return []
    eager, compiled = measured["seconds"]["eager"], measured["seconds"]["compiled"]
    return [
        "",
        f"A whole confidence decode of {measured['puzzles']} hard puzzles ({provenance(measured)}): eager "
        f"{eager[0]:.1f} s then {eager[1]:.1f} s; with the denoiser under `torch.compile(dynamic=True)` "
        f"{compiled[0]:.1f} s (the compile included) then {compiled[1]:.1f} s; "
        f"{measured['identical_rollouts']} of {measured['puzzles']} rollouts identical.",
    ]


def quality_section(quality: dict) -> list[str]:
    lines = [
        "## Quality: every order on the 1,000 hard puzzles, bf16 against fp32",
        "",
        provenance(quality) + ". Evaluations: " + "; ".join(f"`{c}`" for c in quality["evaluations"].values()),
        "",
        "| order | fp32 solve rate | bf16 solve rate | only bf16 / only fp32 | McNemar p |",
        "|---|---|---|---|---|",
    ]
    for row in quality["rows"]:
        lines.append(
            f"| {row['order']} | {row['fp32']:.1%} | {row['bf16']:.1%} | {row['only_bf16']} / {row['only_fp32']} "
            f"| {row['mcnemar_p']:.2g} |"
        )
    return lines


def train_section(train: dict) -> list[str]:
    runs = {run["precision"]: run for run in train["runs"]}
    fp32, bf16 = runs["fp32"]["curve"], runs["bf16"]["curve"]
    lines = [
        f"## A denoiser trained in bf16 against fp32, {train['steps']} steps",
        "",
        provenance(train) + ". One worker, one thread, the denoiser config's batch (128), seed 0.",
        "",
        "| step | fp32 loss | bf16 loss | fp32 val solve rate | bf16 val solve rate |",
        "|---|---|---|---|---|",
    ]
    for a, b in zip(fp32, bf16):
        solve = lambda row: f"{row['val_solve_rate']:.3f}" if row["val_solve_rate"] is not None else ""  # noqa: E731
        lines.append(f"| {a['step']} | {a['loss']:.4f} | {b['loss']:.4f} | {solve(a)} | {solve(b)} |")
    lines += [
        "",
        f"Wall time: fp32 {runs['fp32']['seconds'] / 60:.1f} min, bf16 {runs['bf16']['seconds'] / 60:.1f} min. "
        "First lines: `" + runs["fp32"]["first_line"] + "`; `" + runs["bf16"]["first_line"] + "`.",
    ]
    return lines


def part_report(args: argparse.Namespace | None = None) -> None:
    """docs/results/precision.md from every part measured so far (its `## Notes` kept)."""
    import torch

    from aop_ray.precision import bf16_reason

    parts = {name: load(name) for name in ("speed", "quality", "train")}
    lines = [
        "# bf16, the allocator and the learned order's cost on this CPU",
        "",
        f"- machine: {machine()}",
        f"- `precision auto` here: {bf16_reason(torch.device('cpu'))[1]}",
        "- parts: `python benchmarks/precision.py speed | quality | train` (each part's own date, commit and "
        "command are given with it)",
        "",
    ]
    if parts["speed"]:
        lines += speed_sections(parts["speed"]) + [""]
    if parts["quality"]:
        lines += quality_section(parts["quality"]) + [""]
    if parts["train"]:
        lines += train_section(parts["train"]) + [""]
    write_report(REPORT, "\n".join(lines))
    print(f"wrote {REPORT}")


PARTS = {
    "train": part_train,
    "quality": part_quality,
    "speed": part_speed,
    "compile": part_compile,
    "report": part_report,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=list(PARTS))
    parser.add_argument("--steps", type=int, default=300, help="train: steps per precision (default 300)")
    parser.add_argument("--threads", type=int, default=2, help="quality, speed: torch threads (default 2)")
    parser.add_argument("--puzzles", type=int, default=64, help="speed: hard puzzles decoded per timing (default 64)")
    parser.add_argument(
        "--same", type=int, default=256, help="speed: puzzles decoded by both policy forms (default 256)"
    )
    parser.add_argument(
        "--overhead-batch", type=int, default=256, help="speed: rollout batch of the overhead ratio (default 256)"
    )
    parser.add_argument("--train-batch", type=int, default=64, help="speed: samples per training step (default 64)")
    args = parser.parse_args()
    PARTS[args.part](args)
    if args.part != "report":
        part_report()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
