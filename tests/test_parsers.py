"""Readers for the public Sudoku formats, Parquet shards, and every bad-input case."""

from pathlib import Path

import numpy as np
import pytest

from aop_ray import data
from aop_ray.errors import InputError

pytestmark = pytest.mark.reliability

SOLUTION = "123434122143432" + "1"
PUZZLE = "1000040000400001"
PUZZLE_DOTS = PUZZLE.replace("0", ".")


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_line_format_with_blanks_and_comments(tmp_path, sudoku4):
    path = write(tmp_path, "p.txt", f"{PUZZLE} // from somewhere\n\n{PUZZLE_DOTS}\n")
    inst = sudoku4.read(path)
    assert len(inst) == 2
    np.testing.assert_array_equal(inst.tokens[0], inst.tokens[1])
    assert inst.fixed[0].sum() == 4
    assert "".join(str(v + 1) for v in inst.target[0]) == SOLUTION  # unique: solver fills it in
    assert inst.ids == ["p:1", "p:3"]


@pytest.mark.parametrize("header", ["puzzle,solution", "quizzes,solutions"])
def test_csv_formats(tmp_path, sudoku4, header):
    path = write(tmp_path, "p.csv", f"{header}\n{PUZZLE},{SOLUTION}\n{PUZZLE_DOTS},{SOLUTION}\n")
    inst = sudoku4.read(path)
    assert len(inst) == 2
    assert "".join(str(v + 1) for v in inst.target[1]) == SOLUTION


def test_euler_grid_format(tmp_path, sudoku4):
    rows = [PUZZLE[i : i + 4] for i in range(0, 16, 4)]
    text = "Grid 01\n" + "\n".join(rows) + "\nGrid 02\n" + "\n".join(rows) + "\n"
    inst = sudoku4.read(write(tmp_path, "euler.txt", text))
    assert len(inst) == 2
    assert inst.ids == ["euler:2", "euler:7"]


@pytest.mark.parametrize(
    "name,text,line,message",
    [
        ("short.txt", f"{PUZZLE}\n{PUZZLE[:-1]}\n", 2, "expected 16 cells"),
        ("badchar.txt", f"{PUZZLE[:-1]}x\n", 1, "bad character 'x'"),
        ("toobig.txt", f"{PUZZLE[:-1]}5\n", 1, "bad character '5'"),
        ("dup.txt", "1100000000000000\n", 1, "contradictory clues: digit 1 twice in row 1"),
        ("dupbox.txt", "1000010000000000\n", 1, "contradictory clues: digit 1 twice in box 1"),
        ("unsolvable.txt", "1230000400000000\n", 1, "no solution"),
        ("badsol.csv", f"puzzle,solution\n{PUZZLE},1324{SOLUTION[4:]}\n", 2, "not a valid completion"),
        ("fields.csv", f"puzzle,solution\n{PUZZLE},{SOLUTION},extra\n", 2, "expected 2 CSV fields"),
        ("nocol.csv", f"a,b\n{PUZZLE},{SOLUTION}\n", 1, "'puzzle' or 'quizzes'"),
        ("euler.txt", "Grid 01\n1000\n0400\n", 1, "grid has 2 rows"),
        ("euler2.txt", "Grid 01\n1000\n0400\n004\n0001\n", 4, "expected 4 cells in a grid row"),
    ],
)
def test_malformed_input_names_file_and_line(tmp_path, sudoku4, name, text, line, message):
    path = write(tmp_path, name, text)
    with pytest.raises(InputError, match=message) as err:
        sudoku4.read(path)
    assert str(err.value).startswith(f"{path}:{line}:")


def test_empty_and_binary_files(tmp_path, sudoku4):
    with pytest.raises(InputError, match="no puzzles"):
        sudoku4.read(write(tmp_path, "empty.txt", "\n// nothing\n"))
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(InputError, match=r"bin\.txt:1: not UTF-8 text \(byte 0xff\)"):
        sudoku4.read(binary)


def test_size_mismatch_with_task(tmp_path, sudoku9):
    with pytest.raises(InputError, match="expected 81 cells for a 9x9"):
        sudoku9.read(write(tmp_path, "p.txt", PUZZLE + "\n"))


def test_parquet_round_trip_and_directory_loading(tmp_path, sudoku4):
    inst = sudoku4.generate(25, seed=0, clues=6)
    files = data.write_shards(inst, sudoku4, tmp_path / "ds", shard_size=10)
    assert [f.name for f in files] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    back = data.load_instances(sudoku4, tmp_path / "ds")
    np.testing.assert_array_equal(back.tokens, inst.tokens)
    np.testing.assert_array_equal(back.fixed, inst.fixed)
    np.testing.assert_array_equal(back.target, inst.target)
    assert back.ids == inst.ids and back.meta == inst.meta
    assert not list(tmp_path.glob(".ds.tmp-*"))


def test_mixed_directory_of_text_and_parquet(tmp_path, sudoku4):
    folder = tmp_path / "mixed"
    data.write_shards(sudoku4.generate(3, seed=0, clues=6), sudoku4, folder)
    write(folder, "extra.txt", PUZZLE + "\n")
    assert len(data.load_instances(sudoku4, folder)) == 4


def test_shard_for_other_task_is_refused(tmp_path, sudoku4, sudoku9):
    data.write_shards(sudoku4.generate(3, seed=0, clues=6), sudoku4, tmp_path / "ds4")
    with pytest.raises(InputError, match="field 'size': 4 != 9"):
        data.load_instances(sudoku9, tmp_path / "ds4")


def test_existing_dataset_is_not_overwritten(tmp_path, sudoku4):
    inst = sudoku4.generate(3, seed=0, clues=6)
    data.write_shards(inst, sudoku4, tmp_path / "ds")
    with pytest.raises(InputError, match="already exists"):
        data.write_shards(inst, sudoku4, tmp_path / "ds")


def test_failed_write_leaves_nothing(tmp_path, sudoku4, monkeypatch):
    inst = sudoku4.generate(30, seed=0, clues=6)
    calls = []

    def failing_write(table, where):
        calls.append(where)
        if len(calls) == 2:
            raise OSError("disk full")
        Path(where).write_bytes(b"partial")

    monkeypatch.setattr(data.pq, "write_table", failing_write)
    with pytest.raises(OSError, match="disk full"):
        data.write_shards(inst, sudoku4, tmp_path / "ds", shard_size=10)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_parquet_and_missing_path(tmp_path, sudoku4):
    bad = write(tmp_path, "bad.parquet", "not parquet")
    with pytest.raises(InputError, match="bad.parquet: unreadable Parquet"):
        data.load_instances(sudoku4, bad)
    with pytest.raises(InputError, match="no such file"):
        data.load_instances(sudoku4, tmp_path / "missing")


PUBLIC = Path(__file__).resolve().parents[2] / "shared" / "data" / "sudoku"


@pytest.mark.skipif(not PUBLIC.is_dir(), reason="public data in ../shared/data is not on this machine")
def test_public_collections_parse(sudoku9):
    root = PUBLIC
    inst = data.load_instances(sudoku9, root / "easy_50.txt")
    assert len(inst) == 50
    assert inst.ids[0] == "easy_50:1"  # the first line ends in a // comment
