"""Bad input through every entry point, as an adversarial user gives it.

Each case writes its files into an empty directory, runs one command in this process and asserts:
exit 2, one line naming the place (file and line, or key, or flag), no traceback, and no file in
the directory created, changed or removed. The cases that would exhaust memory run in a subprocess
whose peak memory is measured. The readers' normalisations (byte-order mark, CRLF, ASCII digits)
are Hypothesis properties.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aop_ray import checkpoints
from aop_ray.config import ModelConfig
from aop_ray.errors import InputError
from aop_ray.models.denoiser import Denoiser
from aop_ray.outputs import exclusive
from aop_ray.protein.alignment import read_alignment
from aop_ray.tasks import Sat, Sudoku

from conftest import ROOT, SMOKE, call_cli

pytestmark = pytest.mark.reliability
BENCH = ROOT / "benchmarks" / "checkpoints"
SUDOKU4 = Sudoku(4)
GRID = "1234341221434321"  # a solved 4x4 board
PUZZLE = "1.3.3.1.2.4.4.2."


def tiny_checkpoint(path: Path, **model: int) -> Path:
    """A randomly initialised 4x4 Sudoku denoiser checkpoint (no training: these tests never decode)."""
    cfg = ModelConfig(d_model=16, n_layers=1, n_heads=2)
    torch.manual_seed(0)
    weights = Denoiser.for_task(SUDOKU4, cfg).state_dict()
    manifest = checkpoints.denoiser_manifest(SUDOKU4, cfg)
    manifest["model"].update(model)
    return checkpoints.write_checkpoint(path, manifest, {"denoiser": weights})


def edit_manifest(path: Path, change: Callable[[dict], object]) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    result = change(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest if result is None else result))


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def _truncate(path: Path) -> None:
    weights = path / "denoiser.pt"
    weights.write_bytes(weights.read_bytes()[:5000])


def _checkpoint_case(change: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        tiny_checkpoint(tmp / "ckpt")
        change(tmp / "ckpt")

    return setup


def _files(files: dict[str, str | bytes]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        for name, content in files.items():
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content.encode() if isinstance(content, str) else content)

    return setup


def _manifest_case(change: Callable[[dict], object]) -> Callable[[Path], None]:
    """A tiny checkpoint whose manifest `change` rewrites (returning a new manifest, or editing it in place)."""
    return _checkpoint_case(lambda path: edit_manifest(path, change))


SAT = ["--task", "sat", "--param", "n_vars=20", "--param", "n_clauses=91"]
EVAL = ["--data", "{tmp}/puzzles.txt", "--no-mlflow"]
EVAL_CKPT = ["--checkpoint", "{tmp}/ckpt", *EVAL]
CASES = [
    # (id, files, command, argv ({tmp} is the case's directory), what the one line must contain)
    ("config is a directory", _files({"adir/keep": "x"}), "train", ["--config", "{tmp}/adir"], "adir: cannot read"),
    ("config is binary", _files({"c.yaml": b"\x00\xff\xfe"}), "train", ["--config", "{tmp}/c.yaml"], "not UTF-8 text"),
    (
        "config is a list, with an override",
        _files({"c.yaml": "- 1\n- 2\n"}),
        "train",
        ["--config", "{tmp}/c.yaml", "train.steps=3"],
        "expected a mapping of config keys, got list",
    ),
    (
        "duplicate YAML key",
        _files({"c.yaml": "task: {name: sudoku, size: 4}\nname: a\nname: b\n"}),
        "train",
        ["--config", "{tmp}/c.yaml"],
        "c.yaml:3: invalid YAML (duplicate key 'name')",
    ),
    (
        "YAML alias",
        _files({"c.yaml": "a: &x [1, 2]\nb: [*x, *x]\n"}),
        "train",
        ["--config", "{tmp}/c.yaml"],
        "c.yaml:2: invalid YAML (aliases (*name) are not accepted)",
    ),
    ("NaN learning rate", None, "train", ["--config", str(SMOKE), "train.lr=.nan"], "train.lr: must be a finite"),
    ("infinite learning rate", None, "train", ["--config", str(SMOKE), "train.lr=inf"], "train.lr: must be a finite"),
    (
        "corrupt run state",
        _files({"runs/sudoku4_smoke/aop_run.json": "{not json"}),
        "train",
        ["--config", str(SMOKE), "name=sudoku4_smoke", "--resume", "--no-mlflow"],
        "aop_run.json:1: corrupted run state",
    ),
    (
        "run state is a list",
        _files({"runs/sudoku4_smoke/aop_run.json": "[1, 2]"}),
        "train",
        ["--config", str(SMOKE), "name=sudoku4_smoke", "--resume", "--no-mlflow"],
        "aop_run.json: corrupted run state: expected a JSON object, got list",
    ),
    (
        "run state without its config",
        _files({"runs/sudoku4_smoke/aop_run.json": '{"config": [1]}'}),
        "train",
        ["--config", str(SMOKE), "name=sudoku4_smoke", "--resume", "--no-mlflow"],
        "aop_run.json: corrupted run state (expected a 'config' object",
    ),
    ("corrupt sweep state", _files({"sw/aop_sweep.json": "[{"}), "tune", ["--resume", "{tmp}/sw"], "not a sweep state"),
    (
        "sweep state is a list",
        _files({"sw/aop_sweep.json": "[]"}),
        "tune",
        ["--resume", "{tmp}/sw"],
        "expected a mapping",
    ),
    (
        "truncated weights",
        _checkpoint_case(_truncate),
        "evaluate",
        EVAL_CKPT,
        "denoiser.pt: truncated or corrupted checkpoint",
    ),
    (
        "manifest is a list",
        _manifest_case(lambda m: [m]),
        "evaluate",
        EVAL_CKPT,
        "manifest.json: corrupted manifest: expected a JSON object, got list",
    ),
    (
        "manifest without a task",
        _manifest_case(lambda m: {k: v for k, v in m.items() if k != "task"}),
        "evaluate",
        EVAL_CKPT,
        "manifest.json: field 'task' must be a JSON dict, got None",
    ),
    (
        "manifest task is a string",
        _manifest_case(lambda m: m.update(task="sudoku")),
        "evaluate",
        EVAL_CKPT,
        "manifest.json: field 'task' must be a JSON dict, got 'sudoku'",
    ),
    (
        "manifest without a model",
        _manifest_case(lambda m: {k: v for k, v in m.items() if k != "model"}),
        "evaluate",
        EVAL_CKPT,
        "manifest.json: field 'model' must be a JSON dict",
    ),
    (
        "manifest model wider than its weights",
        _manifest_case(lambda m: m["model"].update(d_model=32)),
        "evaluate",
        EVAL_CKPT,
        "weights do not fit the model in its manifest",
    ),
    (
        "policy manifest without its policy",
        _manifest_case(lambda m: m.update(kind="policy")),
        "evaluate",
        EVAL_CKPT,
        "field 'policy' must be a JSON dict, got None",
    ),
    (
        "CNF header with a superscript digit",
        _files({"f.cnf": "p cnf \u00b20 91\n"}),
        "data",
        ["convert", *SAT, "--input", "{tmp}/f.cnf", "--out", "{tmp}/o"],
        "f.cnf:1: expected 'p cnf VARIABLES CLAUSES'",
    ),
    (
        "CNF literal with an underscore",
        _files({"f.cnf": "c x\np cnf 20 91\n1_0 2 3 0\n"}),
        "data",
        ["convert", *SAT, "--input", "{tmp}/f.cnf", "--out", "{tmp}/o"],
        "f.cnf:3: expected an integer literal, got '1_0'",
    ),
    (
        "CNF literal in Arabic-Indic digits",
        _files({"f.cnf": "p cnf 20 91\n\u0661 2 3 0\n"}),
        "data",
        ["convert", *SAT, "--input", "{tmp}/f.cnf", "--out", "{tmp}/o"],
        "f.cnf:2: expected an integer literal",
    ),
    ("zero instances", None, "data", ["generate", "--n", "0", "--out", "{tmp}/o"], "--n: expected a whole number"),
    ("negative instances", None, "data", ["generate", "--n", "-5", "--out", "{tmp}/o"], "--n: expected a whole"),
    (
        "zero shard size",
        None,
        "data",
        ["generate", "--n", "4", "--shard-size", "0", "--out", "{tmp}/o"],
        "--shard-size: expected a whole number",
    ),
    (
        "negative process count",
        None,
        "data",
        ["generate", "--n", "4", "--processes", "-1", "--out", "{tmp}/o"],
        "--processes: expected a whole number",
    ),
    (
        "non-numeric clue count",
        None,
        "data",
        ["generate", "--param", "size=4", "--n", "4", "--option", "clues=abc", "--out", "{tmp}/o"],
        "clues: expected a count or [low, high], got 'abc'",
    ),
    (
        "paired CSV not in UTF-8",
        _files({"a.csv": b"instance,content,margin\n0,\xff,1\n", "b.csv": "instance,content,margin\n0,x,1\n"}),
        "paired",
        ["{tmp}/a.csv", "{tmp}/b.csv"],
        "a.csv:2: not UTF-8 text",
    ),
    (
        "oracle on three sequences",
        _files({"three.fasta": ">a\nACDEFGHIKL\n>b\nACDEFGHIKM\n>c\nACDEFGHIKN\n"}),
        "protein.oracle",
        ["--alignment", "{tmp}/three.fasta", "--family", "x", "--out", "{tmp}/o"],
        "the oracle needs at least 2 in each",
    ),
    (
        "ensemble over a user's directory",
        _files({"mine/notes.txt": "my notes"}),
        "ensemble",
        ["--out", "{tmp}/mine", str(BENCH / "sudoku9-policy"), str(BENCH / "sudoku9-policy-token-axis")],
        "--out: {tmp}/mine: exists and is not an aop-ray checkpoint; refusing to replace it",
    ),
    (
        "evaluate --out is a file",
        _checkpoint_case(lambda p: (p.parent / "afile").write_text("mine")),
        "evaluate",
        [*EVAL_CKPT, "--out", "{tmp}/afile"],
        "--out: {tmp}/afile exists and is not a directory",
    ),
    (
        "evaluate --out under a file",
        _checkpoint_case(lambda p: (p.parent / "afile").write_text("mine")),
        "evaluate",
        [*EVAL_CKPT, "--out", "{tmp}/afile/sub"],
        "--out: cannot write to {tmp}/afile/sub",
    ),
]


@pytest.mark.parametrize("setup,command,argv,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(tmp_path, setup, command, argv, message):
    (tmp_path / "puzzles.txt").write_text(PUZZLE + "\n")
    if setup is not None:
        setup(tmp_path)
    before = snapshot(tmp_path)
    proc = call_cli(f"aop_ray.{command}", *(a.format(tmp=tmp_path) for a in argv), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    assert message.format(tmp=tmp_path) in last, proc.stderr
    if "usage:" not in proc.stderr:  # argparse's own refusals print the usage first
        assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert snapshot(tmp_path) == before


def test_two_evaluations_into_one_out_are_refused_not_interleaved(tmp_path):
    tiny_checkpoint(tmp_path / "ckpt")
    (tmp_path / "puzzles.txt").write_text(PUZZLE + "\n")
    out = tmp_path / "out"
    out.mkdir()
    argv = ["--checkpoint", str(tmp_path / "ckpt"), "--data", str(tmp_path / "puzzles.txt"), "--no-mlflow"]
    with exclusive(out, "the other evaluation"):  # as a running evaluation holds it
        proc = call_cli("aop_ray.evaluate", *argv, "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 2 and f"--out: another aop-ray process is writing {out}" in proc.stderr
    assert list(out.iterdir()) == []
    proc = call_cli("aop_ray.evaluate", *argv, "--out", str(out), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in out.iterdir()} >= {"results.json", "results.csv", "solved.csv"}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_a_checkpoint_replaces_only_a_checkpoint(tmp_path):
    first = tiny_checkpoint(tmp_path / "ckpt")
    tiny_checkpoint(first)  # a checkpoint over a checkpoint: fine
    (tmp_path / "empty").mkdir()
    tiny_checkpoint(tmp_path / "empty")  # an empty directory: fine
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="mine: exists and is not an aop-ray checkpoint"):
        tiny_checkpoint(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "empty", "mine"]  # no temporary left


def test_an_internal_error_is_one_line_naming_its_saved_traceback(tmp_path, monkeypatch):
    from aop_ray import evaluate

    def broken(ev: object) -> None:
        raise ZeroDivisionError("a bug, not the user's input")

    monkeypatch.setattr(evaluate, "run_evaluation", broken)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    proc = call_cli("aop_ray.evaluate", "--checkpoint", "x", "--data", "y", cwd=tmp_path)
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stderr.startswith("error: internal error ZeroDivisionError: a bug, not the user's input (traceback: ")
    assert "--debug shows it" in proc.stderr
    (saved,) = tmp_path.glob("aop-ray-traceback-*.txt")
    assert "Traceback (most recent call last)" in saved.read_text() and "ZeroDivisionError" in saved.read_text()
    with pytest.raises(ZeroDivisionError):
        call_cli("aop_ray.evaluate", "--checkpoint", "x", "--data", "y", "--debug", cwd=tmp_path)


# ------------------------------------------------------------------ memory: measured in a subprocess
RUNNER = (
    "import importlib, resource, sys\n"
    "module, report, *argv = sys.argv[1:]\n"
    "code = importlib.import_module(module).main(argv)\n"
    "open(report, 'w').write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))\n"
    "sys.exit(code)\n"
)


def peak_mb(tmp: Path, module: str, *argv: str, env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run `module`'s main in a fresh interpreter: its peak resident memory (MB) and its stderr."""
    report = tmp / "peak.txt"
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, module, str(report), *argv],
        cwd=tmp,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return int(report.read_text()) / 1024, proc.stderr.strip()


@pytest.fixture(scope="module")
def baseline_mb(tmp_path_factory) -> dict[str, float]:
    """Each command's peak memory on a refusal that reads nothing: imports and start-up only."""
    tmp = tmp_path_factory.mktemp("baseline")
    return {
        module: peak_mb(tmp, module, *argv)[0]
        for module, argv in (
            ("aop_ray.protein.oracle", ["--alignment", "missing.fasta", "--family", "x", "--out", "o"]),
            ("aop_ray.train", ["--config", "missing.yaml"]),
            ("aop_ray.evaluate", ["--checkpoint", "missing", "--data", "x", "--no-mlflow"]),
        )
    }


def test_a_gzip_bomb_is_refused_within_the_input_limit(tmp_path, baseline_mb):
    bomb = tmp_path / "bomb.fasta.gz"
    line = (">s\n" + "ACDEFGHIKL" * 10 + "\n").encode()
    with gzip.open(bomb, "wb", compresslevel=1) as handle:
        for _ in range(256):  # inflates to 256 MB
            handle.write(line * (2**20 // len(line)))
    assert bomb.stat().st_size < 8 * 2**20
    peak, err = peak_mb(
        tmp_path,
        "aop_ray.protein.oracle",
        *("--alignment", str(bomb), "--family", "x", "--out", "o"),
        env={"AOP_RAY_MAX_INPUT_MB": "16"},
    )
    assert err == f"error: {bomb}: inflates to more than 16 MB (AOP_RAY_MAX_INPUT_MB raises the limit)"
    assert peak - baseline_mb["aop_ray.protein.oracle"] < 120, peak


def test_nested_yaml_aliases_are_refused_before_they_expand(tmp_path, baseline_mb):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]  # 10^10 leaves
    (tmp_path / "laughs.yaml").write_text("\n".join(lines) + "\n")
    peak, err = peak_mb(tmp_path, "aop_ray.train", "--config", str(tmp_path / "laughs.yaml"))
    assert err.startswith(f"error: {tmp_path / 'laughs.yaml'}:2: invalid YAML (aliases (*name) are not accepted)")
    assert peak - baseline_mb["aop_ray.train"] < 50, peak


def test_a_manifest_claiming_a_huge_model_allocates_nothing(tmp_path, baseline_mb):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    edit_manifest(ckpt, lambda m: m["model"].update(d_model=65536, n_layers=64, n_heads=4))
    (tmp_path / "puzzles.txt").write_text(PUZZLE + "\n")
    peak, err = peak_mb(tmp_path, "aop_ray.evaluate", "--checkpoint", str(ckpt), "--data", "puzzles.txt", "--no-mlflow")
    assert err.startswith(f"error: {ckpt}: weights do not fit the model in its manifest"), err
    assert peak - baseline_mb["aop_ray.evaluate"] < 120, peak  # the model it describes would need ~200 GB


# ------------------------------------------------------------------ readers: what real files look like
def _variants(text: str) -> st.SearchStrategy[bytes]:
    """`text` as editors and other tools save it: with or without a BOM, LF, CRLF or CR line ends."""
    return st.tuples(st.booleans(), st.sampled_from(["\n", "\r\n", "\r"])).map(
        lambda v: ("\ufeff" if v[0] else "").encode() + text.replace("\n", v[1]).encode()
    )


SUDOKU_FILES = {
    "lines.txt": f"{PUZZLE} // from a collection, 2006 - hard\n{GRID}\n",
    "board.csv": f"puzzle,solution\n{PUZZLE},{GRID}\n",
}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_sudoku_files_read_the_same_with_a_bom_and_any_line_ends(tmp_path, data):
    for name, text in SUDOKU_FILES.items():
        plain, variant = tmp_path / f"plain-{name}", tmp_path / name
        plain.write_text(text)
        variant.write_bytes(data.draw(_variants(text)))
        ours, theirs = SUDOKU4.read(plain), SUDOKU4.read(variant)
        assert (ours.tokens == theirs.tokens).all() and (ours.target == theirs.target).all() and len(ours) >= 1


def test_a_puzzle_line_with_a_comma_in_its_comment_is_a_puzzle_line(tmp_path):
    path = tmp_path / "top.txt"
    path.write_text(f"{PUZZLE} // source, date - level\n{PUZZLE} # another, with commas\n")
    assert len(SUDOKU4.read(path)) == 2


TEXT_FILES = {  # (reader, file name, content as published)
    "cnf": (
        lambda path: Sat(n_vars=3, n_clauses=2).read(path),
        "f.cnf",
        "c a comment\np cnf 3 2\n1 -2 3 0\n-1 2 3 0\n%\n0\n",
    ),
    "fasta": (lambda path: read_alignment(path), "f.fasta", ">a some protein\nACDEF\nGHIKL\n>b\nACDEFGHIKM\n"),
}


@pytest.mark.parametrize("kind", TEXT_FILES)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_cnf_and_fasta_read_the_same_with_a_bom_and_any_line_ends(tmp_path, kind, data):
    read, name, text = TEXT_FILES[kind]
    plain, variant = tmp_path / f"plain-{name}", tmp_path / name
    plain.write_text(text)
    variant.write_bytes(data.draw(_variants(text)))
    ours, theirs = read(plain), read(variant)
    for field in ("tokens", "seqs"):
        if hasattr(ours, field):
            assert (getattr(ours, field) == getattr(theirs, field)).all()


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(digit=st.characters(categories=["Nd"]).filter(lambda c: not c.isascii()), at=st.integers(0, 15))
def test_non_ascii_digits_are_never_sudoku_cells(tmp_path, digit, at):
    path = tmp_path / "u.txt"
    path.write_text(PUZZLE[:at] + digit + PUZZLE[at + 1 :] + "\n")
    with pytest.raises(InputError, match=r"u\.txt:1: "):
        SUDOKU4.read(path)


def test_concurrent_atomic_writes_of_one_file_never_collide(tmp_path):
    import threading

    from aop_ray.outputs import write_atomic

    target, errors = tmp_path / "results.json", []

    def writer(tag: bytes) -> None:
        try:
            for _ in range(200):
                write_atomic(target, tag * 1000)
        except Exception as err:  # a fixed temporary name made the other writer's rename fail
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(tag,)) for tag in (b"a", b"b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and target.read_bytes() in (b"a" * 1000, b"b" * 1000)
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
