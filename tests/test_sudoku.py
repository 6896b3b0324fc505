import random

import numpy as np
import pytest
import torch

from aop_ray import data
from aop_ray.errors import InputError
from aop_ray.tasks import Sudoku


def as_tensors(inst):
    return torch.as_tensor(inst.tokens), torch.as_tensor(inst.fixed), torch.as_tensor(inst.target)


@pytest.mark.parametrize("size", [4, 6, 9])
def test_generated_solutions_are_valid_and_keep_clues(size):
    task = Sudoku(size)
    inst = task.generate(20, seed=3, clues=[size, 2 * size])
    tokens, fixed, target = as_tensors(inst)
    assert task.verify(target, tokens, fixed).all()
    clue_counts = fixed.sum(1)
    assert ((clue_counts >= size) & (clue_counts <= 2 * size)).all()
    assert (tokens[~fixed] == task.vocab_size).all()  # blanks are the mask token
    assert (tokens[fixed] == target[fixed]).all()


@pytest.mark.parametrize("size,clues", [(4, 5), (6, 12), (9, 30)])
def test_unique_puzzles_have_exactly_one_solution(size, clues):
    task = Sudoku(size)
    inst = task.generate(5, seed=11, clues=clues, unique=True)
    assert (inst.fixed.sum(1) == clues).all()
    for tokens, fixed in zip(inst.tokens, inst.fixed):
        grid = [int(t) + 1 if f else 0 for t, f in zip(tokens, fixed)]
        assert len(task.solve(grid, limit=2)) == 1


def test_generation_is_reproducible_and_chunkable(sudoku9):
    whole = sudoku9.generate(6, seed=5, clues=[25, 35])
    again = sudoku9.generate(6, seed=5, clues=[25, 35])
    chunks = [sudoku9.generate(3, seed=5, start=s, clues=[25, 35]) for s in (0, 3)]
    np.testing.assert_array_equal(whole.tokens, again.tokens)
    np.testing.assert_array_equal(whole.tokens, np.concatenate([c.tokens for c in chunks]))
    assert whole.ids == [i for c in chunks for i in c.ids]
    other = sudoku9.generate(6, seed=6, clues=[25, 35])
    assert not np.array_equal(whole.target, other.target)


def test_parallel_generation_matches_serial(sudoku4):
    serial = sudoku4.generate(40, seed=2, clues=6, unique=True)
    parallel = data.generate(sudoku4, 40, 2, {"clues": 6, "unique": True}, processes=2)
    np.testing.assert_array_equal(serial.tokens, parallel.tokens)
    np.testing.assert_array_equal(serial.target, parallel.target)


def test_bad_generation_options(sudoku4):
    with pytest.raises(InputError, match="clues"):
        data.generate(sudoku4, 4, 0, {"clues": 99})
    with pytest.raises(InputError, match="unexpected keyword"):
        data.generate(sudoku4, 4, 0, {"clue": 5})


def test_verifier(sudoku4):
    solution = [1, 2, 3, 4, 3, 4, 1, 2, 2, 1, 4, 3, 4, 3, 2, 1]
    puzzle = [1, 0, 0, 0, 0, 4, 0, 0, 0, 0, 4, 0, 0, 0, 0, 1]
    p = torch.tensor([puzzle]) - 1
    fixed = p >= 0
    prompt = torch.where(fixed, p, 4)
    sol = torch.tensor([solution]) - 1
    assert sudoku4.verify(sol, prompt, fixed).item()
    swapped = sol.clone()
    swapped[0, [1, 2]] = swapped[0, [2, 1]]  # breaks rows/columns
    assert not sudoku4.verify(swapped, prompt, fixed).item()
    unfinished = sol.clone()
    unfinished[0, 5] = 4  # still masked
    assert not sudoku4.verify(unfinished, prompt, fixed).item()
    # a different valid grid that changes a clue is not a solution of this puzzle
    relabelled = (sol + 1) % 4
    assert sudoku4.verify(relabelled, relabelled, torch.zeros_like(fixed)).item()
    assert not sudoku4.verify(relabelled, prompt, fixed).item()


def test_any_valid_completion_of_ambiguous_puzzle_counts(sudoku4):
    empty = torch.full((1, 16), 4)
    no_clues = torch.zeros(1, 16, dtype=torch.bool)
    grids = sudoku4.solve([0] * 16, limit=3)
    assert len(grids) == 3
    for grid in grids:
        assert sudoku4.verify(torch.tensor([grid]) - 1, empty, no_clues).item()


@pytest.mark.parametrize("size", [4, 6, 9])
def test_augmentation_preserves_validity_and_clue_alignment(size):
    task = Sudoku(size)
    inst = task.generate(16, seed=1, clues=2 * size)
    tokens, fixed, target = as_tensors(inst)
    a_tokens, a_fixed, a_target = task.augment(tokens, fixed, target, torch.Generator().manual_seed(0))
    assert task.verify(a_target, a_tokens, a_fixed).all()
    assert (a_fixed.sum(1) == fixed.sum(1)).all()
    assert (a_tokens[~a_fixed] == task.vocab_size).all()
    assert not torch.equal(a_target, target)


def test_render_shows_boxes(sudoku4):
    text = sudoku4.render(np.array([0, 4, 2, 3] * 4))
    assert text.splitlines()[0] == "1 . | 3 4"
    assert "-+-" in text.splitlines()[2]


def test_solver_reports_no_solution(sudoku4):
    # row 1 needs a 4 at (0,3) but column 3 already has a 4
    grid = [1, 2, 3, 0, 0, 0, 0, 4] + [0] * 8
    assert sudoku4.solve(grid) == []


def test_random_solution_seeded(sudoku9):
    assert sudoku9.random_solution(random.Random(1)) == sudoku9.random_solution(random.Random(1))
