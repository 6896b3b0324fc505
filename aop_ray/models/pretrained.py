"""A pretrained Hugging Face masked LM as the denoiser: what users bring.

Everything above the denoiser (losses, orders, the sampler, policies, the
environments) calls `denoiser(tokens)` for logits over the task's tokens and
`denoiser(tokens, return_hidden=True)` for the policy's hidden features.
`MaskedLMDenoiser` gives a `transformers` masked LM that interface:

- task tokens become the model's ids (`PretrainedConfig.token_ids`, from its
  vocabulary), the task's mask its own mask token;
- the model's CLS / SEP (or EOS) are put around each sequence, the task's
  padding token (trailing, e.g. antibody chains shorter than the task) becomes
  attention-masked padding;
- logits are read at the task's positions and restricted to the task's output
  tokens, so no order or sampler ever sees a special token.

`describe` reads a model directory once (architecture, vocabulary, weight
digest) into a `PretrainedConfig`, which a checkpoint manifest records; workers
rebuild the architecture from it and receive the weights from the driver, and
`load_weights` refuses files whose digest changed. Nothing is downloaded.

Anything else comes in through a factory, `py:MODULE:FUNCTION`: `FUNCTION(task)`
returns an `nn.Module` that already has the denoiser interface (logits over the
task's output tokens, `return_hidden`) and a `d_model` attribute (its hidden
width). The manifest names the function, so loading such a checkpoint imports
user code: it is refused unless `AOP_RAY_TRUST_FACTORY=1` says the user trusts it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import importlib.util
import json
import os
import typing
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from aop_ray.config import ModelConfig, PretrainedConfig, parse_dataclass
from aop_ray.errors import InputError
from aop_ray.readers import short
from aop_ray.tasks import Task, input_vocab_size, mask_id

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # or their sharded forms, `*.safetensors`
ANTIBERTY = "antiberty"  # the AntiBERTy package (pip install antiberty==0.1.3): weights inside the wheel
FACTORY = "factory"  # py:MODULE:FUNCTION, FUNCTION(task) -> a module with the denoiser interface
TRUST_FACTORY_ENV = "AOP_RAY_TRUST_FACTORY"
_SPECIALS = {  # vocabulary names of special tokens, for a directory with a bare vocab.txt
    "mask_id": ("[MASK]", "<mask>"),
    "cls_id": ("[CLS]", "<cls>", "<s>"),
    "sep_id": ("[SEP]", "<eos>", "</s>"),
    "pad_id": ("[PAD]", "<pad>"),
}


class MaskedLMDenoiser(nn.Module):
    """A `transformers` masked LM behind the denoiser interface, for one task (module docstring)."""

    table: torch.Tensor  # task token id -> model id
    outputs: torch.Tensor  # model ids of the task's output tokens

    def __init__(self, lm: nn.Module, task: Task, spec: PretrainedConfig) -> None:
        super().__init__()
        self.lm = lm
        self.vocab_size = task.vocab_size
        pad = task.padding_token()
        table = torch.full((input_vocab_size(task),), -1, dtype=torch.long)
        table[: task.vocab_size] = torch.tensor(spec.token_ids)
        table[mask_id(task)] = spec.mask_id
        if pad is not None:
            table[pad] = max(spec.pad_id, 0)  # attention-masked: any id will do where the model has no PAD
        self.pad_token = -1 if pad is None else pad
        self.cls_id, self.sep_id = spec.cls_id, spec.sep_id
        self.register_buffer("table", table, persistent=False)
        self.register_buffer("outputs", torch.tensor(spec.token_ids), persistent=False)

    def forward(
        self, tokens: torch.Tensor, return_hidden: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, L, V) over the task's output tokens; with `return_hidden`, the last hidden states too."""
        length = tokens.shape[1]
        used = int((tokens != self.pad_token).any(0).nonzero().max()) + 1  # columns all padding are not run
        ids, attention, first = model_inputs(tokens[:, :used], self.table, self.pad_token, self.cls_id, self.sep_id)
        out = self.lm(input_ids=ids, attention_mask=attention, output_hidden_states=return_hidden)
        logits = _pad_to(out.logits[:, first : first + used][..., self.outputs], length)
        if not return_hidden:
            return logits
        return logits, _pad_to(out.hidden_states[-1][:, first : first + used], length)


def _pad_to(values: torch.Tensor, length: int) -> torch.Tensor:
    """(B, used, D) -> (B, length, D) with zeros at the trailing padding positions (fixed: never read)."""
    return torch.nn.functional.pad(values, (0, 0, 0, length - values.shape[1]))


def model_inputs(
    tokens: torch.Tensor, table: torch.Tensor, pad_token: int, cls_id: int, sep_id: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(input ids, attention mask, offset of the first task position) for task `tokens` (B, L).

    Padding (task token `pad_token`) must trail: SEP goes right after each row's last real token."""
    batch, length = tokens.shape
    real = tokens != pad_token
    ids = table[tokens]
    attention = real.long()
    first = 0
    if cls_id >= 0:
        ids = torch.cat([torch.full((batch, 1), cls_id, dtype=ids.dtype, device=ids.device), ids], 1)
        attention = torch.cat([torch.ones_like(attention[:, :1]), attention], 1)
        first = 1
    if sep_id >= 0:
        filler = table[pad_token] if pad_token >= 0 else table[0]  # attention-masked wherever it stays
        ids = torch.cat([ids, filler.expand(batch, 1)], 1)  # one more column, for the longest rows' SEP
        attention = torch.cat([attention, torch.zeros_like(attention[:, :1])], 1)
        end = (first + real.sum(1))[:, None]
        ids = ids.scatter(1, end, sep_id)
        attention = attention.scatter(1, end, 1)
    return ids, attention, first


def parse_source(text: str) -> tuple[str, str]:
    """`antiberty`, `hf:DIR` (a directory `save_pretrained` wrote) or `py:MODULE:FUNCTION`, as (source, path)."""
    if text == ANTIBERTY:
        return ANTIBERTY, ""
    if text.startswith("hf:") and len(text) > 3:
        return "huggingface", text[3:]
    if text.startswith("py:") and text.count(":") == 2 and all(text.split(":")[1:]):
        return FACTORY, text[3:]
    raise InputError(f"--model: expected 'antiberty', 'hf:DIR' or 'py:MODULE:FUNCTION', got {short(text)}")


def factory(path: str, trusted: bool = False) -> Callable[[Task], nn.Module]:
    """The function `MODULE:FUNCTION` names. Importing it runs code: from a manifest only when trusted."""
    if not trusted and os.environ.get(TRUST_FACTORY_ENV) != "1":
        raise InputError(
            f"model factory {short(path)}: loading it imports and runs that code; set {TRUST_FACTORY_ENV}=1 "
            "if you trust this checkpoint"
        )
    module_name, _, name = path.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise InputError(f"model factory {short(path)}: cannot import it ({short(str(err), 160)})") from None
    if not callable(function):
        raise InputError(f"model factory {short(path)}: not a function")
    return typing.cast(Callable[[Task], nn.Module], function)


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over a state dict's names, shapes and bytes: a factory model's weights have no files."""
    h = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        h.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return h.hexdigest()


def _factory_model(task: Task, path: str, trusted: bool) -> nn.Module:
    model = factory(path, trusted)(task)
    if not isinstance(model, nn.Module) or not isinstance(getattr(model, "d_model", None), int):
        raise InputError(f"model factory {short(path)}: must return an nn.Module with an int `d_model` (hidden width)")
    return model


IDENTITY = ("source", "sha256", "token_ids", "mask_id", "cls_id", "sep_id", "pad_id")


def identity(model: dict[str, Any], where: str = "model") -> dict[str, Any]:
    """What makes two denoisers the same model, for a policy's check: every `ModelConfig` field, a field the
    manifest lacks (written before the field existed) at its default; for a pretrained one, its weights'
    digest and token mapping, not where the directory sits (moving it keeps its policies valid) nor the
    transformers version that wrote its config dict."""
    full = dataclasses.asdict(parse_dataclass(ModelConfig, model, where))
    if not isinstance(full.get("pretrained"), dict):
        return full
    return {**full, "pretrained": {k: v for k, v in full["pretrained"].items() if k in IDENTITY}}


def model_dir(source: str, path: str = "") -> Path:
    """The directory holding the model's config and weights."""
    if source == ANTIBERTY:
        spec = importlib.util.find_spec(ANTIBERTY)
        if spec is None or not spec.submodule_search_locations:
            raise InputError("model antiberty: the AntiBERTy package is not installed (pip install -e '.[antibody]')")
        return Path(next(iter(spec.submodule_search_locations))) / "trained_models" / "AntiBERTy_md_smooth"
    return Path(path).expanduser().resolve()


def weight_files(directory: Path) -> list[Path]:
    files = sorted(directory.glob("*.safetensors"))
    files = files or [directory / name for name in WEIGHT_FILES if (directory / name).is_file()]
    if not (directory / "config.json").is_file() or not files:
        raise InputError(
            f"{directory}: not a Hugging Face model directory (needs config.json and model.safetensors or "
            "pytorch_model.bin, as save_pretrained writes them)"
        )
    return files


def digest(files: list[Path]) -> str:
    """sha256 over the weight files, in order: what a checkpoint records and loading checks."""
    h = hashlib.sha256()
    for file in files:
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def vocabulary(directory: Path) -> tuple[dict[str, int], dict[str, int]]:
    """The model's token -> id map and its special ids (mask, cls, sep, pad; -1 if it has none)."""
    vocab_file = next((p for p in (directory / "vocab.txt", directory.parent / "vocab.txt") if p.is_file()), None)
    if (directory / "tokenizer_config.json").is_file() or vocab_file is None:
        from transformers import AutoTokenizer

        try:
            with _quiet():
                tok = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        except Exception as err:
            why = short(str(err), 160)
            raise InputError(f"{directory}: no tokenizer or vocab.txt to map tokens with ({why})") from None
        vocab = dict(tok.get_vocab())
        specials = {
            "mask_id": tok.mask_token_id,
            "cls_id": tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id,
            "sep_id": tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id,
            "pad_id": tok.pad_token_id,
        }
        return vocab, {k: -1 if v is None else int(v) for k, v in specials.items()}
    words = [line.strip() for line in vocab_file.read_text(encoding="utf-8").splitlines()]
    vocab = {w: i for i, w in enumerate(words) if w}
    specials = {k: next((vocab[n] for n in names if n in vocab), -1) for k, names in _SPECIALS.items()}
    return vocab, specials


def describe(task: Task, source: str, path: str = "") -> PretrainedConfig:
    """Read the model at `source`/`path` once: its architecture, its ids for the task's tokens, its digest."""
    if source == FACTORY:  # the user named it on the command line: trusted
        model = _factory_model(task, path, trusted=True)
        return PretrainedConfig(
            source="factory", path=path, sha256=state_digest(model.state_dict()), config={"hidden_size": model.d_model}
        )
    directory = model_dir(source, path)
    if not directory.is_dir():
        raise InputError(f"{directory}: no such model directory")
    files = weight_files(directory)
    config = _load_config(directory)
    vocab, specials = vocabulary(directory)
    strings = task.model_tokens()
    if strings is None:
        raise InputError(f"task {task.name}: has no token strings, so no pretrained model's vocabulary can be mapped")
    missing = [s for s in strings if s not in vocab]
    if missing:
        raise InputError(
            f"{directory}: the model cannot emit task token {missing[0]!r} (task {task.name}; "
            f"not in its vocabulary of {len(vocab)})"
        )
    if specials["mask_id"] < 0:
        raise InputError(f"{directory}: the model's vocabulary has no mask token")
    positions = int(config.get("max_position_embeddings") or 0)
    needed = task.seq_len + (specials["cls_id"] >= 0) + (specials["sep_id"] >= 0)
    if positions and needed > positions:
        raise InputError(
            f"{directory}: task sequences need {needed} positions (task length {task.seq_len} plus special tokens); "
            f"the model has {positions}"
        )
    return PretrainedConfig(
        source=source,  # type: ignore[arg-type]
        path=str(directory) if source == "huggingface" else "",  # a package's copy is found where it is installed
        sha256=digest(files),
        config=config,
        token_ids=[vocab[s] for s in strings],
        **specials,
    )


def model_config(task: Task, source: str) -> ModelConfig:
    """The denoiser config of pretrained model `source` (`antiberty` or `hf:DIR`) for `task`."""
    spec = describe(task, *parse_source(source))
    hidden = int(spec.config.get("hidden_size") or 0)
    if hidden < 1:
        raise InputError(f"model {source}: its config has no hidden_size (the policy reads hidden states)")
    return ModelConfig(d_model=hidden, n_heads=1, pretrained=spec)


def _load_config(directory: Path) -> dict[str, Any]:
    from transformers import AutoConfig

    try:
        with _quiet():
            config = AutoConfig.from_pretrained(directory, local_files_only=True)
    except Exception as err:
        raise InputError(f"{directory / 'config.json'}: not a transformers config ({short(str(err), 160)})") from None
    data = config.to_dict()
    data.pop("_name_or_path", None)  # where this machine had it: not part of the architecture
    json.dumps(data)  # the manifest holds it
    return data


def build(task: Task, spec: PretrainedConfig) -> nn.Module:
    """The architecture `spec` records, randomly initialised (weights come from `load_weights` or a state);
    a factory's model as its function makes it (trusted: the driver checked the manifest)."""
    if spec.source == FACTORY:
        return _factory_model(task, spec.path, trusted=True)
    from transformers import AutoConfig, AutoModelForMaskedLM

    config = dict(spec.config)
    try:
        with _quiet():
            hf_config = AutoConfig.for_model(config.pop("model_type"), **config)
            lm = AutoModelForMaskedLM.from_config(hf_config)
    except Exception as err:
        raise InputError(f"model.pretrained.config: transformers cannot build it ({short(str(err), 160)})") from None
    return MaskedLMDenoiser(lm, task, spec)


def load_weights(spec: PretrainedConfig, task: Task) -> dict[str, torch.Tensor]:
    """The masked LM's weights from its directory, as a state dict of `MaskedLMDenoiser` (a factory's: of its
    model), refused in one line if they are not the ones the checkpoint was made with."""
    if spec.source == FACTORY:
        state = _factory_model(task, spec.path, trusted=False).state_dict()
        if spec.sha256 and state_digest(state) != spec.sha256:
            raise InputError(f"model factory {short(spec.path)}: its weights changed since the checkpoint was made")
        return state
    from transformers import AutoModelForMaskedLM

    directory = model_dir(spec.source, spec.path)
    files = weight_files(directory)
    found = digest(files) if spec.sha256 else ""
    if found != spec.sha256:
        raise InputError(
            f"{files[0]}: weights changed since the checkpoint was made (sha256 {found[:12]}..., "
            f"the manifest records {spec.sha256[:12]}...)"
        )
    try:
        with _quiet():
            lm = AutoModelForMaskedLM.from_pretrained(directory, local_files_only=True, weights_only=True)
    except Exception as err:
        raise InputError(f"{directory}: cannot load the model ({short(str(err), 200)})") from None
    return {f"lm.{k}": v for k, v in lm.state_dict().items()}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """transformers' progress bars and unused-weight warnings (AntiBERTy's extra heads) off for the call."""
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        logging.enable_progress_bar()
