"""Uniform random 3-SAT: DIMACS reading, generation labelled by PySAT, verification, the `unit` rule.

Sequence layout for n variables and m clauses:

    positions 0 .. 3m-1       the clauses' literals, clause c at 3c..3c+2 (the never-masked prompt)
    positions 3m .. 3m+n-1    the value of variables 1..n (the free positions)

Tokens: 0 = False and 1 = True (all the denoiser predicts), 2 = mask, and the
literal +v / -v is the prompt-only token 3 + 2(v-1) / 4 + 2(v-1).

Variable identity. A literal token names its variable, and the value position
of variable v has the structure group `var = v`. The formula's graph (which
literal belongs to which value position) is also handed to attention directly
by `token_relations`, so the models need not learn the match from embeddings.
`augment` relabels variables at random (and flips polarities, shuffles clauses
and the literals inside them): every variable number then plays every role, so
nothing about "variable 7" can be memorised.

Labels. A formula's reference is a satisfying assignment found by MiniSat
(PySAT), with random initial phases so that formulas with many solutions do not
all get the solver's default-phase one. Any satisfying assignment verifies.
"""

from __future__ import annotations

import dataclasses
import random
import typing
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch

from aop_ray.errors import InputError, located
from aop_ray.readers import ascii_int, read_text, short, text_lines
from aop_ray.tasks.base import Instances, SizeFreeForm, TaskHooks, TokenStructure

WIDTH = 3  # literals per clause
FALSE, TRUE, MASK = 0, 1, 2
FIRST_LITERAL = 3


def satisfying_assignment(clauses: list[list[int]], n_vars: int, rng: random.Random | None = None) -> list[int] | None:
    """Values (0/1) of variables 1..n satisfying every clause, or None if unsatisfiable.

    With `rng`, the solver starts from random phases, so the solution found is
    spread over the formula's solutions rather than always the all-False-first one.
    """
    from pysat.solvers import Minisat22

    with Minisat22(bootstrap_with=clauses) as solver:
        phases = [v if rng.random() < 0.5 else -v for v in range(1, n_vars + 1)] if rng else []
        if phases:
            solver.set_phases(phases)
        if not solver.solve():
            return None
        values = [int(p > 0) for p in phases] if phases else [FALSE] * n_vars  # variables in no clause
        for lit in solver.get_model():
            if abs(lit) <= n_vars:
                values[abs(lit) - 1] = int(lit > 0)
        return values


def size_free_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """(B, L) tokens with each literal replaced by its sign: FIRST_LITERAL (positive) or FIRST_LITERAL + 1."""
    return torch.where(tokens >= FIRST_LITERAL, FIRST_LITERAL + (tokens - FIRST_LITERAL) % 2, tokens)


@dataclasses.dataclass(frozen=True)
class Sat(TaskHooks):
    """3-SAT with `n_vars` variables and exactly `n_clauses` 3-literal clauses (SATLIB uf20-91: 20, 91)."""

    name: ClassVar[str] = "sat"
    has_verifier: ClassVar[bool] = True
    n_vars: int = 20
    n_clauses: int = 91

    def __post_init__(self) -> None:
        if self.n_vars < WIDTH:
            raise InputError(f"task.n_vars: need at least {WIDTH} variables, got {self.n_vars}")
        if self.n_clauses < 1:
            raise InputError(f"task.n_clauses: need at least 1 clause, got {self.n_clauses}")

    # ------------------------------------------------------------------ geometry
    @property
    def n_literals(self) -> int:
        return WIDTH * self.n_clauses

    @property
    def seq_len(self) -> int:
        return self.n_literals + self.n_vars

    @property
    def vocab_size(self) -> int:
        return 2

    @property
    def prompt_vocab_size(self) -> int:
        return 2 * self.n_vars

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return (self.seq_len,)

    def position_groups(self) -> dict[str, np.ndarray]:
        """clause / slot of each literal, var of each value position; a spare id marks the other kind."""
        lit = np.arange(self.n_literals)
        return {
            "clause": np.concatenate([lit // WIDTH, np.full(self.n_vars, self.n_clauses)]),
            "slot": np.concatenate([lit % WIDTH, np.full(self.n_vars, WIDTH)]),
            "var": np.concatenate([np.full(self.n_literals, self.n_vars), np.arange(self.n_vars)]),
        }

    def token_structure(self) -> TokenStructure:
        return TokenStructure(self.token_relations, 5, self.token_states, 16)

    def size_free_form(self) -> SizeFreeForm:
        """Values and the mask as they are, a literal as its sign; only the slot (0-2, or a value position)
        is embedded."""
        return SizeFreeForm(size_free_tokens, FIRST_LITERAL + 2, ("slot",))

    def token_states(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) state ids: 0 at value positions; at a literal, 1 + 5 * (unassigned, true, false)
        + (its clause's count of unassigned literals 0..3 while unsatisfied, or 4 once satisfied).

        Deterministic in x_t, like Sudoku's row/box layout is: the trunk sees each
        clause's state where the literals sit, so reading "I am the last open
        literal of an unsatisfied clause" is one attention hop for a value position.
        Without it, a 293-token denoiser stayed at the trivial loss for hundreds of
        steps although unit clauses decide 55-80% of the masked values at t < 0.5.
        """
        _, _, assigned, true = self.literal_state(tokens)
        literal = torch.where(true, 1, torch.where(assigned, 2, 0))
        satisfied = true.any(-1, keepdim=True)
        clause = torch.where(satisfied, 4, (~assigned).sum(-1, keepdim=True)).expand_as(literal)
        state = (1 + 5 * literal + clause).flatten(1)
        return torch.cat([state, torch.zeros_like(tokens[:, self.n_literals :])], dim=1)

    def token_relations(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L, L) the formula's graph as relation ids, for the models' attention bias.

        1: a literal and the value position of its variable; 2: two literals of
        one variable with the same sign; 3: with opposite signs; 4: two literals
        of one clause; 0: anything else. This is the per-instance counterpart of
        Sudoku's rows and boxes: without it, the models would first have to learn
        which value position a literal token refers to.
        """
        batch = tokens.shape[0]
        code = tokens[:, : self.n_literals] - FIRST_LITERAL
        values = torch.arange(self.n_vars, device=tokens.device).expand(batch, -1)
        var = torch.cat([code // 2, values], dim=1)
        sign = torch.cat([code % 2, torch.full_like(values, 2)], dim=1)  # 2: a value position
        literal = sign < 2
        both = literal[:, :, None] & literal[:, None, :]
        linked = (var[:, :, None] == var[:, None, :]) & (both | (literal[:, :, None] ^ literal[:, None, :]))
        kind = torch.where(both, 2 + (sign[:, :, None] != sign[:, None, :]).long(), 1)
        clause = torch.arange(self.n_literals, device=tokens.device) // WIDTH
        mates = torch.zeros(self.seq_len, self.seq_len, dtype=torch.bool, device=tokens.device)
        mates[: self.n_literals, : self.n_literals] = clause[:, None] == clause[None, :]
        return torch.where(linked, kind, torch.where(mates, 4, 0))

    # ----------------------------------------------------------- tokenisation
    def _instances(
        self,
        clauses: list[list[list[int]]],
        values: Sequence[list[int] | None],
        ids: list[str],
        metas: list[dict[str, Any]],
    ) -> Instances:
        lits = np.array(clauses, dtype=np.int64).reshape(len(ids), self.n_literals)
        prompt = FIRST_LITERAL + 2 * (np.abs(lits) - 1) + (lits < 0)
        tokens = np.concatenate([prompt, np.full((len(ids), self.n_vars), MASK)], axis=1)
        fixed = np.arange(self.seq_len)[None, :].repeat(len(ids), 0) < self.n_literals
        target = np.full_like(tokens, -1)  # unknown reference: -1 everywhere
        for row, value in enumerate(values):
            if value is not None:
                target[row] = np.concatenate([prompt[row], value])
        return Instances(tokens=tokens, fixed=fixed, target=target, ids=ids, meta=metas)

    def literals(self, prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, m, 3) 0-based variable and (B, m, 3) polarity (True = positive) of every literal."""
        code = prompt[:, : self.n_literals].reshape(-1, self.n_clauses, WIDTH) - FIRST_LITERAL
        return code // 2, code % 2 == 0

    def literal_state(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per literal (B, m, 3): its variable, polarity, whether it is assigned, and whether it is true."""
        var, positive = self.literals(tokens)
        value = torch.gather(tokens[:, self.n_literals :], 1, var.flatten(1)).view_as(var)
        assigned = value <= TRUE
        return var, positive, assigned, assigned & ((value == TRUE) == positive)

    def render(self, tokens: np.ndarray) -> str:
        tokens = np.asarray(tokens)
        values = tokens[self.n_literals :]
        cells = [f"x{v + 1}={'FT.'[min(int(t), MASK)]}" for v, t in enumerate(values)]
        lines = [" ".join(cells[i : i + 10]) for i in range(0, len(cells), 10)]
        _, _, _, true = self.literal_state(torch.as_tensor(tokens)[None])
        lines.append(
            f"{int(true.any(-1).sum())}/{self.n_clauses} clauses satisfied, "
            f"{int((values == MASK).sum())} of {self.n_vars} variables unassigned"
        )
        return "\n".join(lines)

    # ---------------------------------------------------------------- generation
    def random_formula(self, rng: random.Random) -> list[list[int]]:
        """Uniform random 3-SAT: 3 distinct variables per clause, each negated with probability 1/2."""
        return [
            [v if rng.random() < 0.5 else -v for v in rng.sample(range(1, self.n_vars + 1), WIDTH)]
            for _ in range(self.n_clauses)
        ]

    def generate(self, n: int, seed: int, start: int = 0) -> Instances:
        """Satisfiable formulas `start..start+n-1`, each labelled with a PySAT solution.

        Unsatisfiable draws are discarded, as SATLIB's `uf` sets were built.
        Formula `j` depends only on (`seed`, `j`), so chunks generate in parallel.
        """
        clauses, values, metas = [], [], []
        for j in range(start, start + n):
            rng = random.Random(f"sat/{seed}/{j}")
            draws = 0
            while True:
                draws += 1
                formula = self.random_formula(rng)
                value = satisfying_assignment(formula, self.n_vars, rng)
                if value is not None:
                    break
            clauses.append(formula)
            values.append(value)
            metas.append({"seed": seed, "draws": draws})
        ids = [f"sat{self.n_vars}-{self.n_clauses}-{seed}-{j}" for j in range(start, start + n)]
        return self._instances(clauses, values, ids, metas)

    # ---------------------------------------------------------------- parsing
    def read(self, path: Path) -> Instances:
        """One DIMACS CNF formula: `c` comments, `p cnf V C`, 0-terminated clauses over any lines.

        SATLIB's trailer (a `%` line, then `0`) ends the formula. The reference is
        a MiniSat solution; an unsatisfiable formula is kept with an unknown
        reference (it can never be solved, and counts as a failure).
        """
        path = Path(path)
        lines = text_lines(read_text(path))
        header: tuple[int, int, int] | None = None  # (line, variables, clauses)
        clauses: list[tuple[int, list[int]]] = []
        current: list[int] = []
        current_line = 0
        for line_no, raw in enumerate(lines, start=1):
            line = raw.strip()
            if not line or line.startswith("c"):
                continue
            if line.startswith("%"):
                break
            if line.startswith("p"):
                header = self._header(path, line_no, line, header)
                continue
            if header is None:
                raise located(path, line_no, "clause before the 'p cnf VARIABLES CLAUSES' header")
            for word in line.split():
                lit = ascii_int(word)
                if lit is None:
                    raise located(path, line_no, f"expected an integer literal, got {short(word)}")
                if lit == 0:
                    if not current:
                        raise located(path, line_no, "empty clause (a 0 with no literals before it)")
                    clauses.append((current_line, current))
                    current = []
                    continue
                if abs(lit) > header[1]:
                    raise located(
                        path, line_no, f"literal {lit} out of range: the header declares {header[1]} variables"
                    )
                if not current:
                    current_line = line_no
                current.append(lit)
        if header is None:
            raise located(path, None, "missing 'p cnf VARIABLES CLAUSES' header")
        if current:
            raise located(path, current_line, "clause not terminated by 0")
        if len(clauses) != header[2]:
            raise located(path, header[0], f"the header declares {header[2]} clauses, the file has {len(clauses)}")
        for line_no, clause in clauses:
            if len(clause) != WIDTH:
                raise located(
                    path, line_no, f"clause has {len(clause)} literals; the sat task holds {WIDTH}-literal clauses"
                )
        formula = [clause for _, clause in clauses]
        value = satisfying_assignment(formula, self.n_vars)
        meta = {"source": path.name, "satisfiable": value is not None}
        return self._instances([formula], [value], [path.stem], [meta])

    def _header(self, path: Path, line_no: int, line: str, seen: tuple[int, int, int] | None) -> tuple[int, int, int]:
        if seen is not None:
            raise located(path, line_no, f"second 'p' header (the first is on line {seen[0]})")
        parts = line.split()
        numbers = [ascii_int(p) for p in parts[2:]]
        if len(parts) != 4 or parts[1] != "cnf" or any(n is None or n < 0 for n in numbers):
            raise located(path, line_no, f"expected 'p cnf VARIABLES CLAUSES', got {short(line)}")
        variables, count = typing.cast(list[int], numbers)
        if (variables, count) != (self.n_vars, self.n_clauses):
            raise located(
                path,
                line_no,
                f"formula has {variables} variables and {count} clauses; this sat task "
                f"holds task.n_vars={self.n_vars}, task.n_clauses={self.n_clauses}",
            )
        return line_no, variables, count

    # ----------------------------------------------------------- verification
    def clauses_satisfied(self, tokens: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        """(B, m) bool: the clause has a true literal under the assignment in `tokens`."""
        values = tokens[:, self.n_literals :]
        _, _, _, true = self.literal_state(torch.cat([prompt[:, : self.n_literals], values], dim=1))
        return true.any(-1)

    def verify(self, tokens: torch.Tensor, prompt: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """(B,) bool: every variable assigned, every clause satisfied, the clauses unchanged."""
        assigned = (tokens[:, self.n_literals :] <= TRUE).all(1)
        keeps_prompt = ((tokens == prompt) | ~fixed).all(dim=1)
        return assigned & self.clauses_satisfied(tokens, prompt).all(1) & keeps_prompt

    def metrics(
        self, tokens: torch.Tensor, prompt: torch.Tensor, fixed: torch.Tensor, step_of: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Per formula: `clause_sat`, the fraction of clauses satisfied, and `unit_first`.

        `unit_first` replays the decoding (the order's own reveals, from `step_of`):
        of the steps at which some variable was forced by a unit clause, the
        fraction at which the order revealed a forced one. The `unit` rule scores
        1 by construction; a learned order near 1 has rediscovered unit
        propagation. NaN for a formula where no step had a forced variable.
        """
        values = step_of[:, self.n_literals :]
        hits = torch.zeros(tokens.shape[0], device=tokens.device)
        chances = torch.zeros_like(hits)
        for step in range(int(values.max()) + 1 if values.numel() else 0):
            shown = (step_of >= 0) & (step_of < step)
            forced, _, _ = self.propagation_state(torch.where(shown, tokens, prompt))
            chosen = values == step
            chance = forced.any(1) & chosen.any(1)
            chances += chance
            hits += chance & (chosen & forced).any(1)
        return {
            "clause_sat": self.clauses_satisfied(tokens, prompt).float().mean(1),
            "unit_first": torch.where(chances > 0, hits / chances.clamp(min=1), torch.nan),
        }

    # ------------------------------------------------- rule features and order
    feature_names: ClassVar[tuple[str, ...]] = ("unit", "open_clauses", "argmax_safe")

    def propagation_state(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per variable (B, n): forced by a unit clause, open clauses it is in, and the value units force.

        A unit clause is an unsatisfied clause with exactly one unassigned
        literal; that literal must be made true. `forced_value` is -1 where no
        unit clause forces the variable, and 2 where two force opposite values
        (a conflict).
        """
        var, positive, assigned, true = self.literal_state(tokens)
        open_lit = ~assigned & ~true.any(-1, keepdim=True)
        unit = open_lit & (open_lit.sum(-1, keepdim=True) == 1)
        batch, n = tokens.shape[0], self.n_vars
        flat_var = var.flatten(1)

        def per_var(flags: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(batch, n, dtype=torch.long, device=tokens.device)
            return out.scatter_add_(1, flat_var, flags.flatten(1).long())

        forces_true, forces_false = per_var(unit & positive), per_var(unit & ~positive)
        forced_value = torch.full_like(forces_true, -1)
        forced_value = torch.where(forces_true > 0, TRUE, forced_value)
        forced_value = torch.where(forces_false > 0, torch.where(forces_true > 0, 2, FALSE), forced_value)
        return forced_value >= 0, per_var(open_lit), forced_value

    def _per_position(self, per_var: torch.Tensor) -> torch.Tensor:
        """(B, n) -> (B, L), zero at literal positions."""
        pad = per_var.new_zeros(per_var.shape[0], self.n_literals)
        return torch.cat([pad, per_var], dim=1)

    def policy_features(self, tokens: torch.Tensor, probs: torch.Tensor, names: list[str]) -> torch.Tensor:
        """(B, L, len(names)) named propagation features (see `feature_names`), 0 on literal positions."""
        forced, open_count, forced_value = self.propagation_state(tokens)
        argmax = probs[:, self.n_literals :].argmax(-1)
        mean_occurrence = self.n_literals / self.n_vars
        table = {
            "unit": forced.float(),
            "open_clauses": open_count.float() / mean_occurrence,
            "argmax_safe": ((forced_value < 0) | (forced_value == argmax)).float(),
        }
        unknown = [name for name in names if name not in table]
        if unknown:
            raise InputError(
                f"policy.task_features: unknown sat feature {unknown[0]!r} (known: {', '.join(self.feature_names)})"
            )
        return torch.stack([self._per_position(table[name]) for name in names], dim=-1)

    has_dead_ends: ClassVar[bool] = True

    def dead_ends(self, tokens: torch.Tensor, proposal: torch.Tensor) -> torch.Tensor:
        """(B, L) True at each unassigned variable where assigning it `proposal` leaves no satisfying
        assignment that keeps the values already set (MiniSat under assumptions).

        A uf20-91 formula has many solutions: on margin's teacher-forced trajectories its chosen value
        differs from the reference at 6.6% of states but is a dead end at only 1.4% (200 generated formulas),
        so the reference's `error` mostly labels good choices as mistakes. One solve per state finds a
        model; only proposals that disagree with it need a solve of their own.
        """
        from pysat.solvers import Minisat22

        n_lit = self.n_literals
        values, props = tokens[:, n_lit:].cpu().numpy(), proposal[:, n_lit:].cpu().numpy()
        formulas = tokens[:, :n_lit].cpu().numpy()
        dead = np.zeros(values.shape, dtype=bool)
        solver, formula, present = None, None, set()
        try:
            for row in range(len(values)):
                if solver is None or formula is None or not np.array_equal(formulas[row], formula):
                    if solver is not None:
                        solver.delete()
                    formula = formulas[row]
                    var, negative = (formula - FIRST_LITERAL) // 2 + 1, (formula - FIRST_LITERAL) % 2
                    solver = Minisat22(bootstrap_with=np.where(negative == 1, -var, var).reshape(-1, WIDTH).tolist())
                    present = set(var.tolist())  # a variable in no clause is free: never a dead end
                set_vars = [
                    v + 1 if value == TRUE else -(v + 1)
                    for v, value in enumerate(values[row])
                    if value <= TRUE and v + 1 in present
                ]
                open_vars = [v for v, value in enumerate(values[row]) if value == MASK and v + 1 in present]
                if not solver.solve(assumptions=set_vars):
                    dead[row, open_vars] = True
                    continue
                model = {abs(lit): lit > 0 for lit in solver.get_model()}
                for v in open_vars:
                    literal = v + 1 if props[row, v] == TRUE else -(v + 1)
                    if model.get(v + 1, False) != (literal > 0):  # the model itself keeps any agreeing value
                        dead[row, v] = not solver.solve(assumptions=[*set_vars, literal])
        finally:
            if solver is not None:
                solver.delete()
        return self._per_position(torch.as_tensor(dead, device=tokens.device))

    def rule_orders(self) -> dict[str, Callable[[Any], torch.Tensor]]:
        """`unit`: variables forced by a unit clause first (unit propagation), then by margin."""

        def unit(state: Any) -> torch.Tensor:
            forced, _, _ = self.propagation_state(state.tokens)
            top2 = state.probs.topk(2, dim=-1).values
            return (top2[..., 0] - top2[..., 1]) + 2.0 * self._per_position(forced.float())

        return {"unit": unit}

    # ---------------------------------------------------------- augmentation
    def augment(
        self, tokens: torch.Tensor, fixed: torch.Tensor, target: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Relabel variables, flip polarities, shuffle clauses and literals: satisfiability is unchanged."""
        batch, n, m, nl = tokens.shape[0], self.n_vars, self.n_clauses, self.n_literals

        def permutation(*shape: int) -> torch.Tensor:
            return torch.argsort(torch.rand(*shape, generator=generator), dim=-1).to(tokens.device)

        old_of_new = permutation(batch, n)  # new variable j is old variable old_of_new[j]
        new_of_old = torch.argsort(old_of_new, dim=1)
        flip = (torch.rand(batch, n, generator=generator) < 0.5).long().to(tokens.device)  # per old variable
        literal_index = (permutation(batch, m)[..., None] * WIDTH + permutation(batch, m, WIDTH)).flatten(1)
        index = torch.cat([literal_index, nl + old_of_new], dim=1)

        def relabel(x: torch.Tensor) -> torch.Tensor:
            moved = torch.gather(x, 1, index)
            lits, values = moved[:, :nl], moved[:, nl:]
            code = (lits - FIRST_LITERAL).clamp(min=0)
            old_var = code // 2
            new_code = 2 * torch.gather(new_of_old, 1, old_var) + (code % 2 ^ torch.gather(flip, 1, old_var))
            lits = torch.where(lits >= FIRST_LITERAL, FIRST_LITERAL + new_code, lits)
            values = torch.where(
                (values == FALSE) | (values == TRUE), values ^ torch.gather(flip, 1, old_of_new), values
            )
            return torch.cat([lits, values], dim=1)

        return relabel(tokens), torch.gather(fixed, 1, index), relabel(target)
