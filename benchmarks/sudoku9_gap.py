"""Sudoku: what is left of the gap between the learned order and the `singles` rule, and why (issue 29, item 3).

Decodes the hard set (1,000 unique 24-28-clue puzzles, seed 4) with the committed headline policy
(`benchmarks/checkpoints/sudoku9-policy`, generic features only) and with `singles` (naked and hidden singles
first, then margin), greedy argmax, one cell per denoiser forward. Every wrong digit ends a puzzle (the
solution is unique), so a puzzle is lost at the *first* wrong reveal. For each puzzle one order solves and
the other does not, the script takes the state just before the loser's first wrong digit (every earlier
reveal is right, so it is the teacher-forced state of that step) and asks what was on offer there:

- `forced right`: a cell forced by a naked or hidden single where the denoiser's argmax is the right digit;
- `forced wrong`: forced cells exist, but the denoiser's argmax is wrong at every one of them;
- `no forced cell`: no naked or hidden single at all (where `singles` is margin).

and whether the digit the loser wrote was already illegal (it repeats a digit of the cell's row, column or
box): a mistake that the filled cells alone expose.

    python benchmarks/sudoku9_gap.py [--limit N]    # writes docs/results/sudoku9_gap.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, header, write_report  # noqa: E402

from aop_ray import checkpoints  # noqa: E402
from aop_ray.data import ensure_dataset, load_instances  # noqa: E402
from aop_ray.orders import DecodeState, get_order  # noqa: E402
from aop_ray.sampling import Rollout, teacher_forced_state, unmask  # noqa: E402
from aop_ray.tasks import Sudoku  # noqa: E402

POLICY = "benchmarks/checkpoints/sudoku9-policy"
DATA = "data/sudoku9/test-unique24-28-seed4"
REPORT = ROOT / "docs" / "results" / "sudoku9_gap.md"
MASK = 9


def decode(denoiser: torch.nn.Module, order, tokens: torch.Tensor, batch: int = 128) -> Rollout:
    parts = [unmask(denoiser, order, tokens[lo : lo + batch], MASK) for lo in range(0, len(tokens), batch)]
    return Rollout(
        tokens=torch.cat([p.tokens for p in parts]),
        step_of=torch.cat([p.step_of for p in parts]),
        logp_token=torch.cat([p.logp_token for p in parts]),
        logp_target=None,
        steps=max(p.steps for p in parts),
    )


def first_mistakes(rollout: Rollout, target: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(step, cell) of each row's first wrong reveal."""
    wrong = (rollout.tokens[rows] != target[rows]) & (rollout.step_of[rows] >= 0)
    steps = torch.where(wrong, rollout.step_of[rows], torch.iinfo(torch.long).max)
    step, cell = steps.min(dim=1)
    return step, cell


def analyse(
    task: Sudoku,
    denoiser: torch.nn.Module,
    loser: Rollout,
    loser_order,
    tokens: torch.Tensor,
    target: torch.Tensor,
    rows: torch.Tensor,
) -> dict[str, float]:
    """Counts of what the state before the loser's first wrong digit offered (module docstring)."""
    step, cell = first_mistakes(loser, target, rows)
    states = teacher_forced_state(tokens[rows], loser.step_of[rows], target[rows], step)
    with torch.no_grad():
        logits = denoiser(states).float()
    legal, hidden = task.constraint_state(states)
    forced = ((legal.sum(-1) == 1) | hidden) & (states == MASK)
    right = logits.argmax(-1) == target[rows]
    index = torch.arange(len(rows))
    written = loser.tokens[rows, cell]
    picked_forced = forced[index, cell]
    illegal = ~legal[index, cell, written]
    forced_right = (forced & right).any(1)
    forced_any = forced.any(1)
    state = DecodeState(tokens=states, masked=states == MASK, logits=logits, hidden=None, step=0)
    with torch.no_grad():
        scores = loser_order(state).float().masked_fill(states != MASK, float("-inf"))
    # rank (0 = first) of the best-scored forced cell the denoiser has right, where there is one
    best_forced = scores.masked_fill(~(forced & right), float("-inf")).amax(1)
    rank = (scores > best_forced[:, None]).sum(1)
    n = len(rows)
    return {
        "n": n,
        "forced right": int(forced_right.sum()),
        "forced wrong": int((forced_any & ~forced_right).sum()),
        "no forced cell": int((~forced_any).sum()),
        "picked a forced cell": int(picked_forced.sum()),
        "wrote an illegal digit": int(illegal.sum()),
        "median rank of a right forced cell": float(rank[forced_right].float().median())
        if forced_right.any()
        else float("nan"),
        "free cells at that state (median)": float((states == MASK).sum(1).float().median()),
        "step (median)": float(step.float().median()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="the first N puzzles only (a quick look)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    task = Sudoku(size=9)
    ensure_dataset(task, ROOT / DATA, 1000, 4, {"clues": [24, 28], "unique": True})
    inst = load_instances(task, ROOT / DATA)
    tokens, target = torch.as_tensor(inst.tokens), torch.as_tensor(inst.target)
    if args.limit:
        tokens, target = tokens[: args.limit], target[: args.limit]
    denoiser, _, manifest = checkpoints.load_denoiser(ROOT / POLICY, task)
    policy = checkpoints.load_policy(ROOT / POLICY, task, manifest["model"])
    orders = {"learned": policy, "singles": get_order("singles", task=task)}
    rollouts, seconds = {}, {}
    for name, order in orders.items():
        start = time.perf_counter()
        with torch.no_grad():
            rollouts[name] = decode(denoiser, order, tokens)
        seconds[name] = time.perf_counter() - start
        print(f"{name}: {len(tokens)} puzzles in {seconds[name]:.0f} s", flush=True)
    fixed = tokens != MASK
    solved = {name: task.verify(r.tokens, tokens, fixed) for name, r in rollouts.items()}
    only_singles = (solved["singles"] & ~solved["learned"]).nonzero().squeeze(1)
    only_learned = (solved["learned"] & ~solved["singles"]).nonzero().squeeze(1)
    both_lost = (~solved["singles"] & ~solved["learned"]).nonzero().squeeze(1)
    tables = {
        f"`learned` loses, `singles` solves ({len(only_singles)} puzzles): learned's first wrong digit": analyse(
            task, denoiser, rollouts["learned"], policy, tokens, target, only_singles
        ),
        f"both lose ({len(both_lost)} puzzles): learned's first wrong digit": analyse(
            task, denoiser, rollouts["learned"], policy, tokens, target, both_lost
        ),
        f"`singles` loses, `learned` solves ({len(only_learned)} puzzles): singles' first wrong digit": analyse(
            task, denoiser, rollouts["singles"], orders["singles"], tokens, target, only_learned
        ),
    }
    command = "python benchmarks/sudoku9_gap.py" + (f" --limit {args.limit}" if args.limit else "")
    lines = header("9x9 Sudoku: the gap between the learned order and the `singles` rule", command)
    lines += [
        f"- policy: `{POLICY}` (the headline: token-axis encoder, generic features); test set `{DATA}` "
        f"({len(tokens)} puzzles); greedy argmax, one cell per forward",
        "",
        "## Solve rates (these decodes)",
        "",
        "| order | solved | seconds |",
        "|---|---|---|",
        *(f"| {name} | {float(solved[name].float().mean()):.1%} | {seconds[name]:.0f} |" for name in orders),
        "",
        f"Paired: {len(only_singles)} puzzles only `singles` solves, {len(only_learned)} only `learned` solves, "
        f"{len(both_lost)} neither.",
        "",
        "## The state before the first wrong digit",
        "",
        "`forced right`: some naked or hidden single is open where the denoiser's argmax is right (the rule would "
        "have had a safe move); `forced wrong`: singles are open but the denoiser is wrong at all of them; "
        "`no forced cell`: none is open. `picked a forced cell`: the wrong digit was written into a single. "
        "`wrote an illegal digit`: the digit repeats one in its row, column or box. Rank: how many cells the "
        "losing order scored above the best right single (0 = it would have been next).",
        "",
    ]
    keys = list(next(iter(tables.values())))
    lines += ["| " + " | ".join(["puzzles", *keys]) + " |", "|" + "---|" * (len(keys) + 1)]
    for title, row in tables.items():
        cells = [f"{row[k]:g}" if isinstance(row[k], float) else str(row[k]) for k in keys]
        lines.append("| " + " | ".join([title, *cells]) + " |")
    write_report(REPORT, "\n".join(lines) + "\n")
    print(REPORT.read_text())


if __name__ == "__main__":
    main()
