"""The family oracle: how natural, novel and diverse generated proteins are.

It is fitted on the held-out split only, which neither the denoiser nor the
policy ever trains on, so a generator cannot score well by copying:

- a Potts model by pseudo-likelihood (sequence reweighting at the split's
  identity threshold, L2), and the training naturals' 5th-percentile energy
  under it (`below_p5`: as low as the best 5% of real members the model has
  not seen, as it has not seen the generated ones);
- a profile HMM built on the held-out alignment, or a given Pfam HMM (bits);
- the training sequences, for novelty (1 - max identity to train).

`batch_identity` is each sequence's mean identity to the others decoded in the
same batch: its mean is the diversity (lower = more diverse), comparable across
orders at equal batch size.

    python -m aop_ray.protein.oracle --alignment FAMILY.a2m --family pf00014 --out data/pf00014 [--hmm PF00014.hmm]

writes `OUT/train/` and `OUT/heldout/` (Parquet shards of the split), `OUT/oracle/`, and
`OUT/train_potts.pt`: a Potts model of the *training* split, fitted the same way, for training a
policy against (`aop.target: energy`). The oracle's own model never enters training.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aop_ray import cli
from aop_ray.cli import run_main
from aop_ray.errors import InputError
from aop_ray.protein.alignment import (
    Alignment,
    cluster_split,
    novelty,
    pairwise_identity,
    read_alignment,
    sequence_weights,
)
from aop_ray.protein.hmm import build_hmm, hmm_bits, load_hmm
from aop_ray.protein.potts import Potts, fit_plm
from aop_ray.readers import read_json_object
from aop_ray.tasks.protein import Protein

ORACLE_JSON = "oracle.json"
TRAIN_POTTS = "train_potts.pt"  # the training split's Potts model: what aop.target energy trains against


@dataclasses.dataclass
class FamilyOracle:
    potts: Potts
    hmm: Any  # pyhmmer.plan7.HMM
    train: np.ndarray  # (N, L) training sequences, for novelty
    energy_p5: float
    family: str

    def score(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per sequence (B,): potts_energy, below_p5, hmm_bits (NaN: no HMMER hit), hmm_hit, novelty, batch_identity."""
        x = tokens.cpu().numpy()
        energy = np.asarray(self.potts.energy(x))
        bits = hmm_bits(self.hmm, x)
        ident = pairwise_identity(x, x)
        np.fill_diagonal(ident, np.nan)
        with np.errstate(all="ignore"):
            batch_identity = np.nanmean(ident, axis=1) if len(x) > 1 else np.full(len(x), np.nan)
        table = {
            "potts_energy": energy,
            "below_p5": (energy < self.energy_p5).astype(float),
            "hmm_bits": bits,
            "hmm_hit": (~np.isnan(bits)).astype(float),
            "novelty": novelty(x, self.train),
            "batch_identity": batch_identity,
        }
        return {name: torch.as_tensor(np.asarray(v, dtype=np.float64)).float() for name, v in table.items()}

    def save(self, out: Path) -> None:
        """Into a temporary directory, then renamed: never a half-written oracle."""
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        self.potts.save(tmp / "potts.pt")
        with open(tmp / "family.hmm", "wb") as f:
            self.hmm.write(f)
        np.save(tmp / "train.npy", self.train, allow_pickle=False)
        (tmp / ORACLE_JSON).write_text(
            json.dumps({"family": self.family, "length": self.potts.L, "energy_p5": self.energy_p5}, indent=2)
        )
        os.replace(tmp, out)

    @staticmethod
    def load(path: str | Path, task: Protein) -> FamilyOracle:
        path = Path(path)
        if not (path / ORACLE_JSON).is_file():
            raise InputError(
                f"{path}: not a family oracle (no {ORACLE_JSON}; build one with python -m aop_ray.protein.oracle)"
            )
        meta = read_json_object(path / ORACLE_JSON, "oracle description")
        for field, want in (("family", task.family), ("length", task.length)):
            if meta.get(field) != want:
                raise InputError(
                    f"{path / ORACLE_JSON}: field {field!r} is {meta.get(field)!r}, the checkpoint's task has {want!r}"
                )
        try:
            train = np.load(path / "train.npy", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise InputError(f"{path / 'train.npy'}: unreadable ({err})") from None
        return FamilyOracle(
            potts=Potts.load(path / "potts.pt", L=task.length),
            hmm=load_hmm(path / "family.hmm"),
            train=train,
            energy_p5=float(meta["energy_p5"]),
            family=task.family,
        )


def fit(
    train: np.ndarray, heldout: Alignment, family: str, hmm: Any = None, threshold: float = 0.8, plm_steps: int = 200
) -> FamilyOracle:
    """The oracle of a split: Potts and HMM from the held-out sequences, novelty against `train`.

    The energy threshold is the 5th percentile over the *training* naturals, which the Potts model
    has not seen, like the generated sequences it will score: in-sample energies are far lower
    (PF00014: held-out mean -212 against -189 for train), so a held-out threshold would put no
    generated sequence and almost no unseen natural below it.
    """
    weights = sequence_weights(heldout.seqs, threshold)
    potts = fit_plm(heldout.seqs, weights, steps=plm_steps)
    energies = np.asarray(potts.energy(train))
    return FamilyOracle(
        potts=potts,
        hmm=hmm if hmm is not None else build_hmm(heldout, family),
        train=train,
        energy_p5=float(np.percentile(energies, 5)),
        family=family,
    )


MIN_SPLIT = 2  # sequences on each side of the split: a Potts fit and a held-out likelihood need some


def build(args: argparse.Namespace) -> None:
    from aop_ray import data

    out = Path(args.out)
    if out.exists():
        raise InputError(f"--out: {out} already exists; refusing to overwrite")
    hmm = load_hmm(args.hmm) if args.hmm else None  # refused before any compute
    alignment = read_alignment(args.alignment)
    task = Protein(length=alignment.seqs.shape[1], family=args.family)
    train_idx, heldout_idx = cluster_split(alignment.seqs, args.identity, args.heldout, args.seed)
    if len(heldout_idx) < MIN_SPLIT or len(train_idx) < MIN_SPLIT:
        raise InputError(
            f"--alignment {args.alignment}: {len(alignment)} sequences split into {len(train_idx)} train and "
            f"{len(heldout_idx)} held out at identity {args.identity}; the oracle needs at least {MIN_SPLIT} in "
            "each (more sequences, or another --identity / --heldout)"
        )
    print(
        f"{len(alignment)} sequences x {task.length} columns: {len(train_idx)} train, {len(heldout_idx)} held out "
        f"(identity clusters at {args.identity})"
    )
    heldout = Alignment(
        names=[alignment.names[i] for i in heldout_idx],
        seqs=alignment.seqs[heldout_idx],
        lines=[alignment.lines[i] for i in heldout_idx],
    )
    oracle = fit(alignment.seqs[train_idx], heldout, args.family, hmm, args.identity, args.plm_steps)
    train = alignment.seqs[train_idx]
    train_potts = fit_plm(train, sequence_weights(train, args.identity), steps=args.plm_steps)
    instances = task.from_alignment(alignment, Path(args.alignment))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    data.write_shards(instances.take(train_idx), task, tmp / "train")
    data.write_shards(instances.take(heldout_idx), task, tmp / "heldout")
    oracle.save(tmp / "oracle")
    train_potts.save(tmp / TRAIN_POTTS)
    os.replace(tmp, out)
    print(
        f"wrote {out}/train, {out}/heldout, {out}/oracle and {out}/{TRAIN_POTTS} (5th-percentile Potts energy of train "
        f"{oracle.energy_p5:.2f}); task: {{name: protein, length: {task.length}, family: {task.family}}}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser(
        "aop_ray.protein.oracle",
        description="Split an aligned protein family by identity clusters and fit its "
        "oracle (Potts by pseudo-likelihood + profile HMM) on the held-out "
        "part.",
    )
    parser.add_argument("--alignment", required=True, help="aligned FASTA or A2M (gzip allowed)")
    parser.add_argument("--family", required=True, help="family label, recorded in the task (e.g. pf00014)")
    parser.add_argument("--out", required=True, help="output directory (must not exist)")
    parser.add_argument("--hmm", default=None, help="a HMMER3 model (e.g. Pfam's) instead of one built on held-out")
    parser.add_argument("--identity", type=float, default=0.8, help="cluster identity threshold (default 0.8)")
    parser.add_argument("--heldout", type=float, default=0.1, help="held-out fraction of sequences (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="split seed")
    parser.add_argument("--plm-steps", type=int, default=200, help="L-BFGS steps of the Potts fit (default 200)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(lambda: build(args), args.debug)


if __name__ == "__main__":
    sys.exit(main())
