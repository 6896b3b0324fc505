"""Shared fixtures: tiny generated data only (tests never read ../shared/data)."""

from __future__ import annotations

import pytest

from aop_ray.tasks import Sudoku


@pytest.fixture(scope="session")
def sudoku4() -> Sudoku:
    return Sudoku(4)


@pytest.fixture(scope="session")
def sudoku9() -> Sudoku:
    return Sudoku(9)
