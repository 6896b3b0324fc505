"""Protein-family alignments as token arrays, and the similarity measures on them.

A family is a multiple sequence alignment whose columns are the positions the
denoiser fills in, so every record becomes one fixed-length row of token ids
over `ALPHABET` (20 amino acids, then the gap; 21 tokens).

Reading policy (`read_alignment`):

* Records start with `>`; sequence lines may wrap. Aligned FASTA and A2M/a3m
  are both accepted, and a gzip-compressed file is read transparently (Pfam
  alignments are usually shipped gzipped).
* A2M convention: lower-case letters and `.` are insert columns and are
  dropped; upper-case letters and `-` are match columns. A file is read as A2M
  when any sequence line holds a lower-case letter; otherwise `.` is a gap
  like `-` (plain aligned FASTA). The choice is per file because in A2M a `.`
  only exists to pad insert columns, which are lower case somewhere.
* Unknown or ambiguous residues X, B, Z, J, U, O are treated as unobserved,
  like a gap: a model of the family should not learn to emit them, and they
  are rare (18 X in the 3,629-sequence DHFR alignment).
* Any other character is an error, as are files with no records, sequence
  data before the first header, empty records, records whose match-column
  count differs from the first, and bytes that are not UTF-8. Every error is an
  `InputError` whose one-line message starts with `file:line:`.

Identity (`pairwise_identity`) is the number of columns where both sequences
hold the same residue, divided by the number of columns where at least one of
them is not a gap (0 when both are all gap). Counting only those columns keeps
two sequences that share a long run of gaps from looking similar because of
it, and keeps a fragment that matches a full-length sequence on its few
residues from looking identical to it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from aop_ray.errors import located
from aop_ray.readers import read_text

ALPHABET = "ACDEFGHIKLMNPQRSTVWY-"
GAP = ALPHABET.index("-")
N_RESIDUES = GAP  # the 20 amino acids come first

_UNKNOWN = "XBZJUO"
_BAD_CHAR = re.compile(r"[^A-Za-z.\-]")
_LOWER = re.compile(r"[a-z]")
# str.translate tables: each kept character becomes chr(token id), dropped ones vanish.
_MATCH = {ord(c): i for i, c in enumerate(ALPHABET)} | {ord(c): GAP for c in _UNKNOWN}
_FASTA_TABLE = _MATCH | {ord("."): GAP}  # only used when no lower case is present
_A2M_TABLE = _MATCH | {ord("."): None} | {ord(c.lower()): None for c in ALPHABET[:N_RESIDUES] + _UNKNOWN}


@dataclasses.dataclass
class Alignment:
    """An alignment's match columns as token ids, with where each record came from."""

    names: list[str]  # whole header text after '>', so descriptions survive a round trip
    seqs: np.ndarray  # (N, L) int64 token ids into ALPHABET
    lines: list[int]  # 1-based line of each record's header

    def __len__(self) -> int:
        return len(self.names)


def encode(text: str) -> np.ndarray:
    """Token ids of one aligned sequence, under the same rules as `read_alignment`."""
    bad = _BAD_CHAR.search(text)
    if bad:
        raise ValueError(f"bad character {bad.group()!r} in sequence {text!r}")
    table = _A2M_TABLE if _LOWER.search(text) else _FASTA_TABLE
    return np.frombuffer(text.translate(table).encode("latin-1"), dtype=np.uint8).astype(np.int64)


def decode(tokens: np.ndarray) -> str:
    """The aligned text of one row of token ids (gaps as `-`)."""
    return "".join(ALPHABET[int(t)] for t in tokens)


@dataclasses.dataclass
class _Record:
    name: str
    line: int
    chunks: list[str]  # stripped sequence lines


def _records(path: Path, text: str) -> list[_Record]:
    records: list[_Record] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if line.startswith(">"):
            records.append(_Record(line[1:].strip(), number, []))
        elif line:
            if not records:
                raise located(path, number, "sequence data before the first '>' header")
            bad = _BAD_CHAR.search(line)
            if bad:
                raise located(path, number, f"bad character {bad.group()!r} in sequence")
            records[-1].chunks.append(line)
    if not records:
        raise located(path, 1, "no sequence records (no line starts with '>')")
    return records


def read_alignment(path: str | Path) -> Alignment:
    """Read an aligned FASTA or A2M file (optionally gzipped) into match-column tokens."""
    path = Path(path)
    records = _records(path, read_text(path))
    a2m = any(_LOWER.search(text) for r in records for text in r.chunks)
    table = _A2M_TABLE if a2m else _FASTA_TABLE
    rows: list[bytes] = []
    for r in records:
        if not r.chunks:
            raise located(path, r.line, f"record {r.name!r} has no sequence")
        row = "".join(r.chunks).translate(table).encode("latin-1")
        if rows and len(row) != len(rows[0]):
            raise located(
                path,
                r.line,
                f"record {r.name!r} has {len(row)} match columns, but the first record "
                f"(line {records[0].line}) has {len(rows[0])}",
            )
        rows.append(row)
    if not rows[0]:
        raise located(path, records[0].line, "no match columns (upper-case letters or '-')")
    seqs = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(len(rows), -1).astype(np.int64)
    return Alignment(names=[r.name for r in records], seqs=seqs, lines=[r.line for r in records])


def _as_tokens(seqs: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(seqs) if not isinstance(seqs, torch.Tensor) else seqs).long()
    if t.ndim == 1:
        t = t[None]
    if t.ndim != 2:
        raise ValueError(f"expected a (N, L) array of token ids, got shape {tuple(t.shape)}")
    if t.numel() and (t.min() < 0 or t.max() > GAP):
        raise ValueError(f"token ids must lie in 0..{GAP}")
    return t


def _features(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Residue one-hot (N, L*20) and non-gap indicator (N, L), float32 so matmuls count exactly."""
    one_hot = torch.nn.functional.one_hot(t, len(ALPHABET))[..., :N_RESIDUES]
    return one_hot.reshape(len(t), -1).float(), (t != GAP).float()


def _identity_blocks(x: torch.Tensor, y: torch.Tensor, chunk: int) -> Iterator[tuple[int, torch.Tensor]]:
    """(row offset, identity block) over chunks of `x` against all of `y`, float64."""
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"sequences have different lengths: {x.shape[1]} and {y.shape[1]}")
    y_hot, y_res = _features(y)
    for start in range(0, len(x), chunk):
        x_hot, x_res = _features(x[start : start + chunk])
        matches = (x_hot @ y_hot.T).double()
        union = x_res.sum(1, keepdim=True).double() + y_res.sum(1).double() - (x_res @ y_res.T).double()
        yield start, torch.where(union > 0, matches / union.clamp(min=1), 0.0)


def pairwise_identity(x: np.ndarray, y: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """(n, m) identities between rows of `x` and rows of `y` (definition in the module docstring).

    Rows of `x` are processed `chunk` at a time so the one-hot intermediates
    stay small; the (n, m) result itself is the caller's to size.
    """
    xt, yt = _as_tokens(x), _as_tokens(y)
    out = np.empty((len(xt), len(yt)))
    for start, block in _identity_blocks(xt, yt, chunk):
        out[start : start + len(block)] = block.numpy()
    return out


def identity(a: np.ndarray, b: np.ndarray) -> float:
    """Identity of two aligned sequences (definition in the module docstring)."""
    return float(pairwise_identity(a, b)[0, 0])


def cluster(seqs: np.ndarray, threshold: float = 0.8, seed: int = 0, block: int = 256) -> np.ndarray:
    """Greedy CD-HIT-style clusters: the centre index of each sequence's cluster.

    Sequences are visited in a seeded random order; each one not yet in a
    cluster becomes a centre and takes every unclustered sequence with identity
    >= `threshold` to it. So each member is close to its centre and centres are
    pairwise below the threshold, but members of different clusters may still
    be close (this is not single linkage). Centres are tried `block` at a time
    against the unclustered sequences in one matmul; the result is the same as
    visiting them one by one.
    """
    t = _as_tokens(seqs)
    n = len(t)
    centre = np.full(n, -1, dtype=np.int64)
    remaining = np.random.default_rng(seed).permutation(n)
    while len(remaining):
        candidates = remaining[:block]
        ((_, ident),) = _identity_blocks(t[candidates], t[remaining], chunk=len(candidates))
        close = (ident >= threshold - 1e-12).numpy()
        for k, c in enumerate(candidates):
            if centre[c] >= 0:
                continue
            members = remaining[close[k] & (centre[remaining] < 0)]
            centre[members] = c
            centre[c] = c  # an all-gap sequence has identity 0 even to itself
        remaining = remaining[centre[remaining] < 0]
    return centre


def cluster_split(
    seqs: np.ndarray, threshold: float = 0.8, heldout_fraction: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, held-out) indices such that no `cluster` straddles the two.

    Whole clusters go to held-out in a seeded random order; a cluster is taken
    only when it brings the held-out count closer to `heldout_fraction * N`, so
    one large cluster cannot swallow the held-out set and small ones fill the
    remainder. Held-out sequences are therefore below `threshold` identity to
    every train cluster centre, which is what makes held-out likelihoods a test
    of generalisation rather than of memorising near-duplicates.
    """
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must lie in [0, 1), got {heldout_fraction}")
    centre = cluster(seqs, threshold, seed)
    centres, sizes = np.unique(centre, return_counts=True)
    target = heldout_fraction * len(centre)
    rng = np.random.default_rng([seed, 1])
    held, count = [], 0
    for k in rng.permutation(len(centres)):
        if abs(count + sizes[k] - target) < abs(count - target):
            held.append(centres[k])
            count += sizes[k]
    heldout = np.isin(centre, held)
    return np.flatnonzero(~heldout), np.flatnonzero(heldout)


def novelty(generated: np.ndarray, train: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """1 - the highest identity of each generated sequence to any train sequence (0 = copied)."""
    g, t = _as_tokens(generated), _as_tokens(train)
    best = np.empty(len(g))
    for start, block in _identity_blocks(g, t, chunk):
        best[start : start + len(block)] = block.max(1).values.numpy()
    return 1.0 - best


def diversity(generated: np.ndarray, chunk: int = 1024) -> float:
    """Mean identity between distinct generated sequences; lower means more diverse.

    NaN for fewer than two sequences, where it is undefined.
    """
    g = _as_tokens(generated)
    n = len(g)
    if n < 2:
        return float("nan")
    total = 0.0
    for start, block in _identity_blocks(g, g, chunk):
        total += float(block.sum()) - float(block.diagonal(start).sum())
    return total / (n * (n - 1))


def sequence_weights(seqs: np.ndarray, threshold: float = 0.8, chunk: int = 1024) -> np.ndarray:
    """1 / (number of sequences with identity >= `threshold`, itself included).

    Down-weights redundant subfamilies so that a model fitted to the alignment
    is not dominated by whatever happened to be sequenced most. A sequence
    always counts itself, even when all gap (identity 0 to itself).
    """
    t = _as_tokens(seqs)
    counts = np.empty(len(t))
    for start, block in _identity_blocks(t, t, chunk):
        close = block >= threshold - 1e-12
        close.diagonal(start).fill_(False)
        counts[start : start + len(block)] = close.sum(1).numpy() + 1
    return 1.0 / counts
