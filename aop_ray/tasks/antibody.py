"""Antibody CDR-H3 infilling: a heavy-chain variable domain with CDR-H3 masked, the rest a fixed prompt.

CDR-H3 is IMGT CDR3, the residues strictly between the conserved Cys (IMGT 104)
and the Trp of the J-region `W-G-x-G` motif (IMGT 118), found by `cdrh3_span`
without alignment tools: the Trp is the last `WG.G`, the Cys the first Cys at
most `MAX_CDRH3 + 1` residues before it (CDR-H3 itself may hold a Cys; framework 3
holds none that close). On CoV-AbDab this agrees with the database's own
annotation for 97.8% of antibody rows (`tests/test_antibody.py`).

Sequences vary in length, tasks here have one `length`: a sequence shorter than
`length` is followed by `PAD`, a prompt-only token (fixed, never picked) that a
pretrained denoiser's adapter turns into attention-masked padding.

There is no verifier of a designed CDR-H3, so `solved` means exact recovery of
the native loop (`solved` hook), and `cell_accuracy` is amino-acid recovery (AAR).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
import typing
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from aop_ray.errors import InputError, located
from aop_ray.readers import read_text, short, text_lines
from aop_ray.tasks.base import Instances, TaskHooks

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
MASK = len(AMINO_ACIDS)  # 20
PAD = MASK + 1  # 21: prompt-only, "no residue here"
MAX_CDRH3 = 38  # the longest IMGT CDR-H3 the rule looks for (human CDR-H3 rarely exceeds 30)
CSV_COLUMN = "VH or VHH"  # CoV-AbDab's heavy-chain column
KIND_COLUMN = "Ab or Nb"  # CoV-AbDab: antibody or nanobody
FASTA_SUFFIXES = (".fasta", ".fa", ".faa", ".fas")
_MOTIF = re.compile(r"(?=WG.G)")
_INDEX = {aa: i for i, aa in enumerate(AMINO_ACIDS)}


def cdrh3_span(seq: str) -> tuple[int, int] | None:
    """(start, end) of CDR-H3 in `seq` (end exclusive), or None when the anchors are not there."""
    motifs = [m.start() for m in _MOTIF.finditer(seq)]
    if not motifs:
        return None
    trp = motifs[-1]
    cys = seq.find("C", max(0, trp - MAX_CDRH3 - 1), trp)
    if cys < 0 or trp - cys < 2:
        return None
    return cys + 1, trp


@dataclasses.dataclass(frozen=True)
class HeavyChain:
    """One heavy chain read from a file: its id, residues, CDR-H3 span and where it came from."""

    id: str
    seq: str
    span: tuple[int, int]
    line: int


def parse_chain(seq: str, length: int) -> tuple[int, int] | tuple[str, str]:
    """The CDR-H3 span of `seq`, or why the chain cannot be used: (kind, detail)."""
    bad = sorted(set(seq) - set(AMINO_ACIDS))
    if bad:
        return "letters", f"letters outside the 20 amino acids ({short(''.join(bad))})"
    if len(seq) > length:
        return "too long", f"{len(seq)} residues, longer than task.length={length}"
    span = cdrh3_span(seq)
    if span is None:
        return "no CDR-H3", "no CDR-H3 found (needs the conserved Cys and a W-G-x-G motif after it)"
    return span


def _fasta_records(path: Path, text: str) -> list[tuple[int, str, str]]:
    records: list[tuple[int, str, list[str]]] = []
    for line_no, line in enumerate(text_lines(text), 1):
        line = line.strip()
        if not line or line.startswith(";"):
            continue
        if line.startswith(">"):
            records.append((line_no, line[1:].split()[0] if line[1:].split() else f"seq{len(records)}", []))
        elif not records:
            raise located(path, line_no, "FASTA sequence line before any '>' header")
        else:
            records[-1][2].append(line)
    return [(line_no, name, "".join(parts).upper()) for line_no, name, parts in records]


def _csv_records(path: Path, text: str, column: str, antibodies_only: bool) -> list[tuple[int, str, str]]:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        raise located(path, 1, "empty CSV file")
    if column not in header:
        columns = short(", ".join(header), 200)
        raise located(path, 1, f"no column {column!r} (columns: {columns}); choose one with --column")
    col = header.index(column)
    name_col = header.index("Name") if "Name" in header else None
    kind_col = header.index(KIND_COLUMN) if antibodies_only and KIND_COLUMN in header else None
    records = []
    for row in reader:
        line_no = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if kind_col is not None and len(row) > kind_col and row[kind_col].strip() != "Ab":
            continue
        if len(row) <= col:
            raise located(path, line_no, f"row has {len(row)} fields, no {column!r}")
        seq = row[col].strip().upper()
        if seq in ("", "ND", "NA", "N/A"):  # CoV-AbDab writes ND for a sequence it does not have
            continue
        name = row[name_col].strip() if name_col is not None and len(row) > name_col else f"row{line_no}"
        records.append((line_no, name, seq))
    return records


def read_heavy_chains(
    path: str | Path, length: int, column: str = CSV_COLUMN, skip_invalid: bool = False, antibodies_only: bool = True
) -> tuple[list[HeavyChain], dict[str, int]]:
    """Heavy chains from FASTA or CSV, duplicates of one sequence kept once.

    A chain that cannot be used is refused naming its file and line, or, with
    `skip_invalid`, left out and counted by reason (the second return value).
    A CSV with CoV-AbDab's `Ab or Nb` column keeps its antibodies (`Ab`) only
    unless `antibodies_only` is off: nanobodies have no light chain and other loops.
    """
    path = Path(path)
    text = read_text(path)
    first = next((ln.strip() for ln in text_lines(text) if ln.strip()), "")
    suffix = path.suffix.lower().removesuffix(".gz") or Path(path.stem).suffix.lower()
    is_fasta = suffix in FASTA_SUFFIXES or (suffix != ".csv" and first.startswith((">", ";")))
    records = _fasta_records(path, text) if is_fasta else _csv_records(path, text, column, antibodies_only)
    chains: list[HeavyChain] = []
    skipped: dict[str, int] = {}
    seen: set[str] = set()
    for line_no, name, seq in records:
        parsed = parse_chain(seq, length)
        if isinstance(parsed[0], str):
            kind, why = parsed
            if not skip_invalid:
                raise located(path, line_no, f"heavy chain {short(name)}: {why} (--skip-invalid leaves such rows out)")
            skipped[kind] = skipped.get(kind, 0) + 1
            continue
        span = typing.cast(tuple[int, int], parsed)
        if seq not in seen:
            seen.add(seq)
            chains.append(HeavyChain(name, seq, span, line_no))
    if not chains:
        raise located(path, None, "holds no usable heavy chain")
    return chains, skipped


def identity_clusters(loops: list[str], identity: float) -> list[int]:
    """A cluster id per CDR-H3: single linkage over loops of one length at least `identity` identical
    (position by position). Loops of different lengths never share a cluster."""
    parent = list(range(len(loops)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    by_length: dict[int, list[int]] = {}
    for i, loop in enumerate(loops):
        by_length.setdefault(len(loop), []).append(i)
    for members in by_length.values():
        arr = np.array([[ord(c) for c in loops[i]] for i in members])
        for a in range(len(members)):
            same = (arr[a + 1 :] == arr[a]).mean(1) >= identity
            for b in np.nonzero(same)[0]:
                parent[root(members[a + 1 + int(b)])] = root(members[a])
    return [root(i) for i in range(len(loops))]


def split_by_cluster(clusters: list[int], fractions: dict[str, float], seed: int) -> dict[str, list[int]]:
    """Indices per split, whole clusters at a time: the clusters in a seeded random order fill each split
    up to its fraction of the rows in turn, the last split takes the rest."""
    members: dict[int, list[int]] = {}
    for i, c in enumerate(clusters):
        members.setdefault(c, []).append(i)
    order = list(members)
    np.random.default_rng(seed).shuffle(order)
    names = list(fractions)
    out: dict[str, list[int]] = {name: [] for name in names}
    current = 0
    for cluster in order:
        while current < len(names) - 1 and len(out[names[current]]) >= fractions[names[current]] * len(clusters):
            current += 1
        out[names[current]].extend(members[cluster])
    return {name: sorted(idx) for name, idx in out.items()}


@dataclasses.dataclass(frozen=True)
class Antibody(TaskHooks):
    """CDR-H3 infilling on heavy chains of at most `length` residues."""

    name: ClassVar[str] = "antibody"
    has_verifier: ClassVar[bool] = False  # no oracle of a designed loop: `solved` is recovery of the native
    scored_by_recovery: ClassVar[bool] = True
    length: int = 144

    def __post_init__(self) -> None:
        if self.length < 8:
            raise InputError(f"task.length: need at least 8 positions, got {self.length}")

    @property
    def seq_len(self) -> int:
        return self.length

    @property
    def vocab_size(self) -> int:
        return len(AMINO_ACIDS)

    @property
    def prompt_vocab_size(self) -> int:
        return 1  # PAD

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return (self.length,)

    def position_groups(self) -> dict[str, np.ndarray]:
        return {"position": np.arange(self.length)}

    def token_structure(self) -> None:
        return None

    def rule_orders(self) -> dict[str, Callable[[Any], torch.Tensor]]:
        from aop_ray.orders import left_to_right

        return {"left_to_right": left_to_right}

    def model_tokens(self) -> list[str]:
        return list(AMINO_ACIDS)

    def padding_token(self) -> int:
        return PAD

    def instances(self, chains: list[HeavyChain], source: str) -> Instances:
        """CDR-H3 masked, the rest of each chain fixed, `PAD` after its end."""
        n = len(chains)
        target = np.full((n, self.length), PAD, dtype=np.int64)
        fixed = np.ones((n, self.length), dtype=bool)
        for row, chain in enumerate(chains):
            target[row, : len(chain.seq)] = [_INDEX[aa] for aa in chain.seq]
            fixed[row, chain.span[0] : chain.span[1]] = False
        tokens = np.where(fixed, target, MASK)
        metas = [
            {"source": source, "line": c.line, "cdrh3": c.seq[c.span[0] : c.span[1]], "start": c.span[0]}
            for c in chains
        ]
        return Instances(tokens=tokens, fixed=fixed, target=target, ids=[c.id for c in chains], meta=metas)

    def read(self, path: Path) -> Instances:
        """Heavy chains from FASTA, or CSV with CoV-AbDab's `VH or VHH` column."""
        chains, _ = read_heavy_chains(path, self.length)
        return self.instances(chains, Path(path).name)

    def generate(self, n: int, seed: int, start: int = 0) -> Instances:
        """Synthetic heavy chains for tests and smoke runs: one human VH3 framework around a random CDR-H3
        of 8-16 residues; chain `j` depends only on (seed, j). Never a benchmark."""
        chains = []
        for j in range(start, start + n):
            rng = np.random.default_rng([seed, j])
            loop = "AR" + "".join(rng.choice(list(AMINO_ACIDS), size=int(rng.integers(6, 15))))
            seq = _VH3_FR1_TO_FR3 + loop + _FR4
            span = (len(_VH3_FR1_TO_FR3), len(_VH3_FR1_TO_FR3) + len(loop))
            if len(seq) > self.length:
                raise InputError(f"task.length={self.length} is too short for the synthetic chains ({len(seq)})")
            chains.append(HeavyChain(f"synthetic-{seed}-{j}", seq, span, j))
        return self.instances(chains, "synthetic")

    def verify(self, tokens: torch.Tensor, prompt: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """Complete and prompt kept: a designed loop has no further check here (see `solved`)."""
        return (tokens != MASK).all(1) & ((tokens == prompt) | ~fixed).all(1)

    def solved(
        self, tokens: torch.Tensor, prompt: torch.Tensor, fixed: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        """Exact recovery of the native CDR-H3."""
        return self.verify(tokens, prompt, fixed) & ((tokens == target) | fixed).all(1)

    def metrics(
        self, tokens: torch.Tensor, prompt: torch.Tensor, fixed: torch.Tensor, step_of: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """`diversity`: the mean fraction of CDR-H3 residues in which a completion differs from the other
        completions of the same chain in the batch (evaluate --samples); absent when no chain has two."""
        same = (prompt[:, None] == prompt[None]).all(-1) & ~torch.eye(len(prompt), dtype=torch.bool)
        others = same.sum(1)
        if not others.any():  # every chain decoded once (greedy evaluation): no diversity, no (B, B, L) pass
            return {}
        free = (~fixed).float()
        differ = ((tokens[:, None] != tokens[None]).float() * free[:, None]).sum(-1) / free.sum(-1).clamp(min=1)[
            :, None
        ]
        diversity = (differ * same).sum(1) / others.clamp(min=1)
        return {"diversity": torch.where(others > 0, diversity, torch.full_like(diversity, float("nan")))}

    def augment(
        self, tokens: torch.Tensor, fixed: torch.Tensor, target: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return tokens, fixed, target

    def render(self, tokens: np.ndarray) -> str:
        return "".join("_" if t == MASK else AMINO_ACIDS[t] for t in np.asarray(tokens).tolist() if t != PAD)


# A human IGHV3-23 / IGHJ4 heavy chain (framework only), for synthetic test chains.
_VH3_FR1_TO_FR3 = "EVQLLESGGGLVQPGGSLRLSCAASGFTFSSYAMSWVRQAPGKGLEWVSAISGSGGSTYYADSVKGRFTISRDNSKNTLYLQMNSLRAEDTAVYYC"
_FR4 = "WGQGTLVTVSS"
