"""Benchmark: Potts energy against batch diversity for every order, swept over the token temperature.

    python benchmarks/protein_temperature.py --family pf00014 [--reuse] [--n 256]
    python benchmarks/protein_temperature.py --family dhfr [--reuse]

For each temperature in TEMPERATURES every heuristic order, the confidence heuristics reversed (least
sure first; a diagnostic), and each learned order trained *for that temperature* when its checkpoint
exists (`benchmarks/checkpoints/<family>-policy-t<T>`: `learned`, GRPO rewarded by the training split's
Potts energy; `<family>-policy-aop-t<T>`: `learned-aop`, the AOP loss with the one-step `energy`
target), samples one sequence per held-out row (the first `--n`, seed 0) from
the fully masked state; the family oracle (fitted on the held-out split) scores each sequence. Writes
docs/results/<family>_temperature.md and the plot next to it.

Paired tests: at each temperature each learned order against each heuristic, per held-out row (the same
row index, drawn from the same seeded random stream: two orders that nearly agree draw nearly the same
sequences, and the pairing removes that shared noise), two-sided sign-flip permutation p of the mean
difference.
"Below the curve": the learned point's energy minus the heuristic's energy interpolated at the learned
point's diversity along that heuristic's temperature curve (negative = below).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import ROOT, commit, describe_model, machine, sh, write_report

sys.path.insert(0, str(ROOT))
from aop_ray import checkpoints  # noqa: E402
from aop_ray.data import load_instances  # noqa: E402
from aop_ray.orders import get_order  # noqa: E402
from aop_ray.protein.oracle import FamilyOracle  # noqa: E402
from aop_ray.sampling import DecodeConfig, decode_dataset  # noqa: E402
from aop_ray.stats import paired_permutation  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "protein"
FAMILIES = {
    "pf00014": {
        "title": "PF00014 (Kunitz)",
        "alignment": DATA / "PF00014_mgap6.fasta.gz",
        "hmm": None,
    },
    "dhfr": {
        "title": "DHFR (PF00186)",
        "alignment": DATA / "DHFR.a2m",
        "hmm": DATA / "PF00186_DHFR_1.hmm",
    },
}
TEMPERATURES = (0.1, 0.25, 0.5, 0.75, 1.0)
HEURISTICS = ("random", "confidence", "margin", "entropy")
# Diagnostic orders, not offered to users: a confidence heuristic reversed (the least sure position first).
# They ask whether random order wins at low temperature by *not* being confidence-first.
REVERSED = {"reverse-confidence": "confidence", "reverse-margin": "margin"}
BATCH = 256  # batch_identity is measured within decode batches of this size
METRICS = ("potts_energy", "batch_identity", "hmm_bits", "novelty", "below_p5")


# The learned orders, one checkpoint per temperature: `learned` is the order the project recommends
# (GRPO on the energy reward); the AOP loss's one-step energy target is reported beside it.
LEARNED = {"learned": "policy", "learned-aop": "policy-aop"}


def policy_dir(family: str, arm: str, temperature: float) -> str:
    return f"benchmarks/checkpoints/{family}-{LEARNED[arm]}-t{temperature:g}"


def learned_order_temperature(manifest: dict) -> float:
    """A GRPO policy is used as it was trained: positions sampled from softmax(scores / its rollout
    temperature). An AOP policy takes its best position (0)."""
    return float(manifest["grpo"]["rollout_temperature"]) if manifest.get("stage") == "grpo" else 0.0


def decode_scores(
    family: str, order_name: str, temperature: float, n: int, out: Path, reuse: bool
) -> dict[str, np.ndarray] | None:
    """Per-sequence oracle scores of `order_name` at `temperature` (cached in `out`), or None when the
    learned order has no checkpoint for this temperature."""
    cached = out / f"{order_name}-t{temperature:g}.npz"
    if reuse and cached.is_file():
        with np.load(cached, allow_pickle=False) as f:
            return dict(f)
    learned = order_name in LEARNED
    source = policy_dir(family, order_name, temperature) if learned else f"benchmarks/checkpoints/{family}"
    if not (ROOT / source / "manifest.json").is_file():
        return None
    denoiser, task, manifest = checkpoints.load_denoiser(ROOT / source)
    if learned:
        order = checkpoints.load_policy(ROOT / source, task, manifest["model"])
    elif order_name in REVERSED:
        heuristic = get_order(REVERSED[order_name], task=task)
        order = lambda state: -heuristic(state)  # noqa: E731
    else:
        order = get_order(order_name, task=task)
    order_temperature = learned_order_temperature(manifest) if learned else 0.0
    rows = load_instances(task, ROOT / "data" / family / "heldout").take(np.arange(n))
    oracle = FamilyOracle.load(ROOT / "data" / family / "oracle", task)
    start = time.perf_counter()
    decoded = decode_dataset(
        denoiser,
        task,
        torch.as_tensor(rows.tokens),
        torch.as_tensor(rows.fixed),
        torch.as_tensor(rows.target),
        order,
        DecodeConfig(
            token_temperature=temperature, order_temperature=order_temperature, batch_size=BATCH, planner_nll=False
        ),
        generator=torch.Generator().manual_seed(0),
        scorer=oracle.score,
    )
    scores = {m: decoded.metrics[m].numpy() for m in METRICS}
    scores["seconds"] = np.array(time.perf_counter() - start)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(cached, **scores)
    energy, identity = np.mean(scores["potts_energy"]), np.mean(scores["batch_identity"])
    print(f"{family} {order_name:<11} T={temperature:<4g} energy {energy:8.2f} identity {identity:.3f} "
          f"({float(scores['seconds']):.0f} s)", flush=True)  # fmt: skip
    return scores


def interpolate(curve: list[tuple[float, float]], x: float) -> float:
    """The energy of a (identity, energy) polyline at identity `x`; NaN outside its range."""
    for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
        lo, hi = min(x0, x1), max(x0, x1)
        if lo <= x <= hi:
            return y0 if hi == lo else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return float("nan")


def paired(results: dict[str, dict[float, dict[str, np.ndarray]]], mine: str, theirs: str, t: float) -> str:
    """The table cells comparing order `mine` with `theirs` at temperature `t`, row by row: the mean energy
    and identity differences with their sign-flip p, and `mine`'s energy against `theirs`'s curve."""
    a, b = results[mine][t], results[theirs][t]
    de = torch.as_tensor(a["potts_energy"]), torch.as_tensor(b["potts_energy"])
    di = torch.as_tensor(a["batch_identity"]), torch.as_tensor(b["batch_identity"])
    curve = sorted(
        (float(np.mean(s["batch_identity"])), float(np.mean(s["potts_energy"]))) for s in results[theirs].values()
    )
    gap = float(np.mean(a["potts_energy"])) - interpolate(curve, float(np.mean(a["batch_identity"])))
    return (
        f"{float((de[0] - de[1]).mean()):+.2f} | {paired_permutation(*de):.3g} | {float((di[0] - di[1]).mean()):+.3f} "
        f"| {paired_permutation(*di):.3g} | {'outside its range' if np.isnan(gap) else f'{gap:+.2f}'} |"
    )


def plot(results: dict[str, dict[float, dict[str, np.ndarray]]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.5))
    for order, by_t in results.items():
        ts = sorted(by_t)
        xs = [float(np.mean(by_t[t]["batch_identity"])) for t in ts]
        ys = [float(np.mean(by_t[t]["potts_energy"])) for t in ts]
        style = {"linewidth": 2.5, "color": "black"} if order == "learned" else {"linewidth": 1.2}
        if order == "learned-aop":
            style = {"linewidth": 1.5, "color": "grey", "linestyle": "--"}
        if order in REVERSED:
            style = {"linewidth": 1.0, "linestyle": ":"}
        ax.plot(xs, ys, marker="o", label=order, **style)
        for x, y, t in zip(xs, ys, ts):
            ax.annotate(f"{t:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("batch identity (mean pairwise, lower = more diverse)")
    ax.set_ylabel("Potts energy (mean, lower = more family-like)")
    ax.set_title(f"{title}: one curve per order, points labelled by token temperature")
    ax.legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=sorted(FAMILIES), required=True)
    parser.add_argument("--n", type=int, default=256, help="held-out rows per (order, temperature)")
    parser.add_argument("--reuse", action="store_true", help="reuse the per-sequence scores already in out/")
    args = parser.parse_args()
    fam = FAMILIES[args.family]
    split = ROOT / "data" / args.family
    built = []
    if not (split / "oracle").is_dir():
        cmd = [sys.executable, "-m", "aop_ray.protein.oracle", "--alignment", str(fam["alignment"]),
               "--family", args.family, "--out", str(split)]  # fmt: skip
        if fam["hmm"] is not None:
            cmd += ["--hmm", str(fam["hmm"])]
        built.append(f"- split and oracle: `{' '.join(cmd[1:])}` ({sh(cmd) / 60:.1f} min)")
    out = ROOT / "out" / "protein_temperature" / args.family
    results: dict[str, dict[float, dict[str, np.ndarray]]] = {}
    for temperature in TEMPERATURES:
        for order in (*HEURISTICS, *REVERSED, *LEARNED):
            scores = decode_scores(args.family, order, temperature, args.n, out, args.reuse)
            if scores is not None:
                results.setdefault(order, {})[temperature] = scores

    lines = [
        "| T | order | Potts energy | ± SE | batch identity | HMM bits | novelty | below p5 | seqs/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for temperature in TEMPERATURES:
        for order, by_t in results.items():
            if temperature in by_t:
                s = by_t[temperature]
                e = s["potts_energy"]
                lines.append(
                    f"| {temperature:g} | {order} | {e.mean():.2f} | {e.std(ddof=1) / np.sqrt(len(e)):.2f} | "
                    f"{np.mean(s['batch_identity']):.3f} | {np.nanmean(s['hmm_bits']):.1f} | "
                    f"{np.mean(s['novelty']):.3f} | {np.mean(s['below_p5']):.3f} | "
                    f"{len(e) / float(s['seconds']):.1f} |"
                )
    tests = [
        "| T | order | against | Δ energy (it − heuristic) | p | Δ batch identity | p | below its curve by |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for temperature in TEMPERATURES:
        for arm in LEARNED:
            if temperature in results.get(arm, {}):
                for order in HEURISTICS:
                    tests.append(f"| {temperature:g} | {arm} | {order} | {paired(results, arm, order, temperature)}")
    diagnostic = [
        "| T | order | Δ energy (it − random) | p | Δ batch identity | p | below random's curve by |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {temperature:g} | {order} | {paired(results, order, 'random', temperature)}"
            for temperature in TEMPERATURES
            for order in REVERSED
        ),
    ]
    png = ROOT / "docs" / "results" / f"{args.family}_temperature.png"
    plot(results, fam["title"], png)
    manifest = json.loads((ROOT / "benchmarks" / "checkpoints" / args.family / "manifest.json").read_text())
    oracle = json.loads((split / "oracle" / "oracle.json").read_text())
    trained = []
    for arm in LEARNED:
        for t in sorted(results.get(arm, {})):
            policy = json.loads((ROOT / policy_dir(args.family, arm, t) / "manifest.json").read_text())
            how = f"GRPO, positions sampled at order temperature {learned_order_temperature(policy):g}" if policy[
                "stage"] == "grpo" else f"AOP target {policy['aop']['target']}, best position"  # fmt: skip
            trained.append(f"`{policy_dir(args.family, arm, t)}` ({arm}: {how})")
    report = "\n".join(
        [
            f"# Proteins: energy against diversity over the token temperature, {fam['title']}",
            "",
            f"- date: {datetime.datetime.now():%Y-%m-%d %H:%M}",
            f"- machine: {machine()}",
            f"- commit: {commit()}",
            f"- command: `python benchmarks/protein_temperature.py --family {args.family} --n {args.n}`",
            *built,
            f"- denoiser: `benchmarks/checkpoints/{args.family}` ({describe_model(manifest)}), training split only",
            f"- learned orders, each trained for the temperature it samples at: {', '.join(trained) or 'none'}",
            f"- oracle: Potts (PLM) and HMM fitted on the held-out split; below p5: under the training naturals' "
            f"5th-percentile energy {oracle['energy_p5']:.1f}",
            f"- n = {args.n} held-out rows per (order, temperature), one sequence each, seed 0; batch identity "
            f"within decode batches of {BATCH}",
            "",
            f"![energy against diversity]({png.name})",
            "",
            *lines,
            "",
            "## Paired tests: each learned order at the temperature it was trained for",
            "",
            *tests,
            "",
            "## Diagnostic: the confidence heuristics reversed (least sure first), against random order",
            "",
            *diagnostic,
            "",
        ]
    )
    print("\n".join(lines + [""] + tests + [""] + diagnostic))
    path = ROOT / "docs" / "results" / f"{args.family}_temperature.md"
    write_report(path, report)
    print(f"wrote {path} and {png.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
