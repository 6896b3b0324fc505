"""The learned order, the Sudoku rule features and `singles`, trajectories, policy checkpoints."""

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aop_ray import checkpoints
from aop_ray.aop import Trajectories, aop_step, chosen_costs
from aop_ray.config import TOKEN_AXIS_FEATURES, AopConfig, ModelConfig, PolicyConfig
from aop_ray.errors import InputError
from aop_ray.losses import correctness_loss, pairwise_rank_loss
from aop_ray.models.denoiser import Denoiser
from aop_ray.models.policies import make_policy
from aop_ray.models.policy import (
    Policy,
    TokenAxisPolicy,
    group_pooled,
    position_stats,
    revealed_one_hot,
)
from aop_ray.models.transformer import registered_groups
from aop_ray.orders import DecodeState, get_order, margin, select
from aop_ray.sampling import teacher_forced_state, unmask
from aop_ray.tasks.protein import Protein
from aop_ray.tasks.sat import Sat

SMALL = ModelConfig(d_model=16, n_layers=1, n_heads=2, ff_mult=2)


def random_state(task, seed, batch=6, hidden_dim=16):
    g = torch.Generator().manual_seed(seed)
    inst = task.generate(batch, seed=seed, clues=task.size + 2)
    target = torch.as_tensor(inst.target)
    masked = (torch.rand(target.shape, generator=g) < 0.6) & ~torch.as_tensor(inst.fixed)
    tokens = torch.where(masked, task.vocab_size, target)
    logits = torch.randn(*tokens.shape, task.vocab_size, generator=g) * 3
    hidden = torch.randn(*tokens.shape, hidden_dim, generator=g)
    return DecodeState(tokens=tokens, masked=masked, logits=logits, hidden=hidden, step=0, generator=g), target


@pytest.mark.parametrize(
    "cfg",
    [
        PolicyConfig(d_model=16, n_heads=2),
        PolicyConfig(d_model=16, n_heads=2, n_layers=0, features=["stats"]),
        PolicyConfig(
            d_model=16,
            n_heads=2,
            features=["probs", "stats", "hidden"],
            task_features=["naked_single", "hidden_single"],
        ),
    ],
)
def test_untrained_policy_is_its_base_heuristic(sudoku9, cfg):
    torch.manual_seed(0)
    policy = Policy(sudoku9, 16, cfg)
    state, _ = random_state(sudoku9, 1)
    scores = policy(state)
    assert torch.allclose(scores, 50.0 * margin(state))
    assert torch.equal(select(scores, state.masked, 1)[0], select(margin(state), state.masked, 1)[0])


TOKEN_AXIS = PolicyConfig(encoder="token_axis", d_model=8, features=list(TOKEN_AXIS_FEATURES))


def test_untrained_token_axis_policy_is_its_base_heuristic(sudoku9):
    torch.manual_seed(0)
    policy = make_policy(sudoku9, 16, TOKEN_AXIS)
    assert isinstance(policy, TokenAxisPolicy)
    state, _ = random_state(sudoku9, 1)
    assert torch.allclose(policy(state), 50.0 * margin(state))


def test_token_axis_policy_is_invariant_under_the_tasks_symmetries(sudoku9):
    """No weight belongs to a token or a cell: renaming digits and permuting rows, columns, bands and stacks
    permutes the scores the same way, exactly (up to float rounding). A transposition swaps the row and
    column channels, which the encoder keeps apart, so only the symmetries that keep each kind are checked."""
    torch.manual_seed(0)
    policy = make_policy(sudoku9, 16, dataclasses.replace(TOKEN_AXIS, task_features=["naked_single"])).eval()
    with torch.no_grad():
        for p in policy.head.parameters():
            p.normal_()  # a non-trivial residual
    state, _ = random_state(sudoku9, 2)
    index, digits = sudoku9.symmetry(len(state.tokens), torch.Generator().manual_seed(3))
    table = torch.cat([digits, torch.full_like(digits[:, :1], 9)], dim=1)  # the mask token maps to itself
    tokens = table.gather(1, state.tokens.gather(1, index))
    logits = state.logits.gather(1, index[..., None].expand(-1, -1, 9)).gather(
        2, digits.argsort(1)[:, None, :].expand(-1, 81, -1)
    )
    moved = DecodeState(tokens=tokens, masked=tokens == 9, logits=logits, hidden=None, step=0)
    with torch.no_grad():
        scores, moved_scores = policy(state), policy(moved)
    assert scores.std() > 1e-3  # the residual is doing something
    rows = torch.as_tensor(sudoku9.position_groups()["row"])[index].view(-1, 9, 9)
    kept = (rows == rows[:, :, :1]).all(dim=(1, 2))  # not transposed: every new row is an old row
    assert 0 < kept.sum() < len(kept)
    torch.testing.assert_close(moved_scores[kept], scores.gather(1, index)[kept], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(moved_scores[~kept], scores.gather(1, index)[~kept], atol=1e-3)


def reference_token_axis(policy: TokenAxisPolicy, state: DecodeState) -> torch.Tensor:
    """The token-axis encoder as its docstring defines it, every concatenation built: each (position, token)
    pair's features and each round's input [h, G peer means, mean and max over tokens] in full. The module
    computes the same function without materialising them; this is what it must equal."""
    groups = registered_groups(policy)
    n_groups, length = len(groups), state.tokens.shape[1]
    peers = group_pooled(torch.ones(1, length, 1), groups).clamp(min=1)[:, :, :, None, None]  # (1, L, G, 1, 1)

    def peer_mean(x: torch.Tensor) -> torch.Tensor:  # (B, L, V, C) -> (B, L, V, G*C)
        b, positions, v, c = x.shape
        pooled = group_pooled(x.reshape(b, positions, v * c), groups).reshape(b, positions, n_groups, v, c) / peers
        return pooled.transpose(2, 3).reshape(b, positions, v, n_groups * c)

    probs, masked = state.probs.float(), state.masked
    vocab = probs.shape[-1]
    revealed = revealed_one_hot(state.tokens, masked, vocab, probs.dtype)
    stats = position_stats(probs, masked)
    per_token = lambda value: value[..., None, None].expand(-1, -1, vocab, 1)  # noqa: E731
    belief = revealed + probs * masked[..., None]
    pairs = torch.cat(
        [
            (probs * masked[..., None])[..., None],
            revealed[..., None],
            per_token(masked.float()),
            peer_mean(revealed[..., None]),
            peer_mean(belief[..., None]),
            per_token(stats[..., 1]),
            per_token(stats[..., 4]),
        ],
        dim=-1,
    )
    h = policy.embed(pairs)
    for layer in policy.rounds:
        mixed = [h, peer_mean(h), h.mean(2, keepdim=True).expand_as(h), h.amax(2, keepdim=True).expand_as(h)]
        h = h + layer(torch.cat(mixed, dim=-1))
    readout = [h.mean(2), h.amax(2), stats]
    if policy.cfg.task_features:
        readout.append(policy.task.policy_features(state.tokens, probs, policy.cfg.task_features).float())
    return 50.0 * margin(state) + policy.head(torch.cat(readout, dim=-1)).squeeze(-1)


@pytest.mark.parametrize("task_name", ["sudoku4", "sudoku9", "protein"])
def test_token_axis_policy_computes_its_definition(task_name, request):
    """The fast path (no concatenation, group totals spread by matmul, position-major) equals the definition
    written out, on random weights everywhere (so every column of every layer counts), for Sudoku's three
    group kinds and for a protein's one-position groups (no peers at all)."""
    task = Protein(length=12) if task_name == "protein" else request.getfixturevalue(task_name)
    torch.manual_seed(0)
    policy = make_policy(task, 16, dataclasses.replace(TOKEN_AXIS, n_layers=2)).eval()
    with torch.no_grad():
        for p in policy.parameters():
            if p.requires_grad:
                p.normal_(0, 0.5)
        policy.log_scale.fill_(math.log(50.0))
    if task_name == "protein":
        g = torch.Generator().manual_seed(4)
        target = torch.randint(0, task.vocab_size, (5, task.length), generator=g)
        masked = torch.rand(target.shape, generator=g) < 0.5
        tokens = torch.where(masked, task.vocab_size, target)
        logits = torch.randn(*tokens.shape, task.vocab_size, generator=g) * 3
        state = DecodeState(tokens=tokens, masked=masked, logits=logits, hidden=None, step=0)
    else:
        state, _ = random_state(task, 5)
    with torch.no_grad():
        fast, reference = policy(state), reference_token_axis(policy, state)
    assert reference.std() > 1.0  # the residual is far from zero
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-4)


def test_token_axis_encoder_refusals():
    with pytest.raises(InputError, match="policy.features: encoder token_axis reads exactly"):
        PolicyConfig(encoder="token_axis", features=["probs", "stats"])
    with pytest.raises(InputError, match="policy.encoder: token_axis pools over fixed position groups"):
        make_policy(Sat(n_vars=4, n_clauses=4), 16, TOKEN_AXIS)


def test_policy_is_small_next_to_the_denoiser(sudoku9):
    denoiser = Denoiser(9, sudoku9.position_groups(), ModelConfig())
    policy = Policy(sudoku9, 128, PolicyConfig(features=["probs", "stats", "hidden"]))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(policy) <= 0.1 * count(denoiser)


@pytest.mark.reliability
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 1000), k=st.integers(1, 3), temperature=st.sampled_from([0.0, 0.5]))
def test_learned_and_singles_only_pick_masked_cells(sudoku4, seed, k, temperature):
    torch.manual_seed(seed)
    policy = Policy(sudoku4, 16, PolicyConfig(d_model=16, n_heads=2))
    with torch.no_grad():
        policy.head[-1].weight.normal_()  # a non-trivial residual
    state, _ = random_state(sudoku4, seed)
    for order in (policy, get_order("singles", task=sudoku4)):
        with torch.no_grad():
            positions, valid = select(order(state), state.masked, k, temperature, state.generator)
        assert torch.gather(state.masked, 1, positions)[valid].all()
        assert torch.equal(valid.sum(1), state.masked.sum(1).clamp(max=k))


def test_sudoku_rule_features_exact(sudoku4):
    # row 0 holds 1 2 3 _: (0,3) is a naked single (4) and a hidden single (only place for 4 in row 0)
    tokens = torch.tensor([[0, 1, 2, 4] + [4] * 12])
    probs = torch.full((1, 16, 4), 0.25)
    probs[0, 3] = torch.tensor([0.7, 0.1, 0.1, 0.1])  # argmax says digit 1: illegal there
    feats = sudoku4.policy_features(tokens, probs, ["candidates", "naked_single", "hidden_single", "argmax_legal"])
    assert feats[0, 3].tolist() == [0.25, 1.0, 1.0, 0.0]
    assert feats[0, 4].tolist() == [0.5, 0.0, 0.0, 0.0]  # (1,0): box holds 1, 2 -> {3, 4}; argmax 1 illegal
    with pytest.raises(InputError, match="unknown Sudoku feature 'colour'"):
        sudoku4.policy_features(tokens, probs, ["colour"])


def test_singles_prefers_a_forced_cell_over_a_confident_one(sudoku4):
    tokens = torch.tensor([[0, 1, 2, 4] + [4] * 12])
    logits = torch.zeros(1, 16, 4)
    logits[0, 10, 2] = 20.0  # the denoiser is very sure about (2,2), which is not forced
    state = DecodeState(tokens=tokens, masked=tokens == 4, logits=logits, hidden=None, step=0)
    assert select(margin(state), state.masked, 1)[0].item() == 10
    assert select(get_order("singles", task=sudoku4)(state), state.masked, 1)[0].item() == 3


def margin_trajectories(task, n):
    """(tokens, target, trajectories) of an untrained denoiser's margin order on n generated puzzles."""
    inst = task.generate(n, seed=0, clues=6)
    tokens, fixed, target = (torch.as_tensor(a) for a in (inst.tokens, inst.fixed, inst.target))
    torch.manual_seed(0)
    model = Denoiser(4, task.position_groups(), SMALL).eval()
    return tokens, target, Trajectories.collect(model, get_order("margin"), tokens, fixed, target, 4)


def test_teacher_forced_states_rebuild_the_rollout(sudoku4):
    tokens, target, traj = margin_trajectories(sudoku4, 4)
    assert torch.equal(teacher_forced_state(tokens, traj.step_of, target, torch.zeros(4, dtype=torch.long)), tokens)
    assert torch.equal(teacher_forced_state(tokens, traj.step_of, target, torch.full((4,), 99)), target)
    xt, x0, index = traj.sample(64, torch.Generator().manual_seed(1))
    masked = xt == 4
    assert masked.any(1).all()  # every sampled state still has a decision to make
    rows = torch.repeat_interleave(torch.arange(4), traj.step_of.max(dim=1).values + 1)[index]
    assert torch.equal(xt[~masked], x0[~masked]) and not (masked & traj.fixed[rows]).any()
    assert torch.equal(traj.all_states()[0][index], xt)  # `index` names the state in the pool's fixed order


def test_cached_logits_are_the_frozen_denoisers_and_give_the_same_training_step(sudoku4):
    """The logits a collection computed (`keep_logits`) replace the frozen denoiser's forward in a policy step."""
    inst = sudoku4.generate(9, seed=0, clues=[4, 12])
    tokens, fixed, target = (torch.as_tensor(a) for a in (inst.tokens, inst.fixed, inst.target))
    torch.manual_seed(0)
    model = Denoiser(4, sudoku4.position_groups(), SMALL).eval()
    # batches of 4: the last holds one instance; puzzles of unequal length leave the forwards early
    traj = Trajectories.collect(model, get_order("margin"), tokens, fixed, target, 4, batch_size=4, keep_logits=True)
    cached = traj.logits
    assert cached is not None and cached.shape == (len(traj.all_states()[0]), sudoku4.seq_len, sudoku4.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(cached, model(traj.all_states()[0]).float())  # every state, in pool order
    xt, x0, index = traj.sample(32, torch.Generator().manual_seed(0))
    policy = Policy(sudoku4, SMALL.d_model, PolicyConfig(d_model=16, n_heads=2))
    torch.nn.init.normal_(policy.head[-1].weight)
    cfg = AopConfig(target="error")
    with_forward, _ = aop_step(model, policy, xt, x0, 4, cfg, joint=False)
    with_cache, _ = aop_step(model, policy, xt, x0, 4, cfg, joint=False, logits=cached[index])
    torch.testing.assert_close(with_cache, with_forward)
    with pytest.raises(ValueError, match="joint training needs the forward"):
        aop_step(model, policy, xt, x0, 4, cfg, joint=True, logits=cached[index])


def test_pairwise_objective_ranks_the_base_orders_shortlist_in_the_training_step(sudoku4):
    _, _, traj = margin_trajectories(sudoku4, 6)
    xt, x0, _ = traj.sample(32, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = Denoiser(4, sudoku4.position_groups(), SMALL).eval()
    policy = Policy(sudoku4, SMALL.d_model, PolicyConfig(d_model=16, n_heads=2))
    cfg = AopConfig(target="error", objective="pairwise", pairwise_k=3)
    loss, stats = aop_step(model, policy, xt, x0, 4, cfg, joint=False, shortlist=policy.base)
    loss.backward()
    with torch.no_grad():
        logits = model(xt)
        state = DecodeState(tokens=xt, masked=xt == 4, logits=logits, hidden=None, step=0)
        error = (logits.argmax(-1) != x0).float()
        expected = pairwise_rank_loss(policy(state), state.masked, error, margin(state), 3)
    assert expected > 0 and torch.isclose(loss, expected)  # an untrained denoiser errs: there are pairs
    assert policy.head[-1].weight.grad.abs().sum() > 0 and model.head.weight.grad is None
    assert set(stats) == {"expected_cost", "entropy"}  # the same curves as the expected objective
    with pytest.raises(ValueError, match="needs the shortlist order"):
        aop_step(model, policy, xt, x0, 4, cfg, joint=False)


def test_correctness_objective_fits_the_token_axis_policy_in_the_training_step(sudoku4):
    _, _, traj = margin_trajectories(sudoku4, 6)
    xt, x0, _ = traj.sample(32, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = Denoiser(4, sudoku4.position_groups(), SMALL).eval()
    policy = make_policy(sudoku4, SMALL.d_model, TOKEN_AXIS)
    cfg = AopConfig(target="error", objective="correctness")
    loss, stats = aop_step(model, policy, xt, x0, 4, cfg, joint=False)
    loss.backward()
    with torch.no_grad():
        logits = model(xt)
        state = DecodeState(tokens=xt, masked=xt == 4, logits=logits, hidden=None, step=0)
        expected = correctness_loss(policy(state), state.masked, (logits.argmax(-1) != x0).float())
    assert torch.isclose(loss, expected)
    assert policy.head[-1].weight.grad.abs().sum() > 0 and model.head.weight.grad is None
    assert set(stats) == {"expected_cost", "entropy"}


def test_chosen_costs_of_a_perfect_order(sudoku4):
    torch.manual_seed(0)
    model = Denoiser(4, sudoku4.position_groups(), SMALL).eval()
    inst = sudoku4.generate(8, seed=2, clues=6)
    xt, x0 = torch.as_tensor(inst.tokens), torch.as_tensor(inst.target)
    with torch.no_grad():
        err = (model(xt).argmax(-1) != x0).float()
    oracle = lambda state: -err  # noqa: E731 - an order that knows where the denoiser is right
    costs = chosen_costs({"oracle": oracle, "margin": margin}, model, xt, x0, 4)
    expected = ((err + (xt != 4) * 9).min(1).values).mean().item()
    assert costs["oracle"]["error"] == pytest.approx(expected)
    assert costs["oracle"]["error"] <= costs["margin"]["error"]
    masked = (xt == 4).float()
    assert costs["random"]["error"] == pytest.approx(((err * masked).sum(1) / masked.sum(1)).mean().item())


def save_policy(tmp_path, task, model_cfg, name="pol", cfg=None):
    torch.manual_seed(0)
    denoiser = Denoiser(task.vocab_size, task.position_groups(), model_cfg)
    cfg = cfg or PolicyConfig(d_model=16, n_heads=2, features=["probs", "stats", "hidden"])
    policy = make_policy(task, model_cfg.d_model, cfg)
    with torch.no_grad():
        policy.head[-1].weight.normal_()
    manifest = checkpoints.policy_manifest(task, model_cfg, cfg, "policy", "somewhere", step=3)
    path = checkpoints.write_checkpoint(
        tmp_path / name, manifest, {"denoiser": denoiser.state_dict(), "policy": policy.state_dict()}
    )
    return denoiser, policy, path


@pytest.mark.parametrize("cfg", [None, TOKEN_AXIS])
def test_policy_checkpoint_round_trip_and_decoding(tmp_path, sudoku4, cfg):
    denoiser, policy, path = save_policy(tmp_path, sudoku4, SMALL, cfg=cfg)
    loaded_denoiser, task, manifest = checkpoints.load_denoiser(path)
    loaded = checkpoints.load_policy(path, task, manifest["model"])
    assert type(loaded) is type(policy) and manifest["policy"]["encoder"] == policy.cfg.encoder
    assert manifest["kind"] == "policy" and manifest["policy"]["features"] == policy.cfg.features
    state, _ = random_state(sudoku4, 3)
    with torch.no_grad():
        assert torch.allclose(loaded(state), policy.eval()(state))
    inst = sudoku4.generate(5, seed=1, clues=6)
    roll = unmask(loaded_denoiser, loaded, torch.as_tensor(inst.tokens), 4)  # reads hidden states
    assert (roll.tokens < 4).all()


@pytest.mark.reliability
def test_policy_against_a_denoiser_of_another_size_fails_clearly(tmp_path, sudoku4, sudoku9):
    _, _, path = save_policy(tmp_path, sudoku4, SMALL)
    bigger = {**SMALL.__dict__, "d_model": 32}
    with pytest.raises(InputError, match=r"checkpoint is for denoiser model .* \(field 'd_model': 16 != 32\)"):
        checkpoints.load_policy(path, sudoku4, bigger)
    with pytest.raises(InputError, match="field 'size': 4 != 9"):
        checkpoints.load_policy(path, sudoku9, SMALL.__dict__)


def test_group_pooled_features_exact(sudoku4):
    from aop_ray.models.policy import generic_features

    tokens = torch.tensor([[0, 4, 4, 4] + [4] * 12])  # (0,0) revealed as digit 1, everything else masked
    masked = tokens == 4
    probs = torch.full((1, 16, 4), 0.25)
    groups = [torch.as_tensor(sudoku4.position_groups()[g]) for g in ("box", "col", "row")]
    pooled = generic_features(probs, None, masked, ["group_probs", "group_tokens"], tokens, groups)
    beliefs, revealed = pooled[..., :12], pooled[..., 12:]  # (1, 16, 3 groups * 4 digits) each
    # cell (0,1): its row holds the revealed 1 plus two masked cells at 0.25 each
    assert torch.allclose(beliefs[0, 1, 8:12], torch.tensor([1.5, 0.5, 0.5, 0.5]))
    assert torch.equal(revealed[0, 1, 8:12], torch.tensor([1.0, 0.0, 0.0, 0.0]))
    # cell (3,3) shares no group with (0,0): every group sums three uniform cells, and nothing is revealed
    assert torch.allclose(beliefs[0, 15], torch.full((12,), 0.75))
    assert torch.equal(revealed[0, 15], torch.zeros(12))
    # a revealed cell does not count itself
    assert torch.equal(revealed[0, 0], torch.zeros(12))


def test_all_trajectory_states_enumerate_every_step(sudoku4):
    _, _, traj = margin_trajectories(sudoku4, 3)
    xt, x0 = traj.all_states()
    assert len(xt) == 3 * 10  # 10 free cells each, one state per decision
    assert (xt == 4).sum(1).tolist() == [10 - s for _ in range(3) for s in range(10)]


def test_trajectories_of_no_instances_are_empty_not_an_error(sudoku4):
    """A worker's slice of a validation set smaller than the worker count is empty (train._diagnostics)."""
    tokens, target, traj = margin_trajectories(sudoku4, 3)
    empty = Trajectories.collect(None, get_order("margin"), tokens[:0], tokens[:0] != 4, target[:0], 4)
    xt, x0 = empty.all_states()
    assert xt.shape == x0.shape == (0, 16)


def test_focused_sampling_draws_the_states_where_the_order_erred():
    """Prioritised states: with focus 1 every draw is a state whose revealed cell had CE > 0."""
    step_of = torch.tensor([[-1, 0, 1, 2], [1, 0, -1, 2]])
    chosen_ce = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0]])  # only row 1, step 0 erred
    tokens = torch.where(step_of >= 0, 9, torch.tensor([[5, 0, 0, 0], [0, 0, 7, 0]]))
    target = torch.tensor([[5, 1, 2, 3], [4, 6, 7, 8]])
    traj = Trajectories(tokens, step_of < 0, target, step_of, chosen_ce)
    xt, x0, _ = traj.sample(32, torch.Generator().manual_seed(0), focus=1.0)
    assert (xt == torch.tensor([9, 9, 7, 9])).all() and (x0 == target[1]).all()  # row 1 before step 0
    xt, _, _ = traj.sample(32, torch.Generator().manual_seed(0), focus=0.25)
    assert int((xt == torch.tensor([9, 9, 7, 9])).all(dim=1).sum()) >= 8
