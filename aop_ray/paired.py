"""Pair evaluations of different checkpoints on the same instances.

    python -m aop_ray.paired out/joint:confidence out/control:confidence out/core:confidence

`evaluate --reference` pairs orders on one denoiser. Whether one *denoiser* beats
another (a joint stage against an MDM-only control, say) needs the same test
across two runs of `evaluate`: both wrote `solved.csv`, a 0/1 outcome per
instance keyed by a digest of its content, so the discordant instances can be
counted. The first argument is the reference; every other one gets the
instances only it solves, only the reference solves, and the exact McNemar p.
The file's writer and reader both live here, so its format has one definition.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from aop_ray import cli
from aop_ray.cli import run_main
from aop_ray.errors import InputError
from aop_ray.readers import read_text
from aop_ray.stats import mcnemar
from aop_ray.tasks import Instances

SOLVED_CSV = "solved.csv"
HEADER = ["instance", "content"]  # then one 0/1 column per order


def content_ids(instances: Instances) -> list[str]:
    """A digest of each instance's tokens and fixed mask: pairing two evaluations checks
    that both decoded the same puzzles, not merely ones with the same names or count."""
    rows = np.concatenate(
        [np.asarray(instances.tokens, dtype=np.int64), np.asarray(instances.fixed, dtype=np.int64)], axis=1
    )
    return [hashlib.sha256(row.tobytes()).hexdigest()[:16] for row in rows]


def solved_csv(instances: Instances, solved: dict[str, torch.Tensor]) -> bytes:
    """One row per instance: its id in the dataset, its content digest, then 0/1 per order."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([*HEADER, *solved])
    flags = [value.long().tolist() for value in solved.values()]
    writer.writerows(zip(instances.ids, content_ids(instances), *flags))
    return buf.getvalue().encode()


@dataclass(frozen=True)
class Outcomes:
    """One order's per-instance outcomes from one evaluation."""

    label: str
    content: list[str]
    solved: torch.Tensor  # (N,) bool


def read_outcomes(spec: str) -> Outcomes:
    """`PATH[:ORDER]`: an evaluation directory (or its solved.csv), and the order's column;
    the order may be left out when the evaluation has just one."""
    path_text, _, order = spec.rpartition(":") if ":" in spec else (spec, "", "")
    path = Path(path_text)
    path = path / SOLVED_CSV if path.is_dir() else path
    if not path.is_file():
        raise InputError(f"{spec}: no {path} (python -m aop_ray.evaluate --out DIR writes DIR/{SOLVED_CSV})")
    rows = list(csv.reader(io.StringIO(read_text(path))))
    if not rows or rows[0][: len(HEADER)] != HEADER or len(rows[0]) <= len(HEADER):
        raise InputError(f"{path}: line 1: expected the header 'instance,content,<order>,...'")
    orders = rows[0][len(HEADER) :]
    if not order:
        if len(orders) > 1:
            raise InputError(f"{spec}: {path} holds several orders ({', '.join(orders)}); name one as PATH:ORDER")
        order = orders[0]
    if order not in orders:
        raise InputError(f"{spec}: {path} has no order {order!r} (it has {', '.join(orders)})")
    column = len(HEADER) + orders.index(order)
    flags = []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(rows[0]) or row[column] not in ("0", "1"):
            raise InputError(f"{path}: line {line}: expected {len(rows[0])} fields with a 0/1 outcome, got {row!r}")
        flags.append(row[column] == "1")
    return Outcomes(f"{path.parent}:{order}", [row[1] for row in rows[1:]], torch.tensor(flags, dtype=torch.bool))


def compare(reference: Outcomes, other: Outcomes) -> tuple[int, int, float]:
    """McNemar counts of `other` against `reference`, refusing evaluations of different instances."""
    if other.content != reference.content:
        first = next(
            (i for i, (a, b) in enumerate(zip(reference.content, other.content)) if a != b),
            min(len(reference.content), len(other.content)),
        )
        raise InputError(
            f"{other.label} and {reference.label} decoded different instances "
            f"({len(other.content)} vs {len(reference.content)}; first difference at instance "
            f"{first + 1}): a paired comparison needs the same data in the same order"
        )
    return mcnemar(other.solved, reference.solved)


def format_table(reference: Outcomes, others: list[Outcomes]) -> str:
    width = max(len(o.label) for o in [reference, *others])
    lines = [f"{'evaluation':<{width}}  {'solve_rate':>10} {'n':>6}  vs reference", "-" * (width + 40)]
    lines.append(
        f"{reference.label:<{width}}  {reference.solved.float().mean():>10.4f} {len(reference.solved):>6}  (reference)"
    )
    for other in others:
        only_it, only_ref, p = compare(reference, other)
        lines.append(
            f"{other.label:<{width}}  {other.solved.float().mean():>10.4f} {len(other.solved):>6}"
            f"  {only_it}/{only_ref} p={p:.2g}"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser(
        "aop_ray.paired",
        description="Paired comparison (exact McNemar) of evaluations of different checkpoints on the same "
        "instances, from the solved.csv each python -m aop_ray.evaluate --out DIR wrote.",
    )
    parser.add_argument(
        "reference",
        help="PATH[:ORDER]: the evaluation directory (or its solved.csv) and order "
        "every other is compared with; ORDER may be left out if it has one",
    )
    parser.add_argument("others", nargs="+", metavar="OTHER", help="PATH[:ORDER], as the reference")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(
        lambda: print(format_table(read_outcomes(args.reference), [read_outcomes(spec) for spec in args.others])),
        args.debug,
    )


if __name__ == "__main__":
    sys.exit(main())
