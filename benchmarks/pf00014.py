"""Benchmark: every unmasking order generating Kunitz domains (Pfam PF00014), scored by the family oracle.

    python benchmarks/pf00014.py [--reuse]   # evaluate the committed checkpoints, write docs/results/pf00014.md

The identity-cluster split and the oracle (Potts + HMM fitted on the held-out split) are built
first when `data/pf00014` is missing (python -m aop_ray.protein.oracle, ~4 min). The denoiser
(benchmarks/checkpoints/pf00014) and the policy next to it were trained on the training split only
(tune_configs/pf00014_denoiser.yaml, tune_configs/pf00014_policy.yaml). Every order samples one
sequence per held-out row from the fully masked state at temperature 1 with the same seed; the
naturals are scored by the same oracle in the same batch size, as the reference rows.
"""

from __future__ import annotations

import datetime
import json
import sys

import numpy as np
import torch
from common import ROOT, commit, describe_model, evaluate, machine, reuse_arguments, sh, write_report

sys.path.insert(0, str(ROOT))
from aop_ray.data import load_instances  # noqa: E402
from aop_ray.protein.oracle import FamilyOracle  # noqa: E402
from aop_ray.tasks.protein import Protein  # noqa: E402

ALIGNMENT = ROOT.parent / "shared" / "data" / "protein" / "PF00014_mgap6.fasta.gz"
SPLIT = "data/pf00014"
DENOISER = "benchmarks/checkpoints/pf00014"
POLICY = "benchmarks/checkpoints/pf00014-policy"
HEURISTICS = "random,confidence,margin,entropy"
# The first 512 held-out rows (two batches of 256): all 1,360 with the planner-NLL pass take ~1 h on 2 cores.
OPTIONS = ("--token-temperature", "1", "--seed", "0", "--oracle", f"{SPLIT}/oracle", "--limit", "512")
BATCH = 256  # evaluate's default: batch_identity is measured within batches of this size
REPORT = ROOT / "docs" / "results" / "pf00014.md"
METRICS = ("potts_energy", "below_p5", "hmm_bits", "hmm_hit", "novelty", "batch_identity")


def natural_rows(task: Protein) -> list[dict]:
    """The oracle's metrics of real family members, batched as the generated ones are."""
    oracle = FamilyOracle.load(ROOT / SPLIT / "oracle", task)
    rows = []
    for split, note in (("heldout", "the oracle's own fitting set"), ("train", "out-of-sample for the Potts model")):
        seqs = torch.as_tensor(load_instances(task, ROOT / SPLIT / split).target)
        seqs = seqs[torch.randperm(len(seqs), generator=torch.Generator().manual_seed(0))[:1024]]
        scores = [oracle.score(seqs[i : i + BATCH]) for i in range(0, len(seqs), BATCH)]
        row = {m: float(np.nanmean(torch.cat([s[m] for s in scores]).numpy())) for m in METRICS}
        rows.append({"order": f"natural {split} ({note})", "n": len(seqs), **row})
    return rows


def fmt(r: dict) -> str:
    nll = f"{r['planner_nll']:.3f}" if r.get("planner_nll") is not None else "-"
    per_s = f"{r['per_s']:.0f}" if "per_s" in r else "-"
    return (
        f"| {r['order']} | {r['potts_energy']:.1f} | {r['below_p5']:.3f} | {r['hmm_bits']:.1f} | "
        f"{r['hmm_hit']:.3f} | {r['novelty']:.3f} | {r['batch_identity']:.3f} | {nll} | {per_s} | {r['n']} |"
    )


def main() -> int:
    args = reuse_arguments(__doc__, "out/pf00014")
    built = []
    if not (ROOT / SPLIT / "oracle").is_dir():
        if not ALIGNMENT.is_file():
            print(f"error: {ALIGNMENT} not found (the Pfam PF00014 alignment)", file=sys.stderr)
            return 1
        cmd = [
            sys.executable,
            "-m",
            "aop_ray.protein.oracle",
            "--alignment",
            str(ALIGNMENT),
            "--family",
            "pf00014",
            "--out",
            SPLIT,
        ]
        built.append(
            f"- split and oracle: `python -m aop_ray.protein.oracle --alignment {ALIGNMENT.relative_to(ROOT.parent)}"
            f" --family pf00014 --out {SPLIT}` ({sh(cmd) / 60:.1f} min)"
        )
    data = f"{SPLIT}/heldout"
    heuristics = evaluate(DENOISER, data, HEURISTICS, "out/pf00014/heuristics", *OPTIONS, reuse=args.reuse)
    rows, commands = list(heuristics.rows), [f"- {heuristics.line()}"]
    if (ROOT / POLICY / "manifest.json").is_file():
        learned = evaluate(POLICY, data, "learned", "out/pf00014/learned", *OPTIONS, reuse=args.reuse)
        rows += learned.rows
        commands.append(f"- {learned.line()}; policy: {learned.rows[0].get('policy', '-')}")
    else:
        commands.append(f"- not measured (no checkpoint): learned ({POLICY})")
    manifest = json.loads((ROOT / DENOISER / "manifest.json").read_text())
    task = Protein(length=53, family="pf00014")
    rows += natural_rows(task)
    oracle = json.loads((ROOT / SPLIT / "oracle" / "oracle.json").read_text())
    table = "\n".join(
        [
            "| order | Potts energy | below p5 | HMM bits | HMM hit | novelty | batch identity | "
            "planner NLL | seqs/s | n |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *map(fmt, rows),
        ]
    )
    report = "\n".join(
        [
            "# Proteins: every order generating PF00014 (Kunitz) domains",
            "",
            f"- date: {datetime.datetime.now():%Y-%m-%d %H:%M}",
            f"- machine: {machine()}",
            f"- report written at commit {commit()}; each evaluation's own commit is listed with its command",
            f"- denoiser: `{DENOISER}` ({describe_model(manifest)}), trained on the "
            "training split only (`tune_configs/pf00014_denoiser.yaml`)",
            f"- oracle: Potts (PLM) and HMM fitted on the held-out split; `below p5` threshold: the training "
            f"naturals' (out-of-sample) 5th-percentile energy "
            f"{oracle['energy_p5']:.1f}",
            "- command: `python benchmarks/pf00014.py`, which ran:",
            *built,
            *commands,
            "",
            table,
            "",
            "Every order samples each revealed residue at temperature 1, seed 0, one sequence per held-out row "
            "(the first 512). "
            "Potts energy: lower is more family-like; below p5: fraction below the training naturals' 5th-percentile "
            "energy; HMM bits: mean over sequences with a hit, HMM hit: fraction with one; novelty: 1 - max identity "
            "to a training sequence; batch identity: mean pairwise identity within a batch of 256 (lower = more "
            "diverse); planner NLL: teacher-forced NLL of the held-out natural along the order (what the AOP "
            "loss with target `ce` lowers); seqs/s: decoding, 2 CPU threads. The natural rows are real members "
            "scored the same way (1,024 drawn at random per split); the held-out ones were the oracle's fitting data.",
            "",
        ]
    )
    print(table)
    write_report(REPORT, report)
    print(f"wrote {REPORT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
