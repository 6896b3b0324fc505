"""Datasets as Parquet shards, and loading instances from any supported file.

A shard's rows are instances (tokens, fixed mask, target, id, JSON meta); the
task's parameters sit in the Parquet schema metadata, so a shard for another
task or board size is refused instead of silently mis-read. Shard directories
are written to a temporary sibling and renamed into place: a crash never
leaves a half-written dataset that a later run would trust.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aop_ray import cli
from aop_ray.cli import run_main, say
from aop_ray.config import DatasetConfig, make_task, parse_assignments
from aop_ray.errors import InputError
from aop_ray.outputs import claim, write_atomic
from aop_ray.readers import short
from aop_ray.tasks import Antibody, Instances, Task, task_params
from aop_ray.tasks.antibody import CSV_COLUMN, identity_clusters, read_heavy_chains, split_by_cluster

TASK_KEY = b"aop_ray.task"
COLUMNS = ("tokens", "fixed", "target", "instance_id", "meta")


def to_table(instances: Instances, task: Task) -> pa.Table:
    length = task.seq_len

    def fixed_list(arr: np.ndarray, kind: pa.DataType) -> pa.Array:
        flat = pa.array(arr.reshape(-1), type=kind)
        return pa.FixedSizeListArray.from_arrays(flat, length)

    table = pa.table(
        {
            "tokens": fixed_list(instances.tokens, pa.int16()),
            "fixed": fixed_list(instances.fixed, pa.bool_()),
            "target": fixed_list(instances.target, pa.int16()),
            "instance_id": pa.array(instances.ids, type=pa.string()),
            "meta": pa.array([json.dumps(m) for m in instances.meta], type=pa.string()),
        }
    )
    return table.replace_schema_metadata({TASK_KEY: json.dumps(task_params(task)).encode()})


def from_columns(columns: dict[str, Any], length: int) -> Instances:
    """Instances from Parquet/Ray Data columns (lists, numpy object or tensor arrays)."""

    def stack(values: Any, dtype: type) -> np.ndarray:
        arr = np.asarray(values)
        if arr.dtype == object:
            arr = np.stack([np.asarray(v) for v in values]) if len(arr) else np.zeros((0, length))
        return arr.astype(dtype).reshape(-1, length)

    ids = [str(i) for i in columns["instance_id"]]
    return Instances(
        tokens=stack(columns["tokens"], np.int64),
        fixed=stack(columns["fixed"], bool),
        target=stack(columns["target"], np.int64),
        ids=ids,
        meta=[json.loads(m) for m in columns["meta"]],
    )


def write_shards(instances: Instances, task: Task, out_dir: str | Path, shard_size: int = 10_000) -> list[Path]:
    """Write `instances` as `part-XXXXX.parquet` files into a new directory, atomically."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise InputError(f"{out_dir}: already exists; refusing to overwrite a dataset")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        for k, start in enumerate(range(0, len(instances), shard_size)):
            part = instances.take(slice(start, start + shard_size))
            pq.write_table(to_table(part, task), tmp / f"part-{k:05d}.parquet")
        try:
            os.replace(tmp, out_dir)
        except OSError:  # another process wrote a dataset there meanwhile: keep theirs, refuse ours
            raise InputError(f"{out_dir}: already exists; refusing to overwrite a dataset") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sorted(out_dir.glob("*.parquet"))


def check_task(path: Path, schema: pa.Schema, task: Task) -> None:
    meta = (schema.metadata or {}).get(TASK_KEY)
    if meta is None:
        raise InputError(f"{path}: not an aop-ray shard (no task metadata)")
    theirs, ours = json.loads(meta), task_params(task)
    for key in sorted(set(theirs) | set(ours)):
        if theirs.get(key) != ours.get(key):
            raise InputError(
                f"{path}: shard is for task {theirs}, expected {ours} "
                f"(field {key!r}: {theirs.get(key)!r} != {ours.get(key)!r})"
            )


def read_schema(path: Path) -> pa.Schema:
    """Schema of a shard, or of the first shard of a dataset directory."""
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise InputError(f"{path}: no Parquet shards")
    try:
        return pq.read_schema(files[0])
    except (pa.ArrowInvalid, OSError) as err:
        raise InputError(f"{files[0]}: unreadable Parquet file ({err})") from None


def read_shard(path: Path, task: Task) -> Instances:
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise InputError(f"{path}: unreadable Parquet file ({err})") from None
    check_task(path, table.schema, task)
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise InputError(f"{path}: missing column {missing[0]!r}")
    return from_columns({c: table.column(c).to_pylist() for c in COLUMNS}, task.seq_len)


def load_instances(task: Task, path: str | Path) -> Instances:
    """Instances from a file in any supported format, or from every file of a directory."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")) if path.is_dir() else [path]
    if not files:
        raise InputError(f"{path}: directory holds no data files")
    parts = [read_shard(f, task) if f.suffix == ".parquet" else task.read(f) for f in files]
    return Instances.concat(parts)


def _generate_chunk(args: tuple[Task, int, int, int, dict[str, Any]]) -> Instances:
    task, n, seed, start, options = args
    return task.generate(n, seed, start=start, **options)


def generate(
    task: Task, n: int, seed: int, options: dict[str, Any] | None = None, processes: int | None = None
) -> Instances:
    """`task.generate` spread over processes; identical output for any process count."""
    options = dict(options or {})
    try:
        task.generate(0, seed, **options)  # validate options before forking
    except InputError:
        raise
    except (TypeError, ValueError) as err:
        raise InputError(f"generate options {short(options)}: {short(str(err), 200)}") from None
    processes = processes or min(os.cpu_count() or 1, max(1, n // 200))
    chunk = -(-n // processes)
    jobs = [(task, min(chunk, n - s), seed, s, options) for s in range(0, n, chunk)]
    if len(jobs) == 1:
        return _generate_chunk(jobs[0])
    with ProcessPoolExecutor(len(jobs)) as pool:
        return Instances.concat(list(pool.map(_generate_chunk, jobs)))


def ensure_dataset(task: Task, path: str | Path, n: int, seed: int, options: dict[str, Any]) -> Path:
    """Generate and write the dataset at `path` unless it is already there."""
    path = Path(path)
    if not path.exists():
        write_shards(generate(task, n, seed, options), task, path)
    return path


def dataset_path(spec: DatasetConfig, task: Task, label: str) -> Path:
    """The dataset a config names, generated (and cached as Parquet) on first use."""
    path = Path(spec.path).expanduser().resolve()
    if not path.exists():
        if spec.generate is None:
            raise InputError(f"data.{label}.path: {path} does not exist and data.{label}.generate is not set")
        say(f"generating {spec.generate.n} {task.name} instances for data.{label} -> {path}")
        ensure_dataset(task, path, spec.generate.n, spec.generate.seed, spec.generate.options)
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser("aop_ray.data", description="Build Parquet datasets: generate instances or convert files.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("generate", "generate seeded, reproducible instances"),
        ("convert", "convert text files (any supported format) to Parquet shards"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        cli.add_debug(p)
        p.add_argument("--task", default="sudoku", help="task name: sudoku or sat (default %(default)s)")
        p.add_argument(
            "--param",
            action="append",
            metavar="KEY=VALUE",
            help="task parameter, repeatable, e.g. --param size=9 (Sudoku) or --param n_vars=20 "
            "--param n_clauses=91 (SAT)",
        )
        p.add_argument("--out", required=True, help="output directory (must not exist; written atomically)")
        p.add_argument("--shard-size", type=cli.positive_int, default=10_000, help="instances per Parquet file")
    gen = sub.choices["generate"]
    gen.add_argument("--n", type=cli.positive_int, required=True, help="number of instances")
    gen.add_argument("--seed", type=int, default=0, help="seed; instance j depends only on (seed, j)")
    gen.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="generator option, repeatable, e.g. --option clues=30 --option unique=true "
        "(Sudoku: clues = count or [low, high], unique = solver-checked uniqueness; "
        "SAT: none, the clause ratio is n_clauses / n_vars)",
    )
    gen.add_argument("--processes", type=cli.positive_int, default=None, help="worker processes (default: all cores)")
    sub.choices["convert"].add_argument("--input", required=True, help="a file or a directory of files")
    ab = sub.add_parser(
        "antibodies",
        help="CDR-H3 infilling sets from heavy chains (FASTA or CSV), split by CDR-H3 identity clusters",
        description="Read heavy chains, find each CDR-H3 and write train / val / test Parquet sets whose "
        "CDR-H3 identity clusters do not cross, plus split.json describing the split.",
    )
    cli.add_debug(ab)
    ab.add_argument("--input", required=True, help="FASTA, or CSV such as CoV-AbDab's")
    ab.add_argument("--column", default=CSV_COLUMN, help="CSV column holding the sequence (default %(default)s)")
    ab.add_argument(
        "--skip-invalid", action="store_true", help="leave out unusable chains (counted) instead of failing"
    )
    ab.add_argument(
        "--length", type=cli.positive_int, default=Antibody.length, help="task.length (default %(default)s)"
    )
    ab.add_argument("--identity", type=float, default=0.8, help="CDR-H3 identity that joins a cluster (%(default)s)")
    ab.add_argument("--val", type=float, default=0.1, help="fraction of chains for validation (%(default)s)")
    ab.add_argument("--test", type=float, default=0.1, help="fraction of chains for test (%(default)s)")
    ab.add_argument("--seed", type=int, default=0, help="split seed")
    ab.add_argument("--out", required=True, help="output directory (must not exist)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(lambda: build(args), args.debug)


def antibody_sets(args: argparse.Namespace) -> None:
    """`aop-data antibodies`: the CDR-H3 sets and the record of how they were split."""
    if not (0 < args.identity <= 1 and 0 < args.val and 0 < args.test and args.val + args.test < 1):
        raise InputError("--identity must be in (0, 1], --val and --test positive and together below 1")
    task = Antibody(length=args.length)
    chains, skipped = read_heavy_chains(args.input, task.length, args.column, args.skip_invalid)
    loops = [c.seq[c.span[0] : c.span[1]] for c in chains]
    clusters = identity_clusters(loops, args.identity)
    fractions = {"test": args.test, "val": args.val, "train": 1.0}
    split = split_by_cluster(clusters, fractions, args.seed)
    if Path(args.out).exists():
        raise InputError(f"--out: {args.out} already exists; refusing to overwrite a dataset")
    with claim(Path(args.out), "--out"):
        for name, rows in split.items():
            write_shards(task.instances([chains[i] for i in rows], Path(args.input).name), task, Path(args.out) / name)
        record = {
            "input": str(args.input),
            "column": args.column,
            "task": task_params(task),
            "chains": len(chains),
            "skipped": skipped,
            "clusters": len(set(clusters)),
            "identity": args.identity,
            "seed": args.seed,
            "sizes": {name: len(rows) for name, rows in split.items()},
            "mean_cdrh3_length": {
                name: float(np.mean([len(loops[i]) for i in rows])) if rows else None for name, rows in split.items()
            },
        }
        write_atomic(Path(args.out) / "split.json", json.dumps(record, indent=2).encode())
    print(
        f"wrote {len(chains)} chains in {len(set(clusters))} CDR-H3 clusters to {args.out}: "
        + ", ".join(f"{name} {len(rows)}" for name, rows in split.items())
        + (f" (skipped: {', '.join(f'{k} {v}' for k, v in skipped.items())})" if skipped else "")
    )


def build(args: argparse.Namespace) -> None:
    if args.command == "antibodies":
        return antibody_sets(args)
    task = make_task({"name": args.task, **parse_assignments(args.param, "--param")})
    if Path(args.out).exists():
        raise InputError(f"--out: {args.out} already exists; refusing to overwrite a dataset")
    if args.command == "generate":
        instances = generate(task, args.n, args.seed, parse_assignments(args.option, "--option"), args.processes)
    else:
        instances = load_instances(task, args.input)
    files = write_shards(instances, task, args.out, args.shard_size)
    print(f"wrote {len(instances)} instances to {len(files)} shard(s) in {args.out}")


if __name__ == "__main__":
    sys.exit(main())
