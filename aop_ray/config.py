"""Typed run configuration, loaded from YAML plus `dotted.key=value` overrides.

One `Config` object flows from the CLI to the Ray workers (as a plain dict,
rebuilt with `Config.from_dict` on the other side), so every knob is declared
here once, with its type and default. Unknown keys, wrong types and bad values
are refused at load time with the offending key named, before any compute.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal, Union

from aop_ray.errors import InputError
from aop_ray.precision import Precision
from aop_ray.readers import load_yaml, read_text, short
from aop_ray.tasks import TASKS, Task, task_params

# Keys that were renamed: refused with the new name, rather than as unknown. "temperature" alone meant
# four things; each now says what it scales.
RENAMED = {
    "aop.temperature": "aop.policy_temperature",
    "grpo.temperature": "grpo.rollout_temperature",
    "evaluate.temperature": "evaluate.token_temperature",
}


def parse_dataclass(cls: type, data: Any, where: str) -> Any:
    """Build dataclass `cls` from a mapping, checking keys and types recursively."""
    if not isinstance(data, dict):
        raise InputError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    for name in unknown:
        key = f"{where}.{name}" if where else name
        new = RENAMED.get(key)
        if new is not None and new.rsplit(".", 1)[-1] in fields:
            raise InputError(f"{key}: renamed to {new}")
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise InputError(f"{key}: unknown key (known: {', '.join(sorted(fields))})")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(hints[name], value, key)
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required field is missing
        raise InputError(f"{where or 'config'}: {err}") from None


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except InputError as err:
                errors.append(str(err))
        raise InputError(errors[0] if len(errors) == 1 else f"{key}: {short(value)} does not match {_type_name(hint)}")
    if origin is Literal:
        if value not in args:
            raise InputError(f"{key}: must be one of {', '.join(map(str, args))}, got {short(value)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise InputError(f"{key}: expected a list, got {short(value)}")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(f"{key}: expected a mapping, got {short(value)}")
        return {str(k): _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        return parse_dataclass(typing.cast(type, hint), value, key)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads "3e-4" (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"{key}: must be a finite number, got {value}")
    if hint in (int, float, str, bool) and not (
        isinstance(value, hint) and not (hint is int and isinstance(value, bool))
    ):
        raise InputError(f"{key}: expected {hint.__name__}, got {type(value).__name__} {short(value)}")
    return value


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _positive(obj: Any, *names: str, where: str, allow_zero: bool = False) -> None:
    for name in names:
        value = getattr(obj, name)
        if value < 0 or (value == 0 and not allow_zero):
            bound = ">= 0" if allow_zero else "> 0"
            raise InputError(f"{where}.{name}: must be {bound}, got {value}")


def check_threshold(value: float | None, key: str) -> None:
    """A confidence threshold is a probability; shared by the evaluate CLI and the sweep config."""
    if value is not None and not 0 < value <= 1:
        raise InputError(f"{key}: a probability in (0, 1], got {value}")


def make_task(params: dict[str, Any], where: str = "task") -> Task:
    """The task named by `params['name']`, with the remaining keys as its fields."""
    params = dict(params)
    name = params.pop("name", None)
    if name not in TASKS:
        raise InputError(f"{where}.name: unknown task {name!r} (known: {', '.join(sorted(TASKS))})")
    return parse_dataclass(TASKS[name], params, where)


@dataclasses.dataclass
class GenerateConfig:
    """How to build a dataset that does not exist yet (cached as Parquet)."""

    n: int
    seed: int = 0
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # task.generate kwargs

    def __post_init__(self) -> None:
        _positive(self, "n", where="generate")


@dataclasses.dataclass
class DatasetConfig:
    path: str
    generate: GenerateConfig | None = None


@dataclasses.dataclass
class DataConfig:
    train: DatasetConfig
    val: DatasetConfig | None = None


@dataclasses.dataclass
class PretrainedConfig:
    """A pretrained masked LM used as the denoiser (`models/pretrained.py`), as its checkpoint records it.

    Everything a worker needs to rebuild the model without the files is here (`config`, the token ids);
    the weights come from `source` and must hash to `sha256`, or from the checkpoint's own `denoiser.pt`
    once fine-tuned.
    """

    source: Literal["huggingface", "antiberty", "factory"]
    path: str = ""  # huggingface: the model directory (absolute); antiberty: ""; factory: MODULE:FUNCTION
    sha256: str = ""  # of the weight files, in name order
    config: dict[str, Any] = dataclasses.field(default_factory=dict)  # the transformers config, as a dict
    token_ids: list[int] = dataclasses.field(default_factory=list)  # model id of each task output token
    mask_id: int = -1
    cls_id: int = -1  # -1: the model takes no such token
    sep_id: int = -1
    pad_id: int = -1


@dataclasses.dataclass
class ModelConfig:
    """The denoiser: the project's pre-LN bidirectional transformer of this size, or a pretrained masked
    LM (`pretrained`; `d_model` is then its hidden size and the other size fields are unused)."""

    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    ff_mult: int = 4
    dropout: float = 0.0
    relation_bias: bool = True  # per-head attention bias by shared structure group (row/col/box)
    # No weight tied to the task's size (tasks.SizeFreeForm; SAT): the same checkpoint runs on formulas of
    # any size (`evaluate --param n_vars=50 --param n_clauses=218`)
    size_free: bool = False
    pretrained: PretrainedConfig | None = None

    def __post_init__(self) -> None:
        _positive(self, "d_model", "n_layers", "n_heads", "ff_mult", where="model")
        if self.d_model % self.n_heads:
            raise InputError(f"model.n_heads: {self.n_heads} does not divide model.d_model {self.d_model}")
        if not 0 <= self.dropout < 1:
            raise InputError(f"model.dropout: must be in [0, 1), got {self.dropout}")
        if self.size_free and self.pretrained is not None:
            raise InputError("model.size_free: a pretrained model's weights are its own; leave size_free out")


GENERIC_FEATURES = ("probs", "stats", "hidden", "group_probs", "group_tokens")  # see models/policy.py
TOKEN_AXIS_FEATURES = ("probs", "stats", "group_probs", "group_tokens")  # what encoder token_axis reads
CLAUSE_GRAPH_FEATURES = ("probs", "stats")  # what encoder clause_graph reads (models/clause_graph.py)
SIZE_FREE_ENCODERS = ("clause_graph",)  # no weight tied to the task's size: runs at any size on a size-free denoiser


@dataclasses.dataclass
class PolicyConfig:
    """The learned order: a small network over denoiser outputs.

    Its score is `base_scale * base_order(state) + residual`, the residual head
    initialised to zero, so training starts from the heuristic. `encoder`
    `transformer` mixes positions by structured attention; `token_axis` embeds
    every (position, token) pair with shared weights and pools over group peers and
    tokens (models/policy.py), `d_model` its per-pair width and `n_layers` its rounds;
    `clause_graph` (3-SAT) passes messages over the formula's literal-clause graph
    (models/clause_graph.py), `d_model` its node width and `n_layers` its rounds,
    `edge_messages` whether a clause sends each of its literals a message of its own.
    """

    encoder: Literal["transformer", "token_axis", "clause_graph"] = "transformer"
    d_model: int = 48
    n_layers: int = 2  # 0: a per-position MLP that cannot mix information across positions
    n_heads: int = 4
    relation_bias: bool = True
    features: list[str] = dataclasses.field(default_factory=lambda: ["probs", "stats"])  # + "hidden"
    task_features: list[str] = dataclasses.field(default_factory=list)  # e.g. Sudoku naked_single
    base_order: Literal["margin", "confidence", "entropy"] = "margin"
    base_scale: float = 50.0  # 0: no base order (learned from scratch; untrained, it picks the first masked)
    learn_scale: bool = True
    # clause_graph only: each clause sends each of its literals its own message, read from the clause and the
    # clause's other literals (a literal learns what the rest of its clause still needs), not one shared message
    edge_messages: bool = False

    def __post_init__(self) -> None:
        _positive(self, "d_model", "n_heads", where="policy")
        if self.edge_messages and self.encoder != "clause_graph":
            raise InputError(f"policy.edge_messages: only encoder clause_graph has clauses (got {self.encoder})")
        _positive(self, "n_layers", "base_scale", where="policy", allow_zero=True)
        if self.d_model % self.n_heads:
            raise InputError(f"policy.n_heads: {self.n_heads} does not divide policy.d_model {self.d_model}")
        for name in self.features:
            if name not in GENERIC_FEATURES:
                raise InputError(f"policy.features: unknown feature {name!r} (known: {', '.join(GENERIC_FEATURES)})")
        if not self.features and not self.task_features:
            raise InputError("policy.features: the policy needs at least one feature")
        reads = {"token_axis": TOKEN_AXIS_FEATURES, "clause_graph": CLAUSE_GRAPH_FEATURES}.get(self.encoder)
        if reads is not None and sorted(self.features) != sorted(reads):
            raise InputError(
                f"policy.features: encoder {self.encoder} reads exactly {', '.join(reads)} "
                f"(got {', '.join(self.features) or 'none'})"
            )


REFERENCE_FREE = ("dead_end", "energy")  # aop.target values scored without a reference (aop.free_cost)


@dataclasses.dataclass
class AopConfig:
    """The AOP loss and where its training states come from (stages `policy` and `joint`)."""

    # the (pre-trained) denoiser: required by the policy stages; stage denoiser continues training it
    denoiser_checkpoint: str | None = None
    # per-position cost the policy minimises: the reference's CE, 1[argmax != reference], both, or
    # `dead_end`: 1[revealing the argmax leaves no solution], decided by the task's solver (sat);
    # `energy`: the Potts energy the draw at aop.token_temperature costs above the position's best
    # residue, under `energy_model` (protein; protein/potts.excess_energy)
    target: Literal["ce", "error", "both", "dead_end", "energy"] = "ce"
    # target energy: a Potts model of the *training* split (`train_potts.pt`, written by
    # python -m aop_ray.protein.oracle); never the oracle's, which is fitted on held-out data for evaluation
    energy_model: str | None = None
    # > 0: trajectories are the denoiser's own draws at this token temperature, not teacher-forced
    # (the states a sampler meets at it; they have no reference, so the target is energy)
    token_temperature: float = 0.0
    # E_pi[cost], rank the base order's top k, or fit P(argmax right) at every masked position (losses.py)
    objective: Literal["expected", "pairwise", "correctness"] = "expected"
    pairwise_k: int = 8  # objective pairwise: the shortlist size
    policy_temperature: float = 1.0  # the policy's softmax over masked positions in the AOP loss
    entropy_beta: float = 0.0
    states: Literal["uniform", "trajectory"] = "trajectory"
    trajectory_order: str = "margin"  # order that picks positions in the first trajectories
    # what the trajectories write at token_temperature 0: the reference (teacher-forced), or the denoiser's
    # argmax, as a greedy decoder does. A task with many solutions (3-SAT) leaves the reference's path at
    # most decodes, so a policy trained on the reference's states only meets states unlike them; argmax
    # trajectories have no reference, so their target must be reference-free (dead_end, energy)
    trajectory_tokens: Literal["reference", "argmax"] = "reference"
    trajectory_instances: int = 256  # per worker and refresh
    refresh_every: int = 0  # DAgger: re-collect trajectories with the current policy every N steps
    focus: float = 0.0  # share of each batch drawn by the chosen cell's CE (prioritised replay; aop.py)
    # stage policy, trajectory states: the frozen denoiser's logits at every pool state are computed once,
    # not at every step (Trajectories.denoised); skipped for policies that read its hidden state
    cache_logits: bool = True
    mdm_lambda: float = 0.0  # joint: + lambda * MDM loss on uniform states
    denoiser_lr: float = 1e-4  # joint

    def __post_init__(self) -> None:
        _positive(self, "policy_temperature", "trajectory_instances", "pairwise_k", where="aop")
        _positive(
            self, "entropy_beta", "refresh_every", "mdm_lambda", "denoiser_lr", "token_temperature",
            where="aop", allow_zero=True,
        )  # fmt: skip
        if not 0.0 <= self.focus <= 1.0:
            raise InputError(f"aop.focus: must be in [0, 1], got {self.focus}")


@dataclasses.dataclass
class GrpoConfig:
    """Stage `grpo`: group-relative policy gradient of the same policy network (aop_ray/grpo.py).

    `train.batch_size` counts rollouts: batch_size / group_size puzzles per step, split over workers.
    The frozen denoiser is `aop.denoiser_checkpoint`, as for stage `policy`.
    """

    group_size: int = 8  # rollouts per puzzle; advantages are standardised within a group
    rollout_temperature: float = 1.0  # rollouts sample positions from softmax(scores / rollout_temperature)
    # what a rollout earns: the task's verifier (solved 1/0), or `energy`: minus its Potts energy under
    # aop.energy_model (a protein family's training-split model; the evaluation oracle never enters)
    reward: Literal["verifier", "energy"] = "verifier"
    token_temperature: float = 0.0  # rollouts' tokens: argmax (0), or sampled at this temperature
    states_per_rollout: int = 8  # decoding steps of each rollout that enter the loss
    kl_beta: float = 0.0  # + kl_beta * KL(pi || softmax(kl_scale * kl_reference / rollout_temperature))
    kl_reference: Literal["margin", "confidence", "entropy"] = "margin"
    kl_scale: float = 50.0

    def __post_init__(self) -> None:
        _positive(self, "rollout_temperature", "states_per_rollout", "kl_scale", where="grpo")
        _positive(self, "kl_beta", "token_temperature", where="grpo", allow_zero=True)
        if self.group_size < 2:
            raise InputError(f"grpo.group_size: needs at least 2 rollouts per puzzle, got {self.group_size}")


@dataclasses.dataclass
class TrainConfig:
    stage: Literal["denoiser", "policy", "joint", "grpo"] = "denoiser"
    steps: int = 1000
    batch_size: int = 128  # global: split evenly across workers
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decay to lr * min_lr_ratio
    warmup_steps: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    loss_weighting: Literal["elbo", "mean"] = "elbo"
    augment: bool = True
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 500
    checkpoint_keep: int = 2  # the newest checkpoints kept in the run directory (the final one apart)
    eval_every: int = 0  # 0: only at the end
    eval_instances: int = 200
    eval_order: str = "margin"
    # Network forwards (and backward) in bf16 autocast or fp32; auto: bf16 where the device has bf16 units
    # (aop_ray/precision.py). fp32 by default: a denoiser trained under bf16 autocast trailed fp32 at every
    # logged step of docs/results/precision.md. Losses and checkpoints stay fp32 either way.
    precision: Precision = "fp32"

    def __post_init__(self) -> None:
        _positive(self, "steps", "batch_size", "log_every", "checkpoint_every", "checkpoint_keep", where="train")
        _positive(self, "lr", "grad_clip", where="train")
        _positive(
            self,
            "warmup_steps",
            "weight_decay",
            "eval_every",
            "eval_instances",
            "min_lr_ratio",
            where="train",
            allow_zero=True,
        )


@dataclasses.dataclass
class RayConfig:
    """Where and how wide to train.

    `cpus_per_worker` is fractional on purpose: two workers and a sweep's trial
    processes share a 2-core machine (each worker runs `torch_threads` threads).
    """

    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 0.5
    torch_threads: int = 1  # intra-op threads per CPU worker
    storage_path: str = "runs"  # Ray Train storage: local dir, NFS, s3:// or gs://
    max_failures: int = 2  # worker-group restarts from the last checkpoint (Ray Train FailureConfig)
    # How workers spread over nodes (Ray placement group strategy): STRICT_SPREAD puts each on its own node.
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"

    def __post_init__(self) -> None:
        _positive(self, "num_workers", "cpus_per_worker", "torch_threads", where="ray")
        _positive(self, "max_failures", where="ray", allow_zero=True)


@dataclasses.dataclass
class MlflowConfig:
    enabled: bool = True
    experiment: str = "aop-ray"
    tracking_uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db


@dataclasses.dataclass
class Config:
    INPUT_REFS: ClassVar[tuple[str, ...]] = ("aop.denoiser_checkpoint", "aop.energy_model")

    task: dict[str, Any]
    data: DataConfig
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    policy: PolicyConfig = dataclasses.field(default_factory=PolicyConfig)
    aop: AopConfig = dataclasses.field(default_factory=AopConfig)
    grpo: GrpoConfig = dataclasses.field(default_factory=GrpoConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)
    mlflow: MlflowConfig = dataclasses.field(default_factory=MlflowConfig)
    name: str = "run"  # the run directory is <ray.storage_path>/<name>
    output: str | None = None  # final checkpoint copied here too, if set

    def __post_init__(self) -> None:
        task = make_task(self.task)
        self.task = task_params(task)
        known = task.feature_names
        for name in self.policy.task_features:
            if name not in known:
                raise InputError(
                    f"policy.task_features: task {task.name!r} has no feature {name!r} "
                    f"(known: {', '.join(known) or 'none'})"
                )
        if self.train.stage != "denoiser" and not self.aop.denoiser_checkpoint:
            raise InputError(
                f"aop.denoiser_checkpoint: stage {self.train.stage!r} needs a trained denoiser "
                f"(train one with stage: denoiser first)"
            )
        if self.train.stage == "joint" and self.aop.objective != "expected":
            raise InputError(
                f"aop.objective: {self.aop.objective} uses the costs only as labels, so it gives the "
                "denoiser no gradient; stage joint needs objective expected"
            )
        if self.policy.encoder == "clause_graph" and task.name != "sat":
            raise InputError(
                f"policy.encoder: clause_graph reads a 3-SAT formula; the {task.name} task has none, "
                "use encoder transformer or token_axis"
            )
        if self.aop.target == "dead_end" and not task.has_dead_ends:
            raise InputError(f"aop.target: dead_end needs a task with a solver (sat); the {task.name} task has none")
        if self.aop.target in ("dead_end", "energy") and self.train.stage == "joint":
            raise InputError(
                f"aop.target: {self.aop.target} is not a loss the denoiser should learn from; stage joint needs "
                "ce or both"
            )
        energy = self.aop.target == "energy" or (self.train.stage == "grpo" and self.grpo.reward == "energy")
        if energy and task.name != "protein":
            key = "aop.target" if self.aop.target == "energy" else "grpo.reward"
            raise InputError(f"{key}: energy scores residues with a protein family's Potts model; the "
                             f"{task.name} task has none")  # fmt: skip
        if energy != bool(self.aop.energy_model):
            raise InputError(
                "aop.energy_model: target energy (and grpo.reward energy) needs the Potts model of the "
                "training split (train_potts.pt from python -m aop_ray.protein.oracle)"
                if self.aop.energy_model is None
                else f"aop.energy_model: read only by aop.target energy or grpo.reward energy (the target is "
                f"{self.aop.target!r}, stage {self.train.stage!r})"
            )
        if self.aop.token_temperature > 0 and self.aop.target != "energy":
            raise InputError(
                f"aop.token_temperature: sampled trajectories are scored by target energy only (target "
                f"{self.aop.target!r} runs at token_temperature 0); use target energy or token_temperature 0"
            )
        if self.aop.token_temperature > 0 and self.aop.states != "trajectory":
            raise InputError("aop.token_temperature: samples trajectories; it needs aop.states trajectory")
        if self.aop.trajectory_tokens == "argmax":
            if self.aop.token_temperature > 0:
                raise InputError(
                    "aop.trajectory_tokens: argmax is for token_temperature 0; sampled trajectories already "
                    "write the denoiser's own draws"
                )
            if self.aop.target not in REFERENCE_FREE or self.aop.states != "trajectory":
                raise InputError(
                    f"aop.trajectory_tokens: argmax trajectories leave the reference's path, so they need "
                    f"aop.states trajectory and a reference-free aop.target ({', '.join(REFERENCE_FREE)}), got states "
                    f"{self.aop.states!r}, target {self.aop.target!r}"
                )
        if self.aop.objective == "correctness" and self.aop.target not in ("error", "dead_end"):
            raise InputError(
                f"aop.target: objective correctness fits the probability that the argmax is right, "
                f"so its target is the error indicator ('error'), got {self.aop.target!r}"
            )
        if self.train.stage == "grpo" and self.grpo.reward == "verifier" and not task.has_verifier:
            raise InputError(
                f"train.stage: grpo rewards a rollout by the task's verifier, and task {task.name!r} "
                f"has none (its family oracle is fitted on held-out data, for evaluation only); "
                f"train its order with stage policy, or with grpo.reward energy and a training-split "
                f"Potts model (aop.energy_model)"
            )
        if self.train.stage == "grpo" and self.train.batch_size < self.grpo.group_size * self.ray.num_workers:
            raise InputError(
                f"train.batch_size: stage grpo needs at least grpo.group_size x ray.num_workers = "
                f"{self.grpo.group_size * self.ray.num_workers} rollouts per step, got "
                f"{self.train.batch_size}"
            )

    def build_task(self) -> Task:
        return make_task(self.task)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        return parse_dataclass(cls, data, "")


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config dicts as {dotted.key: value}: the names users write in overrides."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply one `dotted.key=value` override (value parsed as YAML) in place."""
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise InputError(f"override {override!r}: expected dotted.key=value")
    value = load_yaml(raw, f"override {key}") if raw else ""
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise InputError(f"override {key}: {part} is not a mapping")
        node = child
    node[parts[-1]] = value


def parse_assignments(items: list[str] | None, flag: str) -> dict[str, Any]:
    """`key=value` command-line items as a dict, values parsed as YAML."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"{flag} {item!r}: expected key=value")
        out[key] = load_yaml(value, f"{flag} {key}")
    return out


# A checkout holds the shipped inputs at its top (tune_configs/, benchmarks/checkpoints/); an installed
# package holds the same files inside it (pyproject maps them to aop_ray/tune_configs, aop_ray/checkpoints).
PROJECT_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGED = {"tune_configs": "tune_configs", "benchmarks/checkpoints": "checkpoints"}


def shipped(ref: str | Path) -> Path:
    """The project's own copy of a shipped input named by its checkout path (`tune_configs/main.yaml`),
    in the checkout when there is one, else inside the installed package."""
    path = Path(ref)
    for prefix, inside in PACKAGED.items():
        head = Path(prefix).parts
        if path.parts[: len(head)] == head and not (PROJECT_ROOT / path).exists():
            packaged = PACKAGE_DIR / inside / Path(*path.parts[len(head) :])
            if packaged.exists():
                return packaged
    return PROJECT_ROOT / path


def find_input(ref: str) -> str:
    """A committed input (a checkpoint, an oracle, a shipped config) named by a relative path: found from
    the working directory when it is there, else from the project, so shipped configs work from any directory."""
    path = Path(ref).expanduser()
    if path.is_absolute() or path.exists() or "://" in ref:
        return ref
    ours = shipped(path)
    return str(ours) if ours.exists() else ref


def _resolve_refs(data: dict[str, Any], keys: tuple[str, ...], resolve: Any) -> None:
    """Rewrite the relative paths at dotted `keys` of a raw config with `resolve`."""
    for key in keys:
        *parents, leaf = key.split(".")
        node: Any = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        value = node.get(leaf) if isinstance(node, dict) else None
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute() and "://" not in value:
            node[leaf] = resolve(value)


def load_config(path: str | Path, overrides: list[str] | None = None, cls: type | None = None) -> Any:
    """Read a YAML config, apply overrides, validate everything (a `Config` unless `cls` says otherwise).

    A config's references to other configs (`CONFIG_REFS`) are relative to the file that names them;
    overrides are relative to the working directory. Committed inputs (`INPUT_REFS`: checkpoints,
    oracles) are found from the working directory, else from the project (`find_input`).
    """
    path = Path(find_input(str(path)))
    if not path.exists():
        raise InputError(f"{path}: config file not found")
    data = load_yaml(read_text(path), str(path)) or {}
    cls = cls or Config
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    _resolve_refs(data, getattr(cls, "CONFIG_REFS", ()), lambda ref: str(path.parent.absolute() / ref))
    for override in overrides or []:
        apply_override(data, override)
    _resolve_refs(data, getattr(cls, "INPUT_REFS", ()), find_input)
    try:
        return parse_dataclass(cls, data, "")
    except InputError as err:
        raise InputError(f"{path}: {err}") from None


@dataclasses.dataclass(kw_only=True)
class DecodeConfig:
    """How an evaluation decodes: the same knobs, validated here once, for the evaluate CLI
    (`evaluate.Evaluation`), the main job's last stage and every Tune trial. Every order decodes the
    same instances with the same seed, so an evaluation is a paired comparison."""

    limit: int | None = None  # the first N instances
    batch_size: int = 256
    planner_nll: bool = False  # the teacher-forced NLL pass doubles the cost
    k: int = 1  # positions revealed per denoiser forward
    threshold: float | None = None  # also reveal every masked position this confident (sampling.unmask)
    token_temperature: float = 0.0  # token sampling (proteins sample; every order at the same one)
    order_temperature: float = 0.0  # > 0: sample positions from softmax(score / T)
    samples: int = 1  # completions per instance, decoded in one batch (a task's `diversity` compares them)
    precision: Precision = "auto"  # denoiser and policy forwards in bf16 autocast or fp32 (aop_ray/precision.py)

    def key(self, name: str) -> str:
        """How the user wrote field `name`: a config key here, a flag on the command line."""
        return f"evaluate.{name}"

    def __post_init__(self) -> None:
        for name in ("k", "batch_size", "samples", *(("limit",) if self.limit is not None else ())):
            if getattr(self, name) < 1:
                raise InputError(f"{self.key(name)}: must be >= 1, got {getattr(self, name)}")
        for name in ("token_temperature", "order_temperature"):
            if getattr(self, name) < 0:
                raise InputError(f"{self.key(name)}: must be >= 0, got {getattr(self, name)}")
        check_threshold(self.threshold, self.key("threshold"))
        if self.samples > self.batch_size:
            raise InputError(
                f"{self.key('samples')}: {self.samples} completions do not fit a batch of {self.batch_size}"
            )


@dataclasses.dataclass(kw_only=True)
class EvaluateConfig(DecodeConfig):
    """The pipeline's last stage: `learned` against every heuristic and rule on one dataset."""

    data: DatasetConfig
    orders: list[str] = dataclasses.field(default_factory=list)  # empty: every order the task has
    threads: int | None = None


@dataclasses.dataclass
class PipelineConfig:
    """The main job: denoiser (trained, or a given checkpoint), then the AOP policy, then evaluation.

    Each training stage is an ordinary training config plus overrides, so everything a stage
    can do standalone (`--config`) it can do here, and the stage configs stay the single source.
    """

    CONFIG_REFS: ClassVar[tuple[str, ...]] = ("policy_config", "denoiser_config")
    INPUT_REFS: ClassVar[tuple[str, ...]] = ("denoiser_checkpoint",)

    evaluate: EvaluateConfig
    policy_config: str
    denoiser_config: str
    denoiser_checkpoint: str | None = None  # used when it exists; otherwise the denoiser is trained
    denoiser_overrides: list[str] = dataclasses.field(default_factory=list)
    policy_overrides: list[str] = dataclasses.field(default_factory=list)
    name: str = "main"  # runs are <name>-<timestamp>-{denoiser,policy,evaluate}
    experiment: str = "aop-ray"
    # `ray.*` keys applied to every stage, as on a stage's command line (e.g. ray.storage_path=/shared/runs)
    ray: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        # Checked as a whole RayConfig (keys, types, bounds); kept as the keys given, to apply over each stage's own.
        checked = parse_dataclass(RayConfig, self.ray, "ray")
        self.ray = {key: getattr(checked, key) for key in self.ray}

    def stage(self, cfg: Config) -> Config:
        """A stage's config with the pipeline's `ray.*` keys applied (validated again as a whole)."""
        return dataclasses.replace(cfg, ray=dataclasses.replace(cfg.ray, **self.ray)) if self.ray else cfg


@dataclasses.dataclass
class Domain:
    """One hyper-parameter's search domain: exactly one of the fields is set."""

    grid: list[Any] | None = None  # every value, in every seed (tune.grid_search)
    choice: list[Any] | None = None  # one value per sample
    uniform: list[float] | None = None  # [low, high]
    loguniform: list[float] | None = None  # [low, high], both > 0
    randint: list[int] | None = None  # [low, high), integers

    def kind(self, where: str) -> str:
        kinds = [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]
        if len(kinds) != 1:
            raise InputError(
                f"{where}: give exactly one of grid, choice, uniform, loguniform, randint "
                f"(got {', '.join(kinds) or 'none'})"
            )
        values = getattr(self, kinds[0])
        if kinds[0] in ("grid", "choice") and not values:
            raise InputError(f"{where}.{kinds[0]}: needs at least one value")
        if kinds[0] in ("uniform", "loguniform", "randint"):
            if len(values) != 2 or not values[0] < values[1]:
                raise InputError(f"{where}.{kinds[0]}: expected [low, high] with low < high, got {values}")
            if kinds[0] == "loguniform" and values[0] <= 0:
                raise InputError(f"{where}.loguniform: bounds must be > 0, got {values}")
        return kinds[0]

    def probe_values(self) -> list[Any]:
        """Values that stand for the domain when a training config is validated with it."""
        return list(self.grid or self.choice or self.uniform or self.loguniform or self.randint or [])


@dataclasses.dataclass
class SchedulerConfig:
    """`fifo`: every trial runs its full budget (the fair comparison). `asha`: early stopping, for searches."""

    type: Literal["fifo", "asha"] = "fifo"
    metric: str = "val_solve_rate"  # reported by the training loop at every evaluation
    mode: Literal["max", "min"] = "max"
    max_t: int = 100  # in reports (training_iteration), not steps
    grace_period: int = 1
    reduction_factor: float = 2.0

    def __post_init__(self) -> None:
        _positive(self, "max_t", "grace_period", where="scheduler")
        if self.reduction_factor <= 1:
            raise InputError(f"scheduler.reduction_factor: must be > 1, got {self.reduction_factor}")


@dataclasses.dataclass
class SweepResources:
    """What one trial holds. `learned` trials also start `ray.num_workers` Train workers of their own."""

    max_concurrent_trials: int = 2
    eval_cpus: float = 1.0  # a heuristic trial: it decodes in its own process
    trainer_cpus: float = 0.25  # a learned trial's driver process, beside its Train workers
    eval_threads: int = 1  # torch threads for decoding inside a trial
    # Lower max_concurrent_trials until every running trial fits the cluster's CPUs at once.
    # Turn off on an autoscaling cluster, whose size at the start is not its size.
    fit_to_cluster: bool = True

    def __post_init__(self) -> None:
        _positive(self, "max_concurrent_trials", "eval_cpus", "eval_threads", where="resources")
        _positive(self, "trainer_cpus", where="resources", allow_zero=True)


@dataclasses.dataclass(kw_only=True)
class SweepEvaluateConfig(DecodeConfig):
    """The test set every trial is scored on; the same puzzles for every order and seed (a paired comparison)."""

    data: DatasetConfig
    oracle: str | None = None  # protein families: the oracle directory (python -m aop_ray.protein.oracle)


@dataclasses.dataclass
class SweepConfig:
    """A Ray Tune sweep: one trial per (order, seed) and, for `learned`, per hyper-parameter setting.

    Heuristic trials decode the test set with the denoiser checkpoint. `learned` trials first
    train a policy with `train_config` (+ `train_overrides` + the trial's `search` values +
    its seed) on that denoiser, through a Ray Train `TorchTrainer` launched inside the trial.
    """

    CONFIG_REFS: ClassVar[tuple[str, ...]] = ("denoiser_config", "train_config")
    INPUT_REFS: ClassVar[tuple[str, ...]] = ("denoiser_checkpoint", "evaluate.oracle")

    name: str
    orders: list[str]
    evaluate: SweepEvaluateConfig
    denoiser_checkpoint: str
    denoiser_config: str | None = None  # trains the denoiser first when the checkpoint does not exist
    train_config: str | None = None  # needed when `learned` is among the orders
    train_overrides: list[str] = dataclasses.field(default_factory=list)
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    search: dict[str, Domain] = dataclasses.field(default_factory=dict)  # dotted train-config key -> domain
    num_samples: int = 1  # samples of the non-grid domains
    scheduler: SchedulerConfig = dataclasses.field(default_factory=SchedulerConfig)
    resources: SweepResources = dataclasses.field(default_factory=SweepResources)
    storage_path: str = "runs/tune"  # the sweep lives in <storage_path>/<name>; local, NFS or s3://
    mlflow: MlflowConfig = dataclasses.field(default_factory=MlflowConfig)

    def __post_init__(self) -> None:
        _positive(self, "num_samples", where="sweep")
        if not self.orders:
            raise InputError("orders: the sweep needs at least one order")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise InputError(f"seeds: needs at least one seed and no repeats, got {self.seeds}")
        if "learned" in self.orders and not self.train_config:
            raise InputError("train_config: order 'learned' needs the training config of its policy")
        if self.search and self.orders != ["learned"]:
            raise InputError(
                f"search: hyper-parameters apply to learned trials only; a search sweep lists "
                f"orders: [learned], got {self.orders}"
            )
        for key, domain in self.search.items():
            domain.kind(f"search.{key}")
        if self.scheduler.type == "asha" and self.orders != ["learned"]:
            raise InputError(
                "scheduler.type: asha stops trials early, which biases an order comparison; "
                "use it in a search sweep (orders: [learned])"
            )
