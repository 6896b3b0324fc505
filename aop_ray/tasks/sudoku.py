"""Sudoku on n x n boards (n = 4, 6, 9): generation, parsing, verification.

Token `d-1` is digit `d`; the mask token is `n`. Clues are the fixed prompt.

Generation uses a bitmask backtracking solver with the minimum-remaining-
values rule. It is fast enough in pure Python for tens of thousands of
unique-solution puzzles when spread over processes (`aop_ray.data`), and the
board symmetries (digit relabelling, row/column shuffles inside bands and
stacks, band/stack shuffles, transposition) give training augmentation for free.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import random
import re
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

import numpy as np
import torch

from aop_ray.errors import InputError, located
from aop_ray.readers import read_text, short, text_lines
from aop_ray.tasks.base import Instances, TaskHooks

BOX_SHAPES: dict[int, tuple[int, int]] = {4: (2, 2), 6: (2, 3), 9: (3, 3)}
_BLANKS = "0."


class _Solver:
    """Backtracking over bitmasks; counts up to `limit` solutions."""

    def __init__(self, n: int, box_rows: int, box_cols: int) -> None:
        self.n = n
        self.full = (1 << n) - 1
        cells = range(n * n)
        self.row = [i // n for i in cells]
        self.col = [i % n for i in cells]
        self.box = [(i // n) // box_rows * (n // box_cols) + (i % n) // box_cols for i in cells]

    def solve(self, grid: list[int], limit: int = 1, rng: random.Random | None = None) -> list[list[int]]:
        """Up to `limit` completions of `grid` (0 = blank, digits 1..n)."""
        n, row, col, box = self.n, self.row, self.col, self.box
        rows, cols, boxes = [0] * n, [0] * n, [0] * n
        for i, v in enumerate(grid):
            if v:
                bit = 1 << (v - 1)
                if (rows[row[i]] | cols[col[i]] | boxes[box[i]]) & bit:
                    return []
                rows[row[i]] |= bit
                cols[col[i]] |= bit
                boxes[box[i]] |= bit
        g = list(grid)
        empty = [i for i, v in enumerate(g) if v == 0]
        found: list[list[int]] = []
        full = self.full

        def search(k: int) -> bool:
            if k == 0:
                found.append(g.copy())
                return len(found) >= limit
            best_j, best_cands, best_count = -1, 0, n + 1
            for j in range(k):
                i = empty[j]
                cands = full & ~(rows[row[i]] | cols[col[i]] | boxes[box[i]])
                count = cands.bit_count()
                if count < best_count:
                    best_j, best_cands, best_count = j, cands, count
                    if count <= 1:
                        break
            if best_count == 0:
                return False
            i = empty[best_j]
            empty[best_j], empty[k - 1] = empty[k - 1], i
            bits = [1 << d for d in range(n) if best_cands >> d & 1]
            if rng is not None:
                rng.shuffle(bits)
            r, c, b = row[i], col[i], box[i]
            for bit in bits:
                rows[r] |= bit
                cols[c] |= bit
                boxes[b] |= bit
                g[i] = bit.bit_length()
                if search(k - 1):
                    return True
                rows[r] ^= bit
                cols[c] ^= bit
                boxes[b] ^= bit
            g[i] = 0
            return False

        search(len(empty))
        return found


@dataclasses.dataclass(frozen=True)
class Sudoku(TaskHooks):
    """An n x n Sudoku task. `size` is 4, 6 or 9."""

    name: ClassVar[str] = "sudoku"
    has_verifier: ClassVar[bool] = True
    size: int = 9

    def __post_init__(self) -> None:
        if self.size not in BOX_SHAPES:
            raise InputError(f"task.size: Sudoku size must be one of {sorted(BOX_SHAPES)}, got {self.size}")

    # ------------------------------------------------------------------ geometry
    @property
    def box_shape(self) -> tuple[int, int]:
        return BOX_SHAPES[self.size]

    @property
    def seq_len(self) -> int:
        return self.size * self.size

    @property
    def vocab_size(self) -> int:
        return self.size

    @property
    def prompt_vocab_size(self) -> int:
        return 0  # clues are digits

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return (self.size, self.size)

    def position_groups(self) -> dict[str, np.ndarray]:
        s = self._solver
        return {"row": np.array(s.row), "col": np.array(s.col), "box": np.array(s.box)}

    def token_structure(self) -> None:
        return None  # the same structure for every puzzle: position_groups says it all

    def units(self) -> np.ndarray:
        """(3n, n) cell indices of every row, column and box."""
        groups = self.position_groups()
        return np.stack([np.flatnonzero(groups[kind] == u) for kind in ("row", "col", "box") for u in range(self.size)])

    def cell_units(self) -> np.ndarray:
        """(L, 3) the row, column and box unit index (into `units()`) of every cell."""
        groups = self.position_groups()
        return np.stack([groups["row"], self.size + groups["col"], 2 * self.size + groups["box"]], axis=1)

    @functools.cached_property
    def _solver(self) -> _Solver:
        return _Solver(self.size, *self.box_shape)

    # ---------------------------------------------------------------- solving
    def solve(self, grid: list[int], limit: int = 1, rng: random.Random | None = None) -> list[list[int]]:
        """Up to `limit` solutions of a grid of digits (0 = blank)."""
        return self._solver.solve(grid, limit, rng)

    def random_solution(self, rng: random.Random) -> list[int]:
        return self._solver.solve([0] * self.seq_len, 1, rng)[0]

    def make_puzzle(self, solution: list[int], clues: int, unique: bool, rng: random.Random) -> list[int] | None:
        """Blank cells of `solution` until `clues` remain.

        With `unique`, a cell is only blanked if the puzzle keeps exactly one
        solution (solver-checked); returns None when the random removal order
        gets stuck above `clues` (the caller retries with a new order).
        """
        order = list(range(self.seq_len))
        rng.shuffle(order)
        puzzle = list(solution)
        if not unique:
            for i in order[: self.seq_len - clues]:
                puzzle[i] = 0
            return puzzle
        remaining = self.seq_len
        for i in order:
            if remaining == clues:
                return puzzle
            puzzle[i] = 0
            if len(self._solver.solve(puzzle, 2)) == 1:
                remaining -= 1
            else:
                puzzle[i] = solution[i]
        return puzzle if remaining == clues else None

    def generate(
        self, n: int, seed: int, start: int = 0, clues: int | list[int] = 30, unique: bool = False
    ) -> Instances:
        """Puzzles `start..start+n-1` with solutions; `clues` is a count or an inclusive [low, high].

        Reproducible: puzzle `j` depends only on (`seed`, `j`), so chunks can be
        generated in parallel processes and concatenated.
        """
        pair = [clues, clues] if isinstance(clues, int) else clues
        if not (isinstance(pair, list) and len(pair) == 2 and all(type(c) is int for c in pair)):
            raise InputError(f"clues: expected a count or [low, high], got {short(clues)}")
        lo, hi = pair
        if not 0 < lo <= hi <= self.seq_len:
            raise InputError(f"clues: need 0 < low <= high <= {self.seq_len}, got {clues}")
        puzzles, solutions, metas = [], [], []
        for j in range(start, start + n):
            rng = random.Random(f"{seed}/{j}")
            while True:
                solution = self.random_solution(rng)
                count = rng.randint(lo, hi)
                puzzle = self.make_puzzle(solution, count, unique, rng)
                if puzzle is not None:
                    break
            puzzles.append(puzzle)
            solutions.append(solution)
            metas.append({"clues": count, "unique": unique, "seed": seed})
        ids = [f"sudoku{self.size}-{seed}-{j}" for j in range(start, start + n)]
        return self._instances(puzzles, solutions, ids, metas)

    # ----------------------------------------------------------- tokenisation
    def _instances(
        self, puzzles: list[list[int]], solutions: list[list[int]], ids: list[str], metas: list[dict[str, Any]]
    ) -> Instances:
        p = np.array(puzzles, dtype=np.int64).reshape(len(ids), self.seq_len)
        s = np.array(solutions, dtype=np.int64).reshape(len(ids), self.seq_len)
        return Instances(tokens=np.where(p > 0, p - 1, self.size), fixed=p > 0, target=s - 1, ids=ids, meta=metas)

    def render(self, tokens: np.ndarray) -> str:
        n, (br, bc) = self.size, self.box_shape
        chars = ["." if t == n else str(t + 1) for t in np.asarray(tokens).tolist()]
        lines = []
        for r in range(n):
            if r and r % br == 0:
                lines.append("-+-".join("-" * (2 * bc - 1) for _ in range(n // bc)))
            cells = chars[r * n : (r + 1) * n]
            lines.append(" | ".join(" ".join(cells[c : c + bc]) for c in range(0, n, bc)))
        return "\n".join(lines)

    # ---------------------------------------------------------------- parsing
    def read(self, path: Path) -> Instances:
        """Read 81-char lines, `puzzle,solution` CSV, or Project Euler grids.

        Puzzles without a solution get the solver's (needed for cell accuracy);
        an unsolvable or self-contradictory puzzle is an error naming its line.
        """
        path = Path(path)
        text = read_text(path)
        first = next((ln.strip() for ln in text_lines(text) if ln.strip()), "")
        if first.lower().startswith("grid"):
            records = self._euler_records(path, text)
        elif self._is_puzzle_line(first):  # decided by content: a comment may hold commas
            records = self._line_records(path, text)
        elif path.suffix.lower() == ".csv" or "," in first:
            records = self._csv_records(path, text)
        else:
            records = self._line_records(path, text)
        puzzles, solutions, ids, metas = [], [], [], []
        for line_no, cells, solution in records:
            puzzle = self._parse_cells(path, line_no, cells)
            self._check_consistent(path, line_no, puzzle)
            if solution is None:
                found = self.solve(puzzle, 1)
                if not found:
                    raise located(path, line_no, "puzzle has no solution")
                sol = found[0]
            else:
                sol = self._parse_cells(path, line_no, solution)
                if 0 in sol or not self._is_solution(sol, puzzle):
                    raise located(path, line_no, "solution is not a valid completion of the puzzle")
            puzzles.append(puzzle)
            solutions.append(sol)
            ids.append(f"{path.stem}:{line_no}")
            metas.append({"clues": sum(v > 0 for v in puzzle), "source": path.name, "line": line_no})
        if not puzzles:
            raise located(path, None, "no puzzles found")
        return self._instances(puzzles, solutions, ids, metas)

    def _is_puzzle_line(self, line: str) -> bool:
        """A puzzle line: the board's cells, then optionally a `//` or `#` comment (public collections
        write `// source, date - level` after a puzzle)."""
        cells = _uncommented(line)
        return len(cells) == self.seq_len and not self._bad_cells(cells)

    def _bad_cells(self, cells: str) -> str:
        """The characters of `cells` that are neither a digit of this board nor a blank."""
        return re.sub(f"[{re.escape(_BLANKS)}1-{self.size}]", "", cells)

    def _line_records(self, path: Path, text: str) -> Iterator[tuple[int, str, str | None]]:
        for line_no, line in enumerate(text_lines(text), start=1):
            cells = _uncommented(line)
            if cells:
                yield line_no, cells, None

    def _csv_records(self, path: Path, text: str) -> Iterator[tuple[int, str, str | None]]:
        reader = csv.reader(io.StringIO(text))
        header = [h.strip().lower() for h in next(reader, [])]
        for puzzle_key, solution_key in (("puzzle", "solution"), ("quizzes", "solutions")):
            if puzzle_key in header:
                pi = header.index(puzzle_key)
                si = header.index(solution_key) if solution_key in header else None
                break
        else:
            raise located(path, 1, f"CSV header must name a 'puzzle' or 'quizzes' column, got {header}")
        for row in reader:
            line_no = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise located(path, line_no, f"expected {len(header)} CSV fields, got {len(row)}")
            yield line_no, row[pi].strip(), (row[si].strip() if si is not None else None)

    def _euler_records(self, path: Path, text: str) -> Iterator[tuple[int, str, str | None]]:
        lines = text_lines(text)
        i = 0
        while i < len(lines):
            if not lines[i].strip():
                i += 1
                continue
            if not lines[i].strip().lower().startswith("grid"):
                raise located(path, i + 1, f"expected a 'Grid NN' header, got {lines[i].strip()!r}")
            start = i + 1
            rows = lines[start : start + self.size]
            if len(rows) < self.size:
                raise located(path, i + 1, f"grid has {len(rows)} rows, expected {self.size}")
            for k, row in enumerate(rows):
                if len(row.strip()) != self.size:
                    raise located(
                        path, start + k + 1, f"expected {self.size} cells in a grid row, got {len(row.strip())}"
                    )
            yield start + 1, "".join(r.strip() for r in rows), None
            i = start + self.size

    def _parse_cells(self, path: Path, line_no: int, cells: str) -> list[int]:
        if len(cells) != self.seq_len:
            raise located(
                path, line_no, f"expected {self.seq_len} cells for a {self.size}x{self.size} Sudoku, got {len(cells)}"
            )
        bad = self._bad_cells(cells)
        if bad:
            raise located(
                path, line_no, f"bad character {bad[0]!r} (allowed: digits 1-{self.size}, '0' or '.' for blanks)"
            )
        return [0 if ch in _BLANKS else int(ch) for ch in cells]

    def _check_consistent(self, path: Path, line_no: int, grid: list[int]) -> None:
        for kind_index, unit in enumerate(self.units()):
            values = [grid[i] for i in unit if grid[i]]
            if len(values) != len(set(values)):
                dup = next(v for v in values if values.count(v) > 1)
                kind = ("row", "column", "box")[kind_index // self.size]
                raise located(
                    path, line_no, f"contradictory clues: digit {dup} twice in {kind} {kind_index % self.size + 1}"
                )

    def _is_solution(self, solution: list[int], puzzle: list[int]) -> bool:
        t = torch.tensor(solution).view(1, -1) - 1
        p = torch.tensor(puzzle).view(1, -1)
        return bool(self.verify(t, torch.where(p > 0, p - 1, self.size), p > 0)[0])

    # ----------------------------------------------------------- verification
    def verify(self, tokens: torch.Tensor, prompt: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """(B,) bool: every unit holds each digit once and the clues are kept.

        A puzzle with several solutions is solved by any valid completion.
        """
        units = torch.as_tensor(self.units(), device=tokens.device)
        filled = tokens < self.size
        onehot = torch.nn.functional.one_hot(tokens.clamp(max=self.size - 1), self.size) * filled[..., None]
        per_unit = onehot[:, units].sum(dim=2)  # (B, 3n, n)
        valid = (per_unit == 1).all(dim=(1, 2))
        keeps_clues = ((tokens == prompt) | ~fixed).all(dim=1)
        return valid & keeps_clues

    def metrics(
        self, tokens: torch.Tensor, prompt: torch.Tensor, fixed: torch.Tensor, step_of: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        return {}  # solved and cell accuracy say it all

    # ------------------------------------------------- rule features and order
    feature_names: ClassVar[tuple[str, ...]] = ("candidates", "naked_single", "hidden_single", "argmax_legal")

    def constraint_state(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, n) legal digits per cell given the filled cells, and (B, L) hidden-single flags.

        A hidden single: some unit of the cell has exactly one empty cell where
        a digit is still legal, and this is that cell.
        """
        n = self.size
        units = torch.as_tensor(self.units(), device=tokens.device)
        cell_units = torch.as_tensor(self.cell_units(), device=tokens.device)
        empty = tokens == n
        onehot = torch.nn.functional.one_hot(tokens.clamp(max=n - 1), n).bool() & ~empty[..., None]
        used = onehot[:, units].any(dim=2)  # (B, 3n, n) digits present in each unit
        legal = ~used[:, cell_units].any(dim=2) & empty[..., None]  # (B, L, n)
        holders = legal[:, units].sum(dim=2)  # (B, 3n, n) empty cells where the digit is legal
        only_place = (holders[:, cell_units] == 1).any(dim=2) & legal  # (B, L, n)
        return legal, only_place.any(dim=-1)

    def policy_features(self, tokens: torch.Tensor, probs: torch.Tensor, names: list[str]) -> torch.Tensor:
        """(B, L, len(names)) named Sudoku rule features for the policy (see `feature_names`)."""
        legal, hidden = self.constraint_state(tokens)
        count = legal.sum(-1)
        argmax = probs.argmax(-1, keepdim=True)
        table = {
            "candidates": count.float() / self.size,
            "naked_single": (count == 1).float(),
            "hidden_single": hidden.float(),
            "argmax_legal": torch.gather(legal, 2, argmax).squeeze(-1).float(),
        }
        unknown = [name for name in names if name not in table]
        if unknown:
            raise InputError(
                f"policy.task_features: unknown Sudoku feature {unknown[0]!r} (known: {', '.join(self.feature_names)})"
            )
        return torch.stack([table[name] for name in names], dim=-1)

    def rule_orders(self) -> dict[str, Callable[[Any], torch.Tensor]]:
        """`singles`: cells forced by a naked or hidden single first, then by margin."""

        def singles(state: Any) -> torch.Tensor:
            legal, hidden = self.constraint_state(state.tokens)
            forced = (legal.sum(-1) == 1) | hidden
            top2 = state.probs.topk(2, dim=-1).values
            return (top2[..., 0] - top2[..., 1]) + 2.0 * forced  # margin lies in [0, 1]

        return {"singles": singles}

    # ---------------------------------------------------------- augmentation
    def symmetry(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Random validity-preserving symmetries: (B, L) cell gather index, (B, n) digit map."""
        n, (br, bc) = self.size, self.box_shape

        def shuffled_lines(block: int, blocks: int) -> torch.Tensor:
            # permute blocks, then lines inside each block
            outer = torch.argsort(torch.rand(batch, blocks, generator=generator), dim=1)
            inner = torch.argsort(torch.rand(batch, blocks, block, generator=generator), dim=2)
            return (outer[:, :, None] * block + inner).reshape(batch, n)

        rows = shuffled_lines(br, n // br)
        cols = shuffled_lines(bc, n // bc)
        index = rows[:, :, None] * n + cols[:, None, :]  # (B, n, n)
        if br == bc:
            flip = torch.rand(batch, generator=generator) < 0.5
            index = torch.where(flip[:, None, None], index.transpose(1, 2), index)
        digits = torch.argsort(torch.rand(batch, n, generator=generator), dim=1)
        return index.reshape(batch, n * n), digits

    def augment(
        self, tokens: torch.Tensor, fixed: torch.Tensor, target: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index, digits = self.symmetry(tokens.shape[0], generator)
        index, digits = index.to(tokens.device), digits.to(tokens.device)
        mask_id = torch.full_like(digits[:, :1], self.size)
        table = torch.cat([digits, mask_id], dim=1)  # mask maps to itself

        def relabel(x: torch.Tensor) -> torch.Tensor:
            moved = torch.gather(x, 1, index)
            return torch.where(moved >= 0, torch.gather(table, 1, moved.clamp(min=0)), moved)

        return relabel(tokens), torch.gather(fixed, 1, index), relabel(target)


def _uncommented(line: str) -> str:
    """A puzzle line without its trailing `//` or `#` comment."""
    return re.split(r"//|#", line, maxsplit=1)[0].strip()
