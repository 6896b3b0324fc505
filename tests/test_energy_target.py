"""AOP target `energy` and GRPO reward `energy` for protein families: the excess Potts energy of a draw,
sampled trajectory pools, the sequence reward, and the config that guards them (the Ray run:
test_protein_task.py)."""

from __future__ import annotations

import itertools

import pytest
import torch
import yaml

from aop_ray.aop import Trajectories, aop_step, free_cost
from aop_ray.config import AopConfig, GrpoConfig, ModelConfig, PolicyConfig, load_config
from aop_ray.errors import InputError
from aop_ray.grpo import energy_reward, grpo_step
from aop_ray.models.denoiser import build_denoiser
from aop_ray.models.policies import make_policy
from aop_ray.orders import get_order
from aop_ray.protein.potts import Potts, _symmetric, excess_energy
from aop_ray.sampling import unmask
from aop_ray.tasks.protein import MASK, Protein

Q = 21


def random_potts(length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(length, Q, generator=g), _symmetric(torch.randn(length, length, Q, Q, generator=g))


def test_excess_energy_matches_the_definition_by_loops():
    """e_i(a) = -h_i(a) - sum_{j != i} sum_b context_j(b) J_ij(a, b); cost = E_{p_T}[e_i] - min_a e_i(a)."""
    length, temperature = 4, 0.7
    h, J = random_potts(length, 0)
    tokens = torch.tensor([[MASK, 3, MASK, 20], [MASK, MASK, MASK, MASK]])
    logits = torch.randn(2, length, Q + 1, generator=torch.Generator().manual_seed(1))  # the mask's column too
    cost = excess_energy(h, J, tokens, logits, MASK, temperature)
    for n, i in itertools.product(range(2), range(length)):
        if tokens[n, i] != MASK:
            assert cost[n, i] == 0
            continue
        probs = (logits[n, :, :Q] / temperature).softmax(-1)
        local = []
        for a in range(Q):
            e = -h[i, a].item()
            for j in range(length):
                if j == i:
                    continue
                if tokens[n, j] == MASK:
                    e -= sum(probs[j, b].item() * J[i, j, a, b].item() for b in range(Q))
                else:
                    e -= J[i, j, a, tokens[n, j]].item()
            local.append(e)
        want = sum(probs[i, a].item() * local[a] for a in range(Q)) - min(local)
        assert cost[n, i].item() == pytest.approx(want, rel=1e-4, abs=1e-4)
    assert (cost >= -1e-5).all()


def test_excess_energy_at_temperature_zero_is_the_argmax_residue_against_the_best():
    """At T = 0 the draw is the argmax: zero cost where it is the position's best residue, and where it is
    not, the local energy it gives up."""
    h, J = random_potts(3, 2)
    best = torch.tensor([4, 9, 0])
    h = 100.0 * torch.nn.functional.one_hot(best, Q).float()  # fields dominate the small couplings
    J = J * 0.01
    tokens = torch.full((1, 3), MASK)
    logits = 10.0 * torch.nn.functional.one_hot(best, Q).float()[None]
    assert torch.equal(excess_energy(h, J, tokens, logits, MASK, 0.0), torch.zeros(1, 3))
    logits[0, 1] = 10.0 * torch.nn.functional.one_hot(torch.tensor(2), Q).float()  # position 1's argmax is wrong
    cost = excess_energy(h, J, tokens, logits, MASK, 0.0)
    assert cost[0, 0] == 0 and cost[0, 2] == 0 and cost[0, 1].item() == pytest.approx(100.0, abs=1.0)


def tiny_denoiser(task: Protein) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_denoiser(task, ModelConfig(d_model=16, n_layers=1, n_heads=2, ff_mult=2)).eval()


def test_a_sampled_pool_holds_exactly_the_states_the_sampler_visited():
    """With token_temperature > 0 the pool's target is the draw: its states are the sampler's own, and the
    cached logits are the denoiser's at each of them."""
    task = Protein(length=6)
    denoiser = tiny_denoiser(task)
    tokens = torch.full((5, 6), MASK)
    fixed = torch.zeros(5, 6, dtype=torch.bool)
    reference = torch.zeros(5, 6, dtype=torch.long)  # a sampled pool must not read it
    order = get_order("margin")
    pool = Trajectories.collect(
        denoiser, order, tokens, fixed, reference, MASK, keep_logits=True, token_temperature=0.8,
        generator=torch.Generator().manual_seed(4),
    )  # fmt: skip
    again = unmask(denoiser, order, tokens, MASK, token_temperature=0.8, generator=torch.Generator().manual_seed(4))
    assert torch.equal(pool.target, again.tokens) and torch.equal(pool.step_of, again.step_of)
    assert not torch.equal(pool.target, reference)
    assert torch.allclose(pool.chosen_ce, -again.logp_token)
    xt, x0 = pool.all_states()
    assert len(xt) == 5 * 6 and torch.equal((xt == MASK).sum(1), torch.arange(6, 0, -1).repeat(5))
    with torch.no_grad():
        assert torch.allclose(pool.logits, denoiser(xt).float(), atol=1e-5)
    # teacher forcing (temperature 0) keeps the reference as the target
    forced = Trajectories.collect(denoiser, order, tokens, fixed, reference, MASK)
    assert torch.equal(forced.target, reference)
    # argmax trajectories (aop.trajectory_tokens) are a greedy decoder's: its states, not the reference's
    greedy = Trajectories.collect(denoiser, order, tokens, fixed, reference, MASK, argmax=True)
    plain = unmask(denoiser, order, tokens, MASK)
    assert torch.equal(greedy.target, plain.tokens) and torch.equal(greedy.step_of, plain.step_of)
    assert not torch.equal(greedy.target, reference)


def test_the_energy_loss_is_the_policys_expectation_of_the_excess_energy():
    task = Protein(length=6)
    denoiser = tiny_denoiser(task)
    h, J = random_potts(6, 5)
    policy = make_policy(task, 16, PolicyConfig(d_model=16, n_layers=1, features=["probs", "stats"], base_scale=0.0))
    xt = torch.full((8, 6), MASK)
    xt[:, :2] = torch.randint(0, Q, (8, 2), generator=torch.Generator().manual_seed(6))
    aop = AopConfig(target="energy", energy_model="unused-here", token_temperature=0.5)
    cost_fn = free_cost("energy", task, MASK, (h, J), 0.5)
    assert cost_fn is not None
    with torch.no_grad():
        logits = denoiser(xt).float()
    cost = cost_fn(xt, logits)
    loss, stats = aop_step(denoiser, policy, xt, xt, MASK, aop, joint=False, free_cost=cost_fn)
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.parameters())
    # the loss is the policy's expectation of exactly these costs over the masked positions
    with torch.no_grad():
        from aop_ray.orders import DecodeState

        scores = policy(DecodeState(tokens=xt, masked=xt == MASK, logits=logits, hidden=None, step=0))
        pi = scores.masked_fill(xt != MASK, float("-inf")).softmax(-1)
    assert loss.item() == pytest.approx(float((pi * cost).sum(1).mean()), rel=1e-5)


def test_grpo_energy_reward_is_minus_the_potts_energy_and_drives_the_update():
    task = Protein(length=6)
    denoiser = tiny_denoiser(task)
    h, J = random_potts(6, 7)
    reward = energy_reward(h, J)
    seqs = torch.randint(0, Q, (3, 6), generator=torch.Generator().manual_seed(8))
    assert torch.allclose(reward(seqs, seqs, seqs), -Potts(h=h, J=J).energy(seqs))
    fields = sum(h[i, seqs[0, i]] for i in range(6))
    pairs = sum(J[i, j, seqs[0, i], seqs[0, j]] for i in range(6) for j in range(i + 1, 6))
    assert reward(seqs, seqs, seqs)[0].item() == pytest.approx(float(fields + pairs), rel=1e-5)
    policy = make_policy(task, 16, PolicyConfig(d_model=16, n_layers=1, features=["probs", "stats"], base_scale=0.0))
    prompt = torch.full((2, 6), MASK)
    cfg = GrpoConfig(reward="energy", token_temperature=0.5, group_size=4, states_per_rollout=2)
    loss, stats = grpo_step(
        denoiser, policy, policy, prompt, torch.zeros_like(prompt, dtype=torch.bool), task, cfg,
        torch.Generator().manual_seed(9), reward,
    )  # fmt: skip
    loss.backward()
    # sampled residues give every group a spread of energies, so every group teaches something
    assert stats["informative_groups"].item() == 1.0 and float(stats["reward"]) != 1.0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.parameters())


@pytest.mark.parametrize(
    "task, aop, stage, words",
    [
        ({"name": "sudoku", "size": 4}, {"target": "energy", "energy_model": "p.pt"}, "policy", "protein family"),
        ({"name": "protein", "length": 8}, {"target": "energy"}, "policy", "needs the Potts model"),
        ({"name": "protein", "length": 8}, {"target": "ce", "energy_model": "p.pt"}, "policy", "read only by"),
        (
            {"name": "protein", "length": 8},
            {"target": "ce", "token_temperature": 0.5},
            "policy",
            "scored by target energy only",
        ),
        ({"name": "protein", "length": 8}, {"target": "energy", "energy_model": "p.pt"}, "joint", "stage joint"),
        ({"name": "protein", "length": 8}, {"token_temperature": -1}, "policy", "must be >= 0"),
    ],
)
def test_energy_configs_are_refused_with_the_key(tmp_path, task, aop, stage, words):
    (tmp_path / "p.pt").write_bytes(b"")
    (tmp_path / "ckpt").mkdir()
    if "energy_model" in aop:
        aop = {**aop, "energy_model": str(tmp_path / "p.pt")}
    raw = {"name": "t", "task": task, "data": {"train": {"path": "somewhere"}},
           "aop": {"denoiser_checkpoint": str(tmp_path / "ckpt"), **aop}, "train": {"stage": stage}}  # fmt: skip
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(InputError, match=words):
        load_config(tmp_path / "c.yaml")
