"""Bring your own masked LM: the Hugging Face adapter on tiny random BERT and ESM models, the antibody
task, the Python API; and, where installed, the real AntiBERTy on the shared CoV-AbDab chains."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from aop_ray import api, checkpoints, data
from aop_ray.errors import InputError
from aop_ray.models import pretrained
from aop_ray.tasks import Antibody
from aop_ray.tasks.antibody import AMINO_ACIDS, MASK, PAD, cdrh3_span, read_heavy_chains
from aop_ray.wrap import wrap

from conftest import ROOT, call_cli, cli_env

BERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *AMINO_ACIDS]  # AntiBERTy's layout
COV_ABDAB = ROOT.parent / "shared" / "data" / "antibody" / "CoV-AbDab_050821.csv"
HAS_ANTIBERTY = importlib.util.find_spec("antiberty") is not None


def save_bert(directory: Path, vocab: list[str] = BERT_VOCAB, positions: int = 160) -> Path:
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=positions,
        pad_token_id=0,
    )
    BertForMaskedLM(config).save_pretrained(directory)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return directory


def save_esm(directory: Path) -> Path:
    from transformers import EsmConfig, EsmForMaskedLM, EsmTokenizer

    vocab = ["<cls>", "<pad>", "<eos>", "<unk>", *"LAGVSERTIDPKQNFYMHWCXBUZO", ".", "-", "<null_1>", "<mask>"]
    directory.mkdir(parents=True)
    (directory / "vocab_in.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = EsmTokenizer(vocab_file=str(directory / "vocab_in.txt"))
    torch.manual_seed(0)
    config = EsmConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=200,
        pad_token_id=tokenizer.pad_token_id,
        mask_token_id=tokenizer.mask_token_id,
        position_embedding_type="rotary",
        token_dropout=False,
    )
    EsmForMaskedLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / "vocab_in.txt").unlink()
    return directory


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {"bert": save_bert(root / "bert"), "esm": save_esm(root / "esm")}


def test_cdrh3_rule_on_a_known_chain_and_refusals():
    fr = "EVQLVESGGGLVQPGGSLRLSCAASGFTFSSYAMSWVRQAPGKGLEWVSAISGSGGSTYYADSVKGRFTISRDNSKNTLYLQMNSLRAEDTAVYYC"
    seq = fr + "ARDCYSGSYW" + "WGQGTLVTVSS"  # a Cys and a Trp inside the loop: the anchors are the outer ones
    start, end = cdrh3_span(seq)
    assert seq[start:end] == "ARDCYSGSYW"
    assert cdrh3_span(fr + "ARDY") is None  # no J-region motif
    assert cdrh3_span("WGQG" + "A" * 50 + "WGQG") is None  # no Cys before the motif


def test_antibody_instances_mask_cdrh3_and_pad_the_rest(tmp_path):
    task = Antibody(length=120)
    fasta = tmp_path / "chains.fasta"
    chain = "QVQLVQSGAEVKKPGASVKVSCKASGYTFTSYGISWVRQAPGQGLEWMGWISAYNGNTNYAQKLQGRVTMTTDTSTSTAYMELRSLRSDDTAVYYC"
    fasta.write_text(f">ab1 heavy\n{chain}ARGY\nFDYWGQGTLVTVSS\n>ab2\n{chain}AKDW\nGQGTLVTVSS\n")
    inst = task.read(fasta)
    assert inst.ids == ["ab1", "ab2"] and inst.meta[0]["cdrh3"] == "ARGYFDY" and inst.meta[1]["cdrh3"] == "AKD"
    row = len(chain) + 7 + 11  # chain, loop, FR4
    assert (inst.tokens[0, len(chain) : len(chain) + 7] == MASK).all() and (~inst.fixed[0]).sum() == 7
    assert (inst.tokens[0, row:] == PAD).all() and inst.fixed[0, row:].all() and (inst.target[0, row:] == PAD).all()
    assert task.render(inst.target[0]) == chain + "ARGYFDYWGQGTLVTVSS"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (">a\nEVQLXXBC\n", "heavy chain 'a': letters outside the 20 amino acids ('BX')"),
        (">a\nEVQLVESGGGLVQ\n", "heavy chain 'a': no CDR-H3 found"),
        (">a\n" + "A" * 200 + "\n", "heavy chain 'a': 200 residues, longer than task.length=144"),
        ("EVQL\n", "FASTA sequence line before any '>' header"),
    ],
)
def test_bad_chains_are_one_line_naming_file_and_line(tmp_path, content, message):
    fasta = tmp_path / "chains.fasta"
    fasta.write_text(content)
    with pytest.raises(InputError) as err:
        read_heavy_chains(fasta, 144)
    assert str(err.value).startswith(f"{fasta}:1: {message}") and "\n" not in str(err.value)


def test_skip_invalid_counts_what_it_leaves_out_and_csv_column_is_chosen(tmp_path):
    good = Antibody().generate(2, seed=0)
    seqs = [Antibody().render(t) for t in good.target]
    table = tmp_path / "abs.csv"
    with table.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Name", "Ab or Nb", "Heavy"])
        w.writerows([["x1", "Ab", seqs[0]], ["x2", "Nb", seqs[1]], ["x3", "Ab", "EVQLB"], ["x4", "Ab", "ND"]])
    with pytest.raises(InputError, match=r"abs.csv:1: no column 'VH or VHH'"):
        read_heavy_chains(table, 144)
    chains, skipped = read_heavy_chains(table, 144, column="Heavy", skip_invalid=True)
    assert [c.id for c in chains] == ["x1"] and skipped == {"letters": 1}  # the nanobody and ND row are not chains
    with pytest.raises(InputError, match=r"abs.csv:4: heavy chain 'x3'"):
        read_heavy_chains(table, 144, column="Heavy")


def test_model_inputs_place_cls_sep_and_mask_padding():
    table = torch.tensor([10, 11, 12, 4, 0])  # task ids 0-2, mask 3 -> model mask 4, pad 4 -> model pad 0
    tokens = torch.tensor([[0, 3, 4, 4], [1, 2, 3, 0]])
    ids, attention, first = pretrained.model_inputs(tokens, table, pad_token=4, cls_id=2, sep_id=3)
    assert first == 1
    assert ids.tolist() == [[2, 10, 4, 3, 0, 0], [2, 11, 12, 4, 10, 3]]
    assert attention.tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]


@pytest.mark.parametrize("kind", ["bert", "esm"])
def test_adapter_equals_the_model_called_directly_and_padding_changes_nothing(models, kind):
    task = Antibody(length=130)
    spec = pretrained.describe(task, "huggingface", str(models[kind]))
    lm_vocab = {"bert": BERT_VOCAB}.get(kind)
    if lm_vocab:
        assert spec.token_ids == [lm_vocab.index(a) for a in AMINO_ACIDS] and spec.mask_id == 4
        assert (spec.cls_id, spec.sep_id, spec.pad_id) == (2, 3, 0)
    else:  # ESM: <cls> ... <eos>, its own mask token
        assert (spec.cls_id, spec.sep_id, spec.mask_id) == (0, 2, 32)
    denoiser = checkpoints.materialise(lambda: pretrained.build(task, spec), pretrained.load_weights(spec, task), "x")
    denoiser.eval()
    inst = task.generate(3, seed=1)
    tokens = torch.tensor(inst.tokens)
    with torch.no_grad():
        logits, hidden = denoiser(tokens, return_hidden=True)
        assert logits.shape == (3, 130, 20) and hidden.shape == (3, 130, 32)
        lm = denoiser.lm
        for row in range(3):
            n = int((tokens[row] != PAD).sum())
            ids = [spec.cls_id] + [spec.token_ids[t] if t < MASK else spec.mask_id for t in tokens[row, :n].tolist()]
            direct = lm(input_ids=torch.tensor([ids + [spec.sep_id]])).logits[0, 1 : n + 1][:, spec.token_ids]
            torch.testing.assert_close(logits[row, :n], direct, rtol=1e-4, atol=1e-4)
            alone = denoiser(tokens[row : row + 1, :])  # the same row in a batch of its own
            torch.testing.assert_close(alone[0, :n], logits[row, :n], rtol=1e-4, atol=1e-4)


def test_bad_models_are_one_line_naming_them(models, tmp_path):
    task = Antibody()
    with pytest.raises(InputError, match=r"not a Hugging Face model directory"):
        pretrained.describe(task, "huggingface", str(tmp_path))
    no_w = save_bert(tmp_path / "no-w", vocab=[v for v in BERT_VOCAB if v != "W"])
    with pytest.raises(InputError, match=r"no-w: the model cannot emit task token 'W'"):
        pretrained.describe(task, "huggingface", str(no_w))
    short_lm = save_bert(tmp_path / "short", positions=64)
    with pytest.raises(InputError, match=r"short: task sequences need 146 positions .* the model has 64"):
        pretrained.describe(task, "huggingface", str(short_lm))
    proc = call_cli("aop_ray.wrap", "--model", f"hf:{tmp_path}", "--out", str(tmp_path / "ck"), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "not a Hugging Face model" in proc.stderr
    assert not (tmp_path / "ck").exists()


def test_a_checkpoint_refuses_weights_that_changed(models, tmp_path):
    model_dir = tmp_path / "bert"
    save_bert(model_dir)
    ckpt = wrap(f"hf:{model_dir}", {"name": "antibody"}, tmp_path / "ck")
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert (
        manifest["model"]["pretrained"]["path"] == str(model_dir)
        and len(manifest["model"]["pretrained"]["sha256"]) == 64
    )
    checkpoints.load_denoiser(ckpt)  # loads while the weights are the same
    save_bert(model_dir, positions=170)  # other weights at the same place
    with pytest.raises(InputError, match=r"weights changed since the checkpoint was made"):
        checkpoints.load_denoiser(ckpt)


def test_api_infills_only_the_masked_positions(models, tmp_path):
    ckpt = wrap(f"hf:{models['bert']}", {"name": "antibody", "length": 130}, tmp_path / "ck")
    model = api.load_model(ckpt)
    chain = Antibody().render(Antibody().generate(1, seed=0).tokens[0])
    filled = api.infill(model, [chain, chain.replace("_", "A")], "left_to_right", k=2)
    assert len(filled[0]) == len(chain) and "_" not in filled[0]
    assert all(c == f for c, f in zip(chain, filled[0]) if c != "_")
    assert filled[1] == chain.replace("_", "A")  # nothing masked: nothing changes
    with pytest.raises(InputError, match=r"sequence 0: 'B' is not a token of task antibody"):
        api.infill(model, ["B" + chain], "confidence")
    with pytest.raises(InputError, match=r"order 'nope': neither an order name"):
        api.load_order("nope", model)


@pytest.mark.ray
def test_policy_and_joint_stages_evaluate_and_an_env_episode_on_a_hugging_face_model(models, tmp_path):
    """The frozen-denoiser pipeline, unchanged, on a wrapped model: policy stage, evaluate with every order
    (left_to_right included), an environment episode; the joint stage fine-tunes the model."""
    import gymnasium as gym

    import envs  # noqa: F401 - registers aop/Unmask-v0
    from aop_ray.evaluate import Evaluation, run_evaluation

    task = Antibody(length=130)
    data.write_shards(task.generate(48, seed=0), task, tmp_path / "data" / "train")
    data.write_shards(task.generate(8, seed=1), task, tmp_path / "data" / "val")
    ckpt = wrap(f"hf:{models['bert']}", {"name": "antibody", "length": 130}, tmp_path / "bert-ck")
    common = [
        "--config",
        str(ROOT / "tune_configs" / "antiberty_policy.yaml"),
        f"aop.denoiser_checkpoint={ckpt}",
        "task.length=130",
        f"data.train.path={tmp_path / 'data' / 'train'}",
        f"data.val.path={tmp_path / 'data' / 'val'}",
        "aop.trajectory_instances=16",
        "train.steps=4",
        "train.eval_every=4",
        "train.checkpoint_every=4",
        "train.eval_instances=8",
    ]
    # Both stages at once on the shared cluster, a CPU each (their start-up is most of their time).
    runs = {
        stage: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aop_ray.train",
                *common,
                f"name=hf-{stage}",
                f"train.stage={stage}",
                "ray.cpus_per_worker=1.0",
                "ray.torch_threads=1",
                *(["aop.target=ce"] if stage == "joint" else []),
                "--no-mlflow",
            ],
            cwd=tmp_path,
            env=cli_env(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for stage in ("policy", "joint")
    }
    for stage, proc in runs.items():
        output = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, f"{stage}: {output[-3000:]}"
    final = tmp_path / "runs" / "hf-policy" / "final"
    assert sorted(p.name for p in final.iterdir()) == ["manifest.json", "policy.pt"]  # the frozen LM is not copied
    out = tmp_path / "eval"
    run_evaluation(
        Evaluation(
            checkpoint=str(final),
            data=str(tmp_path / "data" / "val"),
            orders="learned,left_to_right,confidence",
            out=str(out),
            mlflow=False,
        )
    )
    rows = {r["order"]: r for r in json.loads((out / "results.json").read_text())}
    assert set(rows) == {"learned", "left_to_right", "confidence"}
    for row in rows.values():
        assert row["aar"] == row["cell_accuracy"] and 0 <= row["solve_rate"] <= row["aar"] <= 1
        assert row["loglik"] < 0 and row["n"] == 8
    env = gym.make("aop/Unmask-v0", denoiser_checkpoint=str(ckpt), data=str(tmp_path / "data" / "val"))
    obs, _ = env.reset(seed=0, options={"index": 2})
    val = data.load_instances(task, tmp_path / "data" / "val")
    done, steps = False, 0
    while not done:  # left to right, by hand
        obs, reward, done, truncated, info = env.step(int(np.flatnonzero(obs["action_mask"])[0]))
        steps += 1
    assert steps == int((~val.fixed[2]).sum()) and not (obs["tokens"] == MASK).any()
    assert info["solved"] == bool((obs["tokens"] == val.target[2]).all())  # exact recovery, the task's `solved`

    tuned, _, _ = checkpoints.load_denoiser(tmp_path / "runs" / "hf-joint" / "final")
    frozen, _, _ = checkpoints.load_denoiser(ckpt)
    moved = [k for k, v in tuned.state_dict().items() if not torch.equal(v, frozen.state_dict()[k])]
    assert moved, "the joint stage did not change the pretrained weights"  # the CE cost has a gradient
    assert (tmp_path / "runs" / "hf-joint" / "final" / "denoiser.pt").is_file()  # fine-tuned: its own copy


@pytest.mark.skipif(not COV_ABDAB.is_file(), reason="../shared/data/antibody is absent")
def test_the_cdrh3_rule_agrees_with_cov_abdab_for_95_percent_of_antibodies():
    rows = list(csv.DictReader(COV_ABDAB.open(encoding="utf-8-sig")))
    pairs = [
        (r["VH or VHH"].strip(), r["CDRH3"].strip())
        for r in rows
        if r["Ab or Nb"] == "Ab" and r["VH or VHH"] not in ("", "ND") and r["CDRH3"] not in ("", "ND")
    ]
    agree = sum(1 for seq, loop in pairs if (span := cdrh3_span(seq)) and seq[span[0] : span[1]] == loop)
    assert len(pairs) > 2000 and agree / len(pairs) >= 0.95, (agree, len(pairs))


@pytest.mark.skipif(not (HAS_ANTIBERTY and COV_ABDAB.is_file()), reason="antiberty or ../shared/data absent")
def test_real_antiberty_recovers_framework_residues_masked_one_at_a_time():
    """Proves the weights loaded right: a scrambled or misaligned model recovers ~5%, not 90%.

    Framework regions by their IMGT anchors: FR1 to 3 residues past Cys23, FR2 from 2 before Trp41 (the
    first Trp after Cys23) for 17 residues, FR3 the 39 residues up to Cys104, FR4 from Trp118."""
    model = api.load_model("antiberty")
    chains, _ = read_heavy_chains(COV_ABDAB, 144, skip_invalid=True)
    task = model.task
    right = total = 0
    with torch.no_grad():
        for chain in chains[:3]:
            inst = task.instances([chain], "cov-abdab")
            c23 = chain.seq.index("C")
            w41 = chain.seq.index("W", c23)
            c104 = chain.span[0] - 1
            positions = [
                *range(0, c23 + 4),
                *range(w41 - 2, w41 + 15),
                *range(c104 - 38, c104 + 1),
                *range(chain.span[1], len(chain.seq)),
            ]
            batch = torch.tensor(inst.target).repeat(len(positions), 1)
            batch[torch.arange(len(positions)), torch.tensor(positions)] = MASK
            predicted = model.denoiser(batch).argmax(-1)[torch.arange(len(positions)), torch.tensor(positions)]
            right += int((predicted == torch.tensor(inst.target[0, positions])).sum())
            total += len(positions)
    assert right / total >= 0.9, right / total


def test_diversity_compares_completions_of_one_chain_only():
    task = Antibody(length=8)
    prompt = torch.tensor([[0, MASK, MASK, PAD]] * 3 + [[1, MASK, MASK, PAD]])[:, :4]
    fixed = prompt != MASK
    tokens = torch.tensor([[0, 2, 3, PAD], [0, 2, 4, PAD], [0, 5, 6, PAD], [1, 2, 3, PAD]])
    got = task.metrics(tokens, prompt, fixed, torch.zeros_like(tokens))["diversity"]
    # row 0 differs from row 1 in 1 of 2 loop residues and from row 2 in 2: (0.5 + 1) / 2
    torch.testing.assert_close(got[:3], torch.tensor([0.75, 0.75, 1.0]))
    assert torch.isnan(got[3])  # decoded once: no other completion to compare with


def test_left_to_right_reveals_the_leftmost_masked_position():
    from aop_ray.orders import DecodeState, left_to_right, select

    masked = torch.tensor([[False, True, True, False], [True, False, False, True]])
    state = DecodeState(tokens=torch.zeros(2, 4, dtype=torch.long), masked=masked, logits=torch.zeros(2, 4, 3),
                        hidden=None, step=0)  # fmt: skip
    positions, valid = select(left_to_right(state), masked, k=2)
    assert positions.tolist() == [[1, 2], [0, 3]] and valid.all()


def test_an_esm_model_runs_evaluate_and_an_environment_episode(models, tmp_path):
    import gymnasium as gym

    import envs  # noqa: F401 - registers aop/Unmask-v0
    from aop_ray.evaluate import Evaluation, run_evaluation

    task = Antibody(length=130)
    data.write_shards(task.generate(4, seed=2), task, tmp_path / "chains")
    ckpt = wrap(f"hf:{models['esm']}", {"name": "antibody", "length": 130}, tmp_path / "esm-ck")
    rows = run_evaluation(
        Evaluation(checkpoint=str(ckpt), data=str(tmp_path / "chains"), orders="left_to_right,margin", mlflow=False)
    )
    assert [r["order"] for r in rows] == ["left_to_right", "margin"] and all(r["n"] == 4 for r in rows)
    env = gym.make("aop/Unmask-v0", denoiser_checkpoint=str(ckpt), data=str(tmp_path / "chains"))
    obs, _ = env.reset(seed=0, options={"index": 1})
    free = int(obs["action_mask"].sum())
    for _ in range(free):
        obs, reward, done, truncated, info = env.step(int(np.flatnonzero(obs["action_mask"])[-1]))  # right to left
    assert done and not (obs["tokens"] == MASK).any()


def test_a_policy_keeps_fitting_a_moved_model_but_not_other_weights():
    weights = {"source": "huggingface", "path": "/a", "sha256": "1" * 64, "token_ids": [5, 6]}
    model = {"d_model": 32, "pretrained": {**weights, "config": {"transformers_version": "5.25.0"}}}
    moved = {**model, "pretrained": {**model["pretrained"], "path": "/b", "config": {"transformers_version": "5.26"}}}
    assert pretrained.identity(moved) == pretrained.identity(model)
    other = {**model, "pretrained": {**model["pretrained"], "sha256": "2" * 64}}
    assert pretrained.identity(other) != pretrained.identity(model)
    with pytest.raises(InputError, match=r"field 'pretrained'"):
        checkpoints.check_same("denoiser model", pretrained.identity(other), pretrained.identity(model), "ck")


FACTORY_MODULE = """
import torch
from torch import nn

SEED = 0


class TinyMLM(nn.Module):
    def __init__(self, task):
        super().__init__()
        self.d_model = 8
        self.emb = nn.Embedding(task.vocab_size + 2, 8)
        self.head = nn.Linear(8, task.vocab_size)

    def forward(self, tokens, return_hidden=False):
        hidden = self.emb(tokens)
        return (self.head(hidden), hidden) if return_hidden else self.head(hidden)


def build(task):
    torch.manual_seed(SEED)
    return TinyMLM(task)
"""


def test_a_factory_model_is_wrapped_and_loads_only_when_trusted(tmp_path, monkeypatch):
    (tmp_path / "my_mlm.py").write_text(FACTORY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(pretrained.TRUST_FACTORY_ENV, raising=False)
    ckpt = wrap("py:my_mlm:build", {"name": "antibody", "length": 130}, tmp_path / "ck")
    with pytest.raises(InputError, match=r"model factory 'my_mlm:build': loading it imports and runs that code"):
        checkpoints.load_denoiser(ckpt)
    monkeypatch.setenv(pretrained.TRUST_FACTORY_ENV, "1")
    model = api.load_model(ckpt)
    chain = Antibody().render(Antibody().generate(1, seed=0).tokens[0])
    assert "_" not in api.infill(model, [chain], "confidence")[0]
    import my_mlm

    monkeypatch.setattr(my_mlm, "SEED", 1)  # the same function now makes other weights
    with pytest.raises(InputError, match=r"its weights changed since the checkpoint was made"):
        checkpoints.load_denoiser(ckpt)
    with pytest.raises(InputError, match=r"cannot import it"):
        wrap("py:no_such_module:build", {"name": "antibody"}, tmp_path / "ck2")


def test_antibody_sets_keep_each_cdrh3_cluster_on_one_side(tmp_path):
    task = Antibody()
    chains = task.generate(60, seed=3)
    fasta = tmp_path / "chains.fasta"
    first = task.render(chains.target[0])  # its loop starts at 96: "AR" and 6-14 random residues
    twin = first[:98] + ("A" if first[98] != "A" else "C") + first[99:]  # one loop residue off: >= 87% identical
    lines = [f">c{i}\n{task.render(t)}" for i, t in enumerate(chains.target)] + [f">twin\n{twin}"]
    fasta.write_text("\n".join(lines) + "\n")
    proc = call_cli("aop_ray.data", "antibodies", "--input", str(fasta), "--out", str(tmp_path / "sets"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "sets" / "split.json").read_text())
    assert record["chains"] == 61 and sum(record["sizes"].values()) == 61 and record["clusters"] <= 60
    sides = {name: data.load_instances(task, tmp_path / "sets" / name) for name in ("train", "val", "test")}
    where = {i: name for name, inst in sides.items() for i in inst.ids}
    assert where["twin"] == where["c0"]  # one cluster, one side
    assert all(len(sides[name]) >= 1 for name in ("val", "test"))
