"""Pairing evaluations of different checkpoints through their solved.csv files."""

from __future__ import annotations

import torch

from aop_ray.paired import solved_csv
from aop_ray.tasks import Sudoku

from conftest import call_cli


def write(path, instances, **solved):
    path.mkdir()
    (path / "solved.csv").write_bytes(solved_csv(instances, {k: torch.tensor(v) for k, v in solved.items()}))


def test_paired_counts_discordant_instances_across_evaluations(tmp_path):
    puzzles = Sudoku(4).generate(5, seed=7, clues=6)
    write(tmp_path / "a", puzzles, margin=[1, 1, 0, 0, 1], learned=[1, 1, 1, 0, 1])
    write(tmp_path / "b", puzzles, margin=[0, 0, 0, 0, 1])
    proc = call_cli("aop_ray.paired", "a:margin", "b", "a:learned", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = proc.stdout.splitlines()[2:]
    assert rows[0].split()[:3] == ["a:margin", "0.6000", "5"] and rows[0].endswith("(reference)")
    # b only solves what a's margin solves: 0 only it, 2 only the reference, p = 2 * (1/2)^2
    assert rows[1].split() == ["b:margin", "0.2000", "5", "0/2", "p=0.5"]
    assert rows[2].split() == ["a:learned", "0.8000", "5", "1/0", "p=1"]


def test_paired_refuses_other_instances_and_unnamed_orders(tmp_path):
    write(tmp_path / "a", Sudoku(4).generate(3, seed=1, clues=6), margin=[1, 0, 1], random=[0, 0, 0])
    write(tmp_path / "b", Sudoku(4).generate(3, seed=2, clues=6), margin=[1, 1, 1])
    proc = call_cli("aop_ray.paired", "a:margin", "b", cwd=tmp_path)
    assert proc.returncode == 2 and "decoded different instances" in proc.stderr
    assert "first difference at instance 1" in proc.stderr
    proc = call_cli("aop_ray.paired", "a", "b", cwd=tmp_path)
    assert proc.returncode == 2 and "several orders (margin, random); name one as PATH:ORDER" in proc.stderr
    proc = call_cli("aop_ray.paired", "a:entropy", "b", cwd=tmp_path)
    assert proc.returncode == 2 and "has no order 'entropy' (it has margin, random)" in proc.stderr
    proc = call_cli("aop_ray.paired", "a:margin", "missing", cwd=tmp_path)
    assert proc.returncode == 2 and "python -m aop_ray.evaluate --out DIR writes DIR/solved.csv" in proc.stderr


def test_paired_names_the_line_of_a_malformed_outcome(tmp_path):
    write(tmp_path / "a", Sudoku(4).generate(2, seed=1, clues=6), margin=[1, 0])
    text = (tmp_path / "a" / "solved.csv").read_text().splitlines()
    text[2] = text[2][:-1] + "yes"
    (tmp_path / "a" / "solved.csv").write_text("\n".join(text) + "\n")
    proc = call_cli("aop_ray.paired", "a", "a", cwd=tmp_path)
    assert proc.returncode == 2 and "solved.csv: line 3: expected 3 fields with a 0/1 outcome" in proc.stderr
