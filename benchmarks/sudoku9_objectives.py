"""Benchmark: which policy objective and features beat margin on hard 9x9 Sudoku, on one fixed state pool.

    python benchmarks/sudoku9_objectives.py [--train-puzzles 1200] [--test-puzzles 600] [--steps 1500]
        [--arms ...] [--report docs/results/sudoku9_objectives.md]

Which objective and features beat margin, isolated from Ray and from the DAgger schedule: the frozen committed
denoiser's margin trajectories (teacher-forced; a recipe may name another base order) over generated
unique-solution puzzles give one pool of states; its outputs (log-probabilities, final hidden
states) are computed once, so every arm trains its policy network on exactly the same states for the
same steps, at about 2,000 states/s on 2 CPU cores instead of about 200 with a denoiser forward per
state. Arms cross the objective, `expected` (the AOP loss, E_pi[error]), `pairwise` (rank the margin
order's top 8 by error, losses.pairwise_rank_loss) or `correctness` (every masked position's score
fitted as the logit that the denoiser is right there, losses.correctness_loss), with the policy: the
transformer encoder (d48, 2 layers) on generic features, generic plus the revealed-token group
counts (`group_tokens`), generic plus the denoiser's hidden state (`hidden`), or generic plus the
Sudoku rule features; or the token-axis encoder (width 16, 2 rounds, or 3 in `token_axis-3rounds`)
on its generic inputs.
The default arms are the first run's; `--arms` picks others. Each trained policy and each reference
order then decodes the same held-out hard puzzles (24-28 clues); the paired columns count the
puzzles one order solves and margin (or the best heuristic) does not, with the exact McNemar p-value.
An arm may name a training recipe, `objective:features@recipe` (RECIPES): the product's recipes
replayed on the pool, to separate what each of their differences is worth; without one, an arm
trains `--steps` of `--batch` states on `--train-puzzles` at a constant learning rate.
Writes `--report` (default docs/results/sudoku9_objectives.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import torch
from common import ROOT, header, write_report

sys.path.insert(0, str(ROOT))
from aop_ray.aop import Trajectories, policy_objective  # noqa: E402
from aop_ray.checkpoints import load_denoiser  # noqa: E402
from aop_ray.config import TOKEN_AXIS_FEATURES, AopConfig, PolicyConfig, TrainConfig  # noqa: E402
from aop_ray.data import generate  # noqa: E402
from aop_ray.models.policies import PolicyNet, make_policy  # noqa: E402
from aop_ray.orders import DecodeState, Order, get_order, select  # noqa: E402
from aop_ray.sampling import decode_dataset  # noqa: E402
from aop_ray.stats import mcnemar  # noqa: E402
from aop_ray.training.loop import lr_at  # noqa: E402

DENOISER = "benchmarks/checkpoints/sudoku9"
GENERIC = ["probs", "stats", "group_probs"]
TOKEN_AXIS = {"encoder": "token_axis", "d_model": 16, "n_layers": 2, "features": list(TOKEN_AXIS_FEATURES)}
FEATURES = {
    "generic": {"features": GENERIC},
    "generic+group_tokens": {"features": GENERIC + ["group_tokens"]},
    "generic+hidden": {"features": GENERIC + ["hidden"]},
    "generic+task": {
        "features": GENERIC,
        "task_features": ["candidates", "naked_single", "hidden_single", "argmax_legal"],
    },
    "token_axis": TOKEN_AXIS,
    "token_axis-3rounds": {**TOKEN_AXIS, "n_layers": 3},
}
OBJECTIVES = ("expected", "pairwise", "correctness")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A training budget and schedule, and the number of training puzzles whose trajectories form the pool."""

    puzzles: int
    steps: int
    batch: int
    min_lr_ratio: float = 1.0  # cosine decay to lr * min_lr_ratio after a 50-step warm-up (1.0: constant)
    weight_decay: float = 0.0
    base: str = "margin"  # the policy's base order, and the order whose trajectories form the pool

    def describe(self) -> str:
        schedule = "constant lr" if self.min_lr_ratio == 1.0 else f"cosine decay to {self.min_lr_ratio:g} x lr"
        return (
            f"base {self.base} on a pool of {self.base} trajectories of {self.puzzles} training puzzles, "
            f"{self.steps} steps of {self.batch} states, {schedule}, weight decay {self.weight_decay:g}"
        )


# The two product recipes of the token-axis policy (tune_configs/sudoku9_policy.yaml; batch_size is the
# global batch over both workers and trajectory_instances is per worker, so the pool holds twice as many
# puzzles), and each with one of their differences exchanged. The DAgger refresh of the session-9 recipe
# has no counterpart here: the pool is fixed.
HEADLINE = Recipe(puzzles=1200, steps=1500, batch=128)
RECIPES = {
    "headline": HEADLINE,
    "headline-cosine-wd": dataclasses.replace(HEADLINE, min_lr_ratio=0.1, weight_decay=0.01),
    "headline-900-steps": dataclasses.replace(HEADLINE, steps=900),
    "headline-512-puzzles": dataclasses.replace(HEADLINE, puzzles=512),
    "headline-2400-puzzles": dataclasses.replace(HEADLINE, puzzles=2400),
    "headline-confidence": dataclasses.replace(HEADLINE, base="confidence"),
    "session9-no-dagger": Recipe(puzzles=512, steps=900, batch=128, min_lr_ratio=0.1, weight_decay=0.01),
}
ARMS = [f"{objective}:{features}" for features in FEATURES for objective in OBJECTIVES] + [
    f"expected:{features}@{recipe}" for features in ("token_axis", "token_axis-3rounds") for recipe in RECIPES
]
DEFAULT_ARMS = [arm for arm in ARMS if not arm.startswith("correctness") and "token_axis" not in arm]  # the first run
REFERENCES = ["margin", "confidence", "entropy", "singles"]
REPORT = ROOT / "docs" / "results" / "sudoku9_objectives.md"


def state_pool(denoiser: torch.nn.Module, task, n: int, order: Order) -> tuple[torch.Tensor, ...]:
    """(x_t, x0, denoiser log-probs, final hidden states in bf16) of every state of the `order`
    trajectories of n training puzzles."""
    inst = generate(task, n, seed=11, options={"clues": [24, 30], "unique": True})
    tokens, fixed, target = (torch.as_tensor(a) for a in (inst.tokens, inst.fixed, inst.target))
    trajectories = Trajectories.collect(denoiser, order, tokens, fixed, target, task.vocab_size)
    xt, x0 = trajectories.all_states()
    live = (xt == task.vocab_size).any(1)
    xt, x0 = xt[live], x0[live]
    logp, hidden = [], []
    with torch.no_grad():
        for lo in range(0, len(xt), 512):
            logits, h = denoiser(xt[lo : lo + 512], return_hidden=True)
            logp.append(logits.float().log_softmax(-1))
            hidden.append(h.bfloat16())
    return xt, x0, torch.cat(logp), torch.cat(hidden)


def parse_arm(arm: str) -> tuple[str, str, str]:
    """`objective:features[@recipe]` as (objective, features, recipe name or "")."""
    head, _, recipe = arm.partition("@")
    objective, features = head.split(":")
    return objective, features, recipe


def arm_recipe(arm: str, args: argparse.Namespace) -> Recipe:
    recipe = parse_arm(arm)[2]
    return RECIPES[recipe] if recipe else Recipe(args.train_puzzles, args.steps, args.batch)


def train_arm(task, hidden_dim: int, arm: str, pool: tuple, recipe: Recipe) -> PolicyNet:
    objective, features, _ = parse_arm(arm)
    aop = AopConfig(target="error", objective=objective)  # pairwise: the top 8 (pairwise_k)
    schedule = TrainConfig(steps=recipe.steps, lr=1e-3, warmup_steps=50, min_lr_ratio=recipe.min_lr_ratio)
    torch.manual_seed(0)
    policy = make_policy(task, hidden_dim, PolicyConfig(**FEATURES[features], base_order=recipe.base))
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3, weight_decay=recipe.weight_decay)
    xt, x0, logp, hidden = pool
    generator = torch.Generator().manual_seed(0)
    start, recent = time.perf_counter(), []
    for step in range(1, recipe.steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step - 1, schedule)
        rows = torch.randint(0, len(xt), (recipe.batch,), generator=generator)
        state = DecodeState(
            tokens=xt[rows],
            masked=xt[rows] == task.vocab_size,
            logits=logp[rows],
            hidden=hidden[rows].float() if policy.needs_hidden else None,
            step=0,
        )
        error = (logp[rows].argmax(-1) != x0[rows]).float()
        shortlist = policy.base(state) if objective == "pairwise" else None
        loss = policy_objective(policy(state), state.masked, error, aop, shortlist)[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        recent.append(loss.item())
        if step % 200 == 0:
            print(
                f"  {arm} step {step}: loss {sum(recent) / len(recent):.5f} ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
            recent = []
    return policy.eval()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-puzzles", type=int, default=1200)
    parser.add_argument("--test-puzzles", type=int, default=600)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--arms", nargs="+", default=DEFAULT_ARMS, choices=ARMS)
    parser.add_argument(
        "--pair-with",
        default=None,
        metavar="ARM",
        help="one of --arms: add a column of paired counts against it (e.g. the recipe it varies)",
    )
    parser.add_argument("--report", default=str(REPORT.relative_to(ROOT)), help="markdown file to write")
    args = parser.parse_args()
    if args.pair_with and args.pair_with not in args.arms:
        parser.error(f"--pair-with: {args.pair_with!r} is not one of --arms")
    torch.set_num_threads(2)
    denoiser, task, manifest = load_denoiser(ROOT / DENOISER)
    recipes = {arm: arm_recipe(arm, args) for arm in args.arms}
    pools, pool_notes = {}, []
    for n, base in sorted({(recipe.puzzles, recipe.base) for recipe in recipes.values()}):
        start = time.perf_counter()
        base_order = get_order(base, task=task)
        pools[n, base] = xt, x0, logp, _ = state_pool(denoiser, task, n, base_order)
        scores = base_order(DecodeState(xt, xt == task.vocab_size, logp, None, 0))
        pick, _ = select(scores, xt == task.vocab_size, 1)
        errors = int(torch.gather(logp.argmax(-1) != x0, 1, pick).sum())
        pool_notes.append(f"{base} trajectories of {n} puzzles: {len(xt)} states, {base}'s pick wrong at {errors}")
        print(f"pool: {pool_notes[-1]} ({time.perf_counter() - start:.0f} s)")
    test = generate(task, args.test_puzzles, seed=12, options={"clues": [24, 28], "unique": True})
    tokens, fixed, target = (torch.as_tensor(a) for a in (test.tokens, test.fixed, test.target))
    orders = {name: get_order(name, task=task) for name in REFERENCES}
    solved, train_seconds = {}, {}
    for arm in args.arms:
        begin = time.perf_counter()
        recipe = recipes[arm]
        orders[arm] = train_arm(task, manifest["model"]["d_model"], arm, pools[recipe.puzzles, recipe.base], recipe)
        train_seconds[arm] = time.perf_counter() - begin
    for name, order in orders.items():
        with torch.no_grad():
            solved[name] = decode_dataset(denoiser, task, tokens, fixed, target, order).solved
        print(f"{name}: {solved[name].float().mean():.3f}", flush=True)
    best = max(["margin", "confidence", "entropy"], key=lambda name: int(solved[name].sum()))
    command = "python benchmarks/sudoku9_objectives.py " + " ".join(sys.argv[1:])
    lines = header("9x9 Sudoku: policy objectives and features on one fixed state pool", command.strip()) + [
        f"- denoiser: `{DENOISER}`; state pool: every state of its teacher-forced trajectories on "
        f"generated unique puzzles (24-30 clues, seed 11): {'; '.join(pool_notes)}",
        f"- policy: transformer d48, 2 layers, or token-axis width 16, 2 rounds (3 in `token_axis-3rounds`) "
        f"(`{'` or `'.join(sorted({parse_arm(a)[1] for a in args.arms}))}`); "
        f"base order as the recipe says (scale 50, learned), AdamW 1e-3, seed 0, no DAgger refresh",
        *sorted({f"- training, `{parse_arm(arm)[2] or 'default'}`: {recipes[arm].describe()}" for arm in args.arms}),
        f"- test: {args.test_puzzles} generated unique puzzles, 24-28 clues (seed 12); greedy, one cell per step",
        "",
        "## Solve rate",
        "",
        f"| order | solved | vs margin: only it / only margin, p | vs {best} (best heuristic): only it / only "
        f"{best}, p |{f' vs {args.pair_with}: only it / only that arm, p |' if args.pair_with else ''} training |",
        "|---|---|---|---|" + "---|" * (2 if args.pair_with else 1),
    ]
    for name in orders:
        rate = f"{solved[name].float().mean():.3f}"
        paired = [
            f"{b} / {c}, {p:.3g}"
            for b, c, p in (mcnemar(solved[name], solved[ref]) for ref in ("margin", best, args.pair_with) if ref)
        ]
        lines.append(
            f"| {name} | {rate} | {' | '.join(paired)} | "
            f"{f'{train_seconds[name]:.0f} s' if name in train_seconds else '-'} |"
        )
    write_report(ROOT / args.report, "\n".join(lines) + "\n")
    print((ROOT / args.report).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
