"""The Ray Train worker loop: one stage-agnostic loop, and a table of step functions per stage.

Every worker runs `train_loop`. What differs between the stages is which modules train
(`trained_modules`) and what one optimisation step computes (`STEPS`): the MDM loss of the
denoiser, the AOP loss of the policy (frozen denoiser, or jointly with it), or GRPO. Batches
and noise are functions of (seed, rank, step), so a resumed run continues the same run.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import posixpath
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from aop_ray import checkpoints, precision
from aop_ray.allocator import keep_freed_memory
from aop_ray.aop import FreeCost, Trajectories, aop_step, chosen_costs, free_cost, uniform_states
from aop_ray.cli import say
from aop_ray.config import Config, TrainConfig
from aop_ray.errors import InputError
from aop_ray.grpo import Reward, energy_reward, grpo_step
from aop_ray.losses import denoiser_loss
from aop_ray.models.denoiser import build_denoiser, frozen_pretrained
from aop_ray.models.policies import PolicyNet, make_policy
from aop_ray.orders import Order, get_order, order_names
from aop_ray.sampling import DEFAULT_DECODE, decode_dataset
from aop_ray.tasks import mask_id
from aop_ray.tracking import Tracker


def lr_at(step: int, tc: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to lr * min_lr_ratio at the last step."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    progress = (step - tc.warmup_steps) / max(1, tc.steps - tc.warmup_steps)
    return tc.lr * (tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def worker_rows(columns: dict[str, np.ndarray], rank: int, world: int, batch_size: int) -> dict[str, torch.Tensor]:
    """This worker's rows of the train set: the rank-th of `world` equal contiguous slices.

    The driver hands the whole (megabyte-sized) train set to every worker through Ray's
    object store, so no node reads a path only the driver has. Equal slices keep the
    workers in step; the split is a pure function of (rank, world), which, with batches a
    pure function of (seed, step) below, makes a resumed run the same run.
    """
    n = len(columns["target"]) // world
    if n < batch_size:
        raise InputError(f"data.train: a worker's shard holds {n} instances, fewer than one batch of {batch_size}")
    rows = slice(rank * n, (rank + 1) * n)
    return {key: torch.tensor(columns[key][rows]) for key in ("fixed", "target")}  # a copy: the store's is read-only


def _batches(
    columns: dict[str, torch.Tensor], batch_size: int, seed: int, start: int
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless batches from `start` on: epoch e is one seeded permutation of the shard (drop-last)."""
    n = len(columns["target"])
    per_epoch = n // batch_size
    epoch, index = divmod(start, per_epoch)
    while True:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        for lo in range(index * batch_size, per_epoch * batch_size, batch_size):
            idx = order[lo : lo + batch_size]
            yield {key: value[idx.to(value.device)] for key, value in columns.items()}
        epoch, index = epoch + 1, 0


def _load_last_good(
    latest: Any, names: list[str], warn: Callable[[str], None]
) -> tuple[dict[str, dict[str, Any]], int, str]:
    """The state dicts, step and path of the newest readable checkpoint of this run, starting at `latest`.

    A checkpoint truncated by a full disk or a dying node must not end a
    week-long run: it is reported by file name and the one before it is used
    (Ray keeps `num_to_keep` of them side by side in the run's storage).
    """
    import pyarrow.fs
    import ray.train

    fs, parent = latest.filesystem, posixpath.dirname(latest.path.rstrip("/"))
    older = sorted(
        (
            info.path
            for info in fs.get_file_info(pyarrow.fs.FileSelector(parent))
            if info.type == pyarrow.fs.FileType.Directory
            and info.base_name.startswith("checkpoint_")
            and info.path < latest.path
        ),
        reverse=True,
    )  # names are timestamps: newest first
    errors = []
    for candidate in [latest, *(ray.train.Checkpoint(path, filesystem=fs) for path in older)]:
        try:
            with candidate.as_directory() as ckpt_dir:
                step = checkpoints.read_manifest(ckpt_dir)["step"]
                return {name: checkpoints.load_tensors(ckpt_dir, name) for name in names}, step, candidate.path
        except InputError as err:
            errors.append(str(err))
            warn(f"{err}; trying the checkpoint before it")
    raise InputError(f"no readable checkpoint to resume from in {parent}: " + "; ".join(errors))


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def _all_mean(values: list[float], device: torch.device) -> list[float]:
    import torch.distributed as dist

    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    return [v / world for v in _all_sum(values, device)]


def _validate(
    denoiser: torch.nn.Module,
    order: Order,
    cfg: Config,
    val: dict[str, np.ndarray],
    rank: int,
    world: int,
    device: torch.device,
) -> dict[str, float]:
    """Solve rate of the validation set, each worker decoding its slice (which may be empty)."""
    task = cfg.build_task()
    rows = slice(rank, None, world)
    x, f, y = (torch.tensor(val[k][rows]).to(device) for k in ("tokens", "fixed", "target"))
    solved = accurate = 0.0
    if len(x):
        decoded = decode_dataset(
            denoiser,
            task,
            x,
            f,
            y,
            order,
            dataclasses.replace(DEFAULT_DECODE, precision=cfg.train.precision),
            generator=torch.Generator().manual_seed(cfg.train.seed),
        )
        solved, accurate = decoded.solved.float().sum().item(), decoded.cell_accuracy.sum().item()
    solved, accurate, n = _all_sum([solved, accurate, float(len(x))], device)  # exact over unequal slices
    solve, acc = solved / n, accurate / n
    return {"val_solve_rate": solve, "val_cell_accuracy": acc}


CACHE_BYTES = 2 * 2**30  # a worker's cached pool logits (`aop.cache_logits`): 0.1 GiB for 600 Sudoku trajectories


class _States:
    """Training states for the policy stages: forward-process or teacher-forced trajectories.

    Every refresh draws fresh instances from the worker's data stream, so
    DAgger rounds add puzzles as well as the current policy's own states.
    """

    def __init__(
        self,
        cfg: Config,
        mask_id: int,
        batches: Iterator[dict[str, torch.Tensor]],
        device: torch.device,
        cache_logits: bool,
        rank: int,
    ) -> None:
        self.cfg, self.mask_id, self.batches, self.device = cfg, mask_id, batches, device
        # the draws of a sampled pool (`aop.token_temperature` > 0): a function of (seed, rank)
        self.generator = torch.Generator().manual_seed(cfg.train.seed * 7919 + rank)
        self.trajectories: Trajectories | None = None
        self.cache_logits = cache_logits  # keep the denoiser's logits at every pool state (`aop.cache_logits`)

    def _draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        parts: list[dict[str, torch.Tensor]] = []
        while sum(len(p["target"]) for p in parts) < n:
            parts.append(next(self.batches))
        fixed = torch.cat([p["fixed"] for p in parts])[:n].to(self.device)
        return fixed, torch.cat([p["target"] for p in parts])[:n].long().to(self.device)

    def refresh(self, denoiser: torch.nn.Module, order: Order) -> None:
        """Collect trajectories of `order` on fresh instances and add them (DAgger): teacher-forced, the
        denoiser's argmax (`aop.trajectory_tokens`), or sampled at `aop.token_temperature`."""
        fixed, target = self._draw(self.cfg.aop.trajectory_instances)
        was_training = denoiser.training
        denoiser.eval()
        with precision.autocast(self.cfg.train.precision, self.device):
            new = Trajectories.collect(
                denoiser,
                order,
                torch.where(fixed, target, self.mask_id),
                fixed,
                target,
                self.mask_id,
                keep_logits=self.cache_logits,
                token_temperature=self.cfg.aop.token_temperature,
                generator=self.generator,
                argmax=self.cfg.aop.trajectory_tokens == "argmax",
            )
        denoiser.train(was_training)
        pool = new if self.trajectories is None else Trajectories.concat([self.trajectories, new])
        if pool.logits is not None and 4 * pool.logits.numel() > CACHE_BYTES:
            say(f"not caching the denoiser's logits: {pool.logits.numel() / 2**28:.1f} GiB per worker would exceed "
                f"{CACHE_BYTES / 2**30:g}; every step runs the denoiser")  # fmt: skip
            self.cache_logits, pool.logits = False, None
        self.trajectories = pool

    def sample(
        self, x0: torch.Tensor, fixed: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(x_t, x0, the denoiser's logits at x_t if cached): uniform forward-process states of this batch, or
        trajectory states."""
        if self.trajectories is None:
            return uniform_states(x0, fixed, self.mask_id, generator), x0, None
        xt, y, index = self.trajectories.sample(len(x0), generator, self.cfg.aop.focus)
        return xt, y, None if self.trajectories.logits is None else self.trajectories.logits[index]


class Progress:
    """The console's progress line: step/total, loss, samples/s, ETA (measured since this process started
    training, so a resumed run's ETA is not skewed by the steps done before), validation when present.
    A task without a verifier (proteins, antibody loops) has no solve rate worth a glance: a protein is
    "solved" once complete, always, so the line leaves it out (MLflow still records it)."""

    SHOWN = ("loss", "reward", "samples_per_s", "val_solve_rate", "val_cell_accuracy")

    def __init__(self, start_step: int, total: int, verified: bool = True) -> None:
        self.start_step, self.total, self.started = start_step, total, time.perf_counter()
        self.shown = self.SHOWN if verified else tuple(k for k in self.SHOWN if k != "val_solve_rate")

    def eta(self, step: int) -> float:
        done = step - self.start_step
        return (time.perf_counter() - self.started) / done * (self.total - step) if done > 0 else math.nan

    def line(self, step: int, metrics: dict[str, Any]) -> str:
        width = len(str(self.total))
        shown = " ".join(f"{k}={metrics[k]:.4g}" for k in self.shown if k in metrics)
        return f"step {step:>{width}}/{self.total} {shown} eta {format_duration(self.eta(step))}"


def format_duration(seconds: float) -> str:
    """`1:02:03`, `2:03` or `-` (unknown): an ETA a person reads at a glance."""
    if not math.isfinite(seconds):
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _quiet_ray_train() -> None:
    """Ray Train 2.60 logs every `ray.train.report` of every rank at INFO (a raw `TrainingReport(...)`),
    from a logger named after its file; the progress line says it once, readably."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray version: nothing to silence
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


@dataclasses.dataclass
class StageModels:
    """What a step function works on: the config, the task, the modules (`nets` are the DDP-wrapped
    ones that train) and, for the AOP stages, the source of training states."""

    cfg: Config
    task: Any
    denoiser: torch.nn.Module
    policy: PolicyNet | None
    nets: dict[str, torch.nn.Module]
    states: _States | None
    free_cost: FreeCost | None = None  # the cost of a reference-free aop.target (dead_end, energy)
    reward: Reward | None = None  # GRPO's reward when it is not the task's verifier (grpo.reward energy)


Step = Callable[[StageModels, torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, dict[str, Any]]]


def denoiser_step(
    m: StageModels, x0: torch.Tensor, fixed: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The MDM loss on forward-process states of the batch."""
    return denoiser_loss(m.nets["denoiser"], x0, fixed, mask_id(m.task), m.cfg.train.loss_weighting, generator), {}


def aop_stage_step(
    m: StageModels, x0: torch.Tensor, fixed: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The AOP loss on training states; `joint` also trains the denoiser (+ mdm_lambda x its MDM loss)."""
    joint = m.cfg.train.stage == "joint"
    xt, y, logits = m.states.sample(x0, fixed, generator)
    loss, stats = aop_step(
        m.nets["denoiser"],
        m.nets["policy"],
        xt,
        y,
        mask_id(m.task),
        m.cfg.aop,
        joint=joint,
        shortlist=m.policy.base,
        logits=logits,
        free_cost=m.free_cost,
    )
    if joint and m.cfg.aop.mdm_lambda:
        mdm = denoiser_loss(m.nets["denoiser"], x0, fixed, mask_id(m.task), m.cfg.train.loss_weighting, generator)
        loss = loss + m.cfg.aop.mdm_lambda * mdm
        stats["mdm_loss"] = mdm.detach()
    return loss, stats


def grpo_stage_step(
    m: StageModels, x0: torch.Tensor, fixed: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Group-relative policy gradient from rollouts of the policy on the batch's puzzles."""
    return grpo_step(
        m.denoiser,
        m.nets["policy"],
        m.policy,
        torch.where(fixed, x0, mask_id(m.task)),
        fixed,
        m.task,
        m.cfg.grpo,
        generator,
        m.reward,
    )


STEPS: dict[str, Step] = {
    "denoiser": denoiser_step,
    "policy": aop_stage_step,
    "joint": aop_stage_step,
    "grpo": grpo_stage_step,
}


def train_loop(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: the denoiser stage, the policy / joint AOP stages, or GRPO."""
    import ray
    import ray.train
    import ray.train.torch

    _quiet_ray_train()
    keep_freed_memory()  # a Ray worker is its own process (aop_ray/allocator.py)
    cfg = Config.from_dict(loop_config["config"])
    inputs = ray.get(loop_config["inputs"])  # train set, validation set, denoiser weights: from the driver
    torch.set_num_threads(cfg.ray.torch_threads)
    task = cfg.build_task()
    stage, tc = cfg.train.stage, cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    tracker = Tracker(loop_config["tracking_uri"], loop_config["run_id"]) if rank == 0 else Tracker(None)

    torch.manual_seed(tc.seed)  # the same initial weights for every run of this seed (rank 0's are broadcast)
    denoiser = build_denoiser(task, cfg.model)
    policy = make_policy(task, cfg.model.d_model, cfg.policy) if stage != "denoiser" else None
    if inputs["denoiser_state"] is not None:
        denoiser.load_state_dict(inputs["denoiser_state"])
    saved = {"denoiser": denoiser} if policy is None else {"denoiser": denoiser, "policy": policy}
    if frozen_pretrained(cfg.model, stage):  # its checkpoint names the weights' source and digest instead
        del saved["denoiser"]
    trained = {"denoiser": (denoiser, tc.lr)} if stage == "denoiser" else {"policy": (policy, tc.lr)}
    if stage == "joint":
        trained["denoiser"] = (denoiser, cfg.aop.denoiser_lr)
    if stage in ("policy", "grpo"):
        denoiser.requires_grad_(False).eval()
    optimizer = torch.optim.AdamW(
        [{"params": m.parameters(), "base_lr": lr} for m, lr in trained.values()],
        lr=tc.lr,
        weight_decay=tc.weight_decay,
        betas=(0.9, 0.98),
    )
    step = 0
    latest = ray.train.get_checkpoint()
    if latest is not None:
        states, step, where = _load_last_good(latest, [*saved, "optimizer"], say if rank == 0 else lambda _: None)
        for name, module in saved.items():
            checkpoints.load_state(module, states[name], where)
        optimizer.load_state_dict(states["optimizer"])
        if rank == 0:
            say(f"resumed from checkpoint at step {step}")
            tracker.continue_history()
    for module in saved.values():
        module.to(device)
    nets = {name: ray.train.torch.prepare_model(module) for name, (module, _) in trained.items()}
    nets.setdefault("denoiser", denoiser)
    nodes = [ray.get_runtime_context().get_node_id()] * world
    if torch.distributed.is_initialized():
        torch.distributed.all_gather_object(nodes, nodes[0])
    if rank == 0:
        say(
            f"{world} worker(s) on {len(set(nodes))} node(s), device {device.type}, "
            + precision.describe(tc.precision, device)
        )
        tracker.set_tag("aop_ray.precision", precision.resolve(tc.precision, device))

    # Batches and noise are functions of (seed, rank, step): a resumed run continues the same run.
    generator = torch.Generator()
    per_worker = max(1, tc.batch_size // world)
    # GRPO decodes each puzzle group_size times, so it draws per_worker / group_size puzzles per step.
    draw = max(1, per_worker // cfg.grpo.group_size) if stage == "grpo" else per_worker
    # The shard lives on the training device: a batch is one index gather, no host-to-GPU copy per step.
    shard = {key: value.to(device) for key, value in worker_rows(inputs["train"], rank, world, draw).items()}
    batches = _batches(shard, draw, tc.seed + rank, step)
    val = inputs["val"]
    cache = cfg.aop.cache_logits and stage == "policy" and policy is not None and not policy.needs_hidden
    states = _States(cfg, mask_id(task), batches, device, cache, rank) if stage in ("policy", "joint") else None
    if states is not None and cfg.aop.states == "trajectory":
        states.refresh(denoiser, get_order(cfg.aop.trajectory_order, task=task))
        if cfg.aop.refresh_every and step >= cfg.aop.refresh_every:  # resumed after a DAgger round
            states.refresh(denoiser, policy)
    eval_order = policy if policy is not None else get_order(tc.eval_order, task=task)
    potts = inputs.get("energy_model")  # (h, J), moved to the device once, not at every step
    potts = None if potts is None else (potts[0].to(device), potts[1].to(device))
    costs = _free_costs(cfg, task, potts)
    reward = energy_reward(*potts) if stage == "grpo" and cfg.grpo.reward == "energy" and potts else None
    models = StageModels(cfg, task, denoiser, policy, nets, states, costs.get(cfg.aop.target), reward)

    window: dict[str, float] = {}
    window_n, window_start = 0, time.perf_counter()
    progress = Progress(step, tc.steps, verified=task.has_verifier)
    while step < tc.steps:
        generator.manual_seed(tc.seed * 1_000_003 + rank * 7919 + step)
        torch.manual_seed(generator.initial_seed() + 1)  # dropout and any other draw from the global stream
        batch = next(batches)
        x0, fixed = batch["target"].long().to(device), batch["fixed"].to(device)
        if tc.augment:
            _, fixed, x0 = task.augment(x0, fixed, x0, generator)
        factor = lr_at(step, tc) / tc.lr
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        with precision.autocast(tc.precision, device):
            loss, stats = STEPS[stage](models, x0, fixed, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for m, _ in trained.values() for p in m.parameters()], tc.grad_clip
        )
        optimizer.step()
        step += 1
        for key, value in {"loss": loss.detach(), **stats}.items():
            window[key] = window.get(key, 0.0) + float(value)
        window_n += 1
        if (
            states is not None
            and cfg.aop.states == "trajectory"
            and cfg.aop.refresh_every
            and step % cfg.aop.refresh_every == 0
            and step < tc.steps
        ):
            states.refresh(denoiser, policy)  # DAgger: the states the current policy visits

        last = step == tc.steps
        log_now = step % tc.log_every == 0 or last
        ckpt_now = step % tc.checkpoint_every == 0 or last
        eval_now = val is not None and (last or (tc.eval_every and step % tc.eval_every == 0))
        if not (log_now or ckpt_now or eval_now):
            continue
        elapsed = time.perf_counter() - window_start
        names = sorted(window)
        means = _all_mean([window[k] / window_n for k in names], device)
        metrics = {
            "step": step,
            **dict(zip(names, means)),
            "lr": lr_at(step - 1, tc),
            "grad_norm": float(grad_norm),
            "samples_per_s": window_n * per_worker * world / elapsed,
        }
        if eval_now:
            for module in saved.values():
                module.eval()
            metrics.update(_validate(denoiser, eval_order, cfg, val, rank, world, device))
            if policy is not None:
                with precision.autocast(tc.precision, device):
                    metrics.update(
                        _diagnostics(denoiser, policy, task, cfg.aop.token_temperature, costs, val, rank, world, device)
                    )
            for module, _ in trained.values():
                module.train()
        window, window_n, window_start = {}, 0, time.perf_counter()
        tracker.log_metrics(metrics, step)
        if rank == 0:
            say(progress.line(step, metrics))
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if ckpt_now and rank == 0:
                path = checkpoints.write_checkpoint(
                    Path(tmp) / "ckpt",
                    _manifest(cfg, task, step, metrics, loop_config),
                    {
                        **{name: module.state_dict() for name, module in saved.items()},
                        "optimizer": optimizer.state_dict(),
                    },
                )
                checkpoint = ray.train.Checkpoint.from_directory(str(path))
            ray.train.report(metrics, checkpoint=checkpoint)


def _manifest(
    cfg: Config, task: Any, step: int, metrics: dict[str, Any], loop_config: dict[str, Any]
) -> dict[str, Any]:
    if cfg.train.stage == "denoiser":
        return checkpoints.denoiser_manifest(task, cfg.model, step=step, metrics=metrics)
    return checkpoints.policy_manifest(
        task,
        cfg.model,
        cfg.policy,
        cfg.train.stage,
        cfg.aop.denoiser_checkpoint,
        step=step,
        metrics=metrics,
        aop=dataclasses.asdict(cfg.aop),
        **({"grpo": dataclasses.asdict(cfg.grpo)} if cfg.train.stage == "grpo" else {}),
    )


def _free_costs(cfg: Config, task: Any, potts: tuple[torch.Tensor, torch.Tensor] | None) -> dict[str, FreeCost]:
    """The reference-free costs this run can compute, by target name: `dead_end` where the task has a
    solver, `energy` where the driver sent a Potts model (aop.energy_model)."""
    costs: dict[str, FreeCost] = {}
    for target, available in (("dead_end", task.has_dead_ends), ("energy", potts is not None)):
        fn = free_cost(target, task, mask_id(task), potts, cfg.aop.token_temperature) if available else None
        if fn is not None:
            costs[target] = fn
    return costs


def _diagnostics(
    denoiser: torch.nn.Module,
    policy: PolicyNet,
    task: Any,
    temperature: float,
    free_costs: dict[str, FreeCost],
    val: dict[str, np.ndarray],
    rank: int,
    world: int,
    device: torch.device,
) -> dict[str, float]:
    """The mean cost of the position the policy and every heuristic/rule would reveal, on fixed
    validation states.

    The states are every state of the margin trajectories of the validation instances (frozen
    denoiser: the same states at every evaluation), teacher-forced, or sampled at
    `aop.token_temperature` with a fixed seed (then there is no reference, and only the
    reference-free costs are reported), split over the workers like `_validate`.
    """
    rows = slice(rank, None, world)
    fixed = torch.tensor(val["fixed"][rows]).to(device)
    target = torch.tensor(val["target"][rows]).to(device).long()
    tokens = torch.where(fixed, target, mask_id(task))
    trajectories = Trajectories.collect(
        denoiser,
        get_order("margin"),
        tokens,
        fixed,
        target,
        mask_id(task),
        token_temperature=temperature,
        generator=torch.Generator().manual_seed(rank),
    )
    xt, x0 = trajectories.all_states()
    orders = {name: get_order(name, task=task) for name in order_names(task) if name not in ("learned", "random")}
    orders["learned"] = policy
    costs = chosen_costs(orders, denoiser, xt, None if temperature > 0 else x0, mask_id(task), free_costs=free_costs)
    keys = [(name, kind) for name in sorted(costs) for kind in sorted(costs[name])]
    n = float((xt == mask_id(task)).any(dim=1).sum())
    *sums, total = _all_sum([costs[name][kind] * n for name, kind in keys] + [n], device)
    return {f"val_chosen_{kind}/{name}": value / max(total, 1.0) for (name, kind), value in zip(keys, sums)}
