"""Check: every committed checkpoint decodes exactly as it did at an earlier commit (a refactor changed nothing).

    python benchmarks/decode_equivalence.py --base 6364e52 [--n 50]

For each checkpoint under benchmarks/checkpoints/, `python -m aop_ray.evaluate` decodes one fixed set of
its task's instances (generated 9x9 Sudoku, generated 3-SAT, the first PF00014 rows of the shared
alignment), greedy, under every heuristic (and `learned` for a policy), once with the code of `--base`
(a `git worktree`) and once with the working tree. The per-instance outcomes (`solved.csv`) and the
result rows must be identical; the script prints the discordant count per checkpoint and order and
writes docs/results/decode_equivalence.md. Exit status 1 if anything differs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, commit, machine

REPORT = ROOT / "docs" / "results" / "decode_equivalence.md"
SHARED = ROOT.parent / "shared" / "data"
HEURISTICS = "random,confidence,margin,entropy"
ROWS = ("order", "solve_rate", "cell_accuracy", "n", "forwards_per_instance")  # deterministic fields


def make_data(task: dict, out: Path, n: int) -> Path | None:
    """A fixed instance set for the checkpoint's task, made with the working tree's data tools."""
    name = task["name"]
    path = out / f"{name}-{'-'.join(str(v) for k, v in sorted(task.items()) if k != 'name')}"
    if path.exists():
        return path
    if name == "sudoku":
        args = [
            "generate",
            "--task",
            "sudoku",
            "--param",
            f"size={task['size']}",
            "--n",
            str(n),
            "--seed",
            "4",
            "--option",
            "clues=[24,28]",
        ]
    elif name == "sat":
        args = [
            "generate",
            "--task",
            "sat",
            "--param",
            f"n_vars={task['n_vars']}",
            "--param",
            f"n_clauses={task['n_clauses']}",
            "--n",
            str(n),
            "--seed",
            "4",
        ]
    elif name == "protein" and (SHARED / "protein" / "PF00014_mgap6.fasta.gz").is_file():
        args = [
            "convert",
            "--task",
            "protein",
            *[f"--param={k}={v}" for k, v in task.items() if k != "name"],
            "--input",
            str(SHARED / "protein" / "PF00014_mgap6.fasta.gz"),
        ]
    else:
        return None
    subprocess.run([sys.executable, "-m", "aop_ray.data", *args, "--out", str(path)], cwd=ROOT, check=True)
    return path


def imported_from(tree: Path) -> Path:
    """Where `python -m` run in `tree` imports aop_ray from (the tree's own copy, ahead of the editable install)."""
    code = "import aop_ray; print(aop_ray.__file__)"
    where = subprocess.run([sys.executable, "-c", code], cwd=tree, check=True, capture_output=True, text=True)
    return Path(where.stdout.strip()).resolve().parents[1]


def evaluate(tree: Path, checkpoint: Path, data: Path, orders: str, out: Path, n: int) -> tuple[list[dict], str]:
    """Decode with the code in `tree` (run from there, so its `aop_ray` is the one imported)."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "aop_ray.evaluate",
            "--checkpoint",
            str(checkpoint),
            "--data",
            str(data),
            "--orders",
            orders,
            "--limit",
            str(n),
            "--no-planner-nll",
            "--no-mlflow",
            "--quiet",
            "--out",
            str(out),
        ],
        cwd=tree,
        check=True,
        capture_output=True,
        text=True,
    )
    rows = [{k: row[k] for k in ROWS} for row in json.loads((out / "results.json").read_text())]
    return rows, (out / "solved.csv").read_text()


def discordant(a: str, b: str) -> dict[str, int]:
    """Per order: instances whose outcome differs between two solved.csv files of the same instances."""
    head, *rows_a = a.splitlines()
    _, *rows_b = b.splitlines()
    orders = head.split(",")[2:]
    return {
        order: sum(x.split(",")[2 + i] != y.split(",")[2 + i] for x, y in zip(rows_a, rows_b))
        for i, order in enumerate(orders)
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the commit to compare the working tree with")
    parser.add_argument("--n", type=int, default=50, help="instances per checkpoint")
    args = parser.parse_args()
    started = time.perf_counter()
    lines, failed = [], False
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = tmp / "base"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(base), args.base], cwd=ROOT, check=True, capture_output=True
        )
        try:
            for tree in (base, ROOT):
                assert imported_from(tree) == tree.resolve(), f"{tree} would not run its own aop_ray"
            for checkpoint in sorted(p for p in (ROOT / "benchmarks" / "checkpoints").iterdir() if p.is_dir()):
                manifest = json.loads((checkpoint / "manifest.json").read_text())
                data = make_data(manifest["task"], tmp / "data", args.n)
                if data is None:
                    lines.append(f"| {checkpoint.name} | {manifest['task']['name']} | - | skipped: no data | - |")
                    continue
                orders = HEURISTICS + (",learned" if manifest["kind"] == "policy" else "")
                old = evaluate(base, checkpoint, data, orders, tmp / "out" / "base" / checkpoint.name, args.n)
                new = evaluate(ROOT, checkpoint, data, orders, tmp / "out" / "new" / checkpoint.name, args.n)
                counts = discordant(old[1], new[1])
                same = old == new
                failed |= not same
                cells = ", ".join(f"{order} {count}" for order, count in counts.items())
                lines.append(
                    f"| {checkpoint.name} | {manifest['task']['name']} | {old[0][0]['n']} | {cells} | "
                    f"{'identical' if same else 'DIFFERENT'} |"
                )
                print(lines[-1], flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False)
            shutil.rmtree(base, ignore_errors=True)
    report = "\n".join(
        [
            "# Decoding equivalence of the committed checkpoints",
            "",
            f"- date: {time.strftime('%Y-%m-%d')}; machine: {machine()}",
            f"- command: `python benchmarks/decode_equivalence.py --base {args.base} --n {args.n}`",
            f"- compared: the code at `{args.base}` against commit {commit()}; {time.perf_counter() - started:.0f} s",
            "- data: generated 9x9 Sudoku (24-28 clues, seed 4), generated 3-SAT (seed 4), the first rows of the",
            "  PF00014 alignment; greedy decoding, every heuristic and `learned` for a policy, seed 0",
            "",
            "| checkpoint | task | n | discordant instances per order | result rows and solved.csv |",
            "|---|---|---|---|---|",
            *lines,
            "",
        ]
    )
    REPORT.write_text(report)
    print(report)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
