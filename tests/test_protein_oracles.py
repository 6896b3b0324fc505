"""Protein-family building blocks: alignment reading, identity and splits, Potts and HMM oracles.

All data is generated here; only `test_real_protein_data` reads ../shared/data and
skips when it is absent.
"""

from __future__ import annotations

import gzip
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aop_ray.errors import InputError
from aop_ray.protein.alignment import (
    ALPHABET,
    GAP,
    Alignment,
    cluster,
    cluster_split,
    decode,
    diversity,
    encode,
    identity,
    novelty,
    pairwise_identity,
    read_alignment,
    sequence_weights,
)
from aop_ray.protein.hmm import build_hmm, hmm_bits, load_hmm
from aop_ray.protein.potts import Potts, _symmetric, fit_plm, sample_potts

torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "protein"
fuzz = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def tokens(*rows: str) -> np.ndarray:
    return np.stack([encode(r) for r in rows])


def write(tmp_path: Path, text: str | bytes, name: str = "aln.a2m") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def family(rng: np.random.Generator, n: int, length: int, mutate: float, consensus: np.ndarray | None = None):
    """Rows of a consensus with a fraction of positions resampled (a crude family)."""
    consensus = rng.integers(0, 20, length) if consensus is None else consensus
    rows = np.repeat(consensus[None], n, axis=0)
    hit = rng.random(rows.shape) < mutate
    rows[hit] = rng.integers(0, 20, hit.sum())
    return rows


# ---------------------------------------------------------------- reading


def test_a2m_drops_inserts_and_maps_unknown_to_gap(tmp_path):
    text = ">seq1 first one\nACdE-\nFG\n\n>seq2\r\nAC.EX\r\nFGk\r\n>seq3\n-C.BWxFY\n"
    aln = read_alignment(write(tmp_path, text))
    assert aln.names == ["seq1 first one", "seq2", "seq3"]
    assert aln.lines == [1, 5, 8]
    assert [decode(r) for r in aln.seqs] == ["ACE-FG", "ACE-FG", "-C-WFY"]
    assert aln.seqs.dtype == np.int64 and aln.seqs.shape == (3, 6)
    assert len(aln) == 3


def test_plain_fasta_dots_are_gaps_and_gzip_is_read(tmp_path):
    text = ">a\nAC.D\n>b\nA-CD\n"
    plain = read_alignment(write(tmp_path, text, "a.fasta"))
    zipped = read_alignment(write(tmp_path, gzip.compress(text.encode()), "a.fasta.gz"))
    assert [decode(r) for r in plain.seqs] == ["AC-D", "A-CD"]
    np.testing.assert_array_equal(plain.seqs, zipped.seqs)
    assert plain.seqs[0, 2] == GAP == ALPHABET.index("-") == 20


@pytest.mark.reliability
@pytest.mark.parametrize(
    "text, line, words",
    [
        ("", 1, "no sequence records"),
        ("\n\n  \n", 1, "no sequence records"),
        ("ACD\n>x\nACD\n", 1, "before the first '>'"),
        (">a\nACD\n>b\nAC1D\n", 4, "bad character '1' in sequence"),
        (">a\nACD\n>b\nAC*\n", 4, "bad character '*'"),
        (">a\nACD\n>b\n>c\nACD\n", 3, "record 'b' has no sequence"),
        (">a\nACD\n>b\nAC\n", 3, "record 'b' has 2 match columns, but the first record (line 1) has 3"),
        (">a\nacd\n>b\nefg\n", 1, "no match columns"),
        (b">a\nAC\n\xff\n", 3, "not UTF-8"),
    ],
)
def test_reader_errors_name_file_and_line(tmp_path, text, line, words):
    path = write(tmp_path, text)
    with pytest.raises(InputError) as err:
        read_alignment(path)
    message = str(err.value)
    assert message.startswith(f"{path}:{line}: ") and words in message
    assert len(message.splitlines()) == 1


@pytest.mark.reliability
def test_reader_errors_for_unreadable_files(tmp_path):
    for path in (tmp_path / "missing.fasta", write(tmp_path, b"\x1f\x8b\x08garbage", "bad.gz")):
        with pytest.raises(InputError, match=f"^{path}: "):
            read_alignment(path)


@pytest.mark.reliability
@fuzz
@given(
    st.text(
        alphabet=st.sampled_from(list(">ACDWXacx.-*1 \n\r\t\x0b\u2028é")) | st.characters(codec="utf-8"), max_size=80
    )
)
def test_reader_fuzz_parses_or_raises_input_error(tmp_path, text):
    path = write(tmp_path, text)
    try:
        aln = read_alignment(path)
    except InputError as e:
        assert str(e).startswith(f"{path}:") and len(str(e).splitlines()) == 1
    else:
        assert aln.seqs.shape[0] == len(aln.names) == len(aln.lines) >= 1
        assert aln.seqs.min() >= 0 and aln.seqs.max() <= GAP


@pytest.mark.reliability
@fuzz
@given(st.binary(max_size=60))
def test_reader_fuzz_bytes(tmp_path, data):
    path = write(tmp_path, data)
    try:
        read_alignment(path)
    except InputError as e:
        assert str(e).startswith(f"{path}:")


@fuzz
@given(st.integers(1, 5), st.integers(1, 30), st.integers(1, 12), st.integers(0, 2**32 - 1))
def test_fasta_round_trip_with_any_wrapping(tmp_path, n, length, width, seed):
    seqs = np.random.default_rng(seed).integers(0, len(ALPHABET), (n, length))
    text = "".join(
        f">s{i}\n" + "\n".join(decode(r)[k : k + width] for k in range(0, length, width)) + "\n"
        for i, r in enumerate(seqs)
    )
    np.testing.assert_array_equal(read_alignment(write(tmp_path, text)).seqs, seqs)


# ---------------------------------------------------------------- identity


def test_identity_counts_columns_where_either_has_a_residue():
    assert identity(encode("ACDE"), encode("ACDF")) == 0.75
    assert identity(encode("AC--"), encode("A-D-")) == pytest.approx(1 / 3)  # last column is gap in both
    assert identity(encode("----"), encode("----")) == 0.0
    assert identity(encode("AXC"), encode("A-C")) == 1.0  # X is read as a gap


def test_pairwise_identity_is_symmetric_and_chunking_does_not_matter():
    seqs = np.random.default_rng(0).integers(0, len(ALPHABET), (37, 11))
    full = pairwise_identity(seqs, seqs)
    np.testing.assert_array_equal(full, pairwise_identity(seqs, seqs, chunk=5))
    np.testing.assert_allclose(full, full.T)
    assert full.shape == (37, 37) and np.all((full >= 0) & (full <= 1))
    slow = [[identity(a, b) for b in seqs[:4]] for a in seqs[:4]]
    np.testing.assert_allclose(full[:4, :4], slow)


def test_novelty_diversity_and_weights_exact():
    seqs = tokens("AAAA", "AAAC", "CCCC", "----")
    np.testing.assert_allclose(novelty(seqs[:1], seqs[1:3]), [0.25])
    assert diversity(seqs[:3]) == pytest.approx((0.75 + 0.0 + 0.25) / 3)
    assert math.isnan(diversity(seqs[:1]))
    np.testing.assert_allclose(sequence_weights(seqs, threshold=0.75), [0.5, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(sequence_weights(seqs, threshold=0.75, chunk=1), [0.5, 0.5, 1.0, 1.0])


# ---------------------------------------------------------------- clusters and splits


def families(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tight families (pairwise identity >= 0.8 guaranteed) far from each other, plus their labels."""
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for k in range(40):
        consensus, size = rng.integers(0, 20, 20), int(rng.integers(1, 9))
        for _ in range(size):
            row = consensus.copy()
            spots = rng.choice(20, 2, replace=False)
            row[spots] = rng.integers(0, 20, 2)  # <= 2 changes each, so <= 4 between members
            rows.append(row)
            labels.append(k)
    return np.array(rows), np.array(labels)


def test_cluster_recovers_well_separated_families():
    seqs, labels = families()
    centre = cluster(seqs, threshold=0.8, seed=3)
    for k in np.unique(labels):
        assert len(np.unique(centre[labels == k])) == 1
    assert len(np.unique(centre)) == len(np.unique(labels))


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 60),
    st.integers(1, 8),
    st.integers(0, 3),
    st.sampled_from([0.5, 0.7, 0.8, 1.0]),
    st.integers(0, 2**32 - 1),
)
def test_cluster_properties(n, length, symbols, threshold, seed):
    """Members are close to their centre; centres are pairwise apart; a small block changes nothing."""
    seqs = np.random.default_rng(seed).integers(0, symbols + 1, (n, length))
    seqs[seqs == symbols] = GAP  # a few symbols plus gaps, so clusters form
    centre = cluster(seqs, threshold, seed=seed)
    ident = pairwise_identity(seqs, seqs)
    centres = np.unique(centre)
    assert np.all(centre[centres] == centres)
    members = np.flatnonzero(centre != np.arange(n))
    assert np.all(ident[members, centre[members]] >= threshold - 1e-12)
    between = ident[np.ix_(centres, centres)][~np.eye(len(centres), dtype=bool)]
    assert np.all(between < threshold)
    np.testing.assert_array_equal(centre, cluster(seqs, threshold, seed=seed, block=3))


def test_cluster_split_keeps_clusters_whole_and_is_deterministic():
    seqs, _ = families()
    train, held = cluster_split(seqs, threshold=0.8, heldout_fraction=0.25, seed=7)
    centre = cluster(seqs, threshold=0.8, seed=7)
    assert np.intersect1d(np.unique(centre[train]), np.unique(centre[held])).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, held])), np.arange(len(seqs)))
    largest = np.bincount(centre).max()
    assert abs(len(held) - 0.25 * len(seqs)) <= largest / 2
    again = cluster_split(seqs, threshold=0.8, heldout_fraction=0.25, seed=7)
    np.testing.assert_array_equal(again[1], held)
    assert not np.array_equal(cluster_split(seqs, 0.8, 0.25, seed=8)[1], held)
    assert len(cluster_split(seqs, 0.8, 0.0)[1]) == 0
    with pytest.raises(ValueError):
        cluster_split(seqs, 0.8, 1.0)


# ---------------------------------------------------------------- Potts


def random_potts(seed: int, length: int = 6, states: int = 4) -> Potts:
    """A random Potts model over the first `states` letters (others forbidden by their fields)."""
    rng = np.random.default_rng(seed)
    q = len(ALPHABET)
    h = np.full((length, q), -30.0)
    h[:, :states] = rng.normal(0, 1, (length, states))
    raw = np.zeros((length, length, q, q))
    raw[:, :, :states, :states] = rng.normal(0, 1, (length, length, states, states))
    return Potts(torch.tensor(h), _symmetric(torch.tensor(raw)))


def zero_sum(J: np.ndarray, states: int) -> np.ndarray:
    """Couplings in the zero-sum gauge over the used states, so fits and truths are comparable."""
    J = J[:, :, :states, :states]
    return J - J.mean(2, keepdims=True) - J.mean(3, keepdims=True) + J.mean((2, 3), keepdims=True)


def test_energy_exact_on_two_sites():
    h = torch.zeros(2, 21)
    h[0, 1], h[1, 2] = 0.5, -1.0
    raw = torch.zeros(2, 2, 21, 21)
    raw[0, 1, 1, 2] = raw[1, 0, 2, 1] = 2.0
    model = Potts(h, _symmetric(raw))
    assert torch.equal(model.J[0, 1], model.J[1, 0].T)
    np.testing.assert_allclose(model.energy(np.array([[1, 2], [1, 0], [0, 0]])), [-(0.5 - 1.0 + 2.0), -0.5, 0.0])
    as_tensor = model.energy(torch.tensor([[1, 2]]))
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.item() == pytest.approx(-1.5)
    with pytest.raises(ValueError):
        model.energy(np.array([[1, 2, 3]]))


def test_gibbs_sampler_matches_boltzmann_distribution():
    model = random_potts(seed=5, length=2, states=2)
    samples = sample_potts(model.h, model.J, n=4000, sweeps=10, seed=0)
    states = np.array(list(itertools.product(range(2), repeat=2)))
    p = np.exp(-model.energy(states))
    p /= p.sum()
    freq = [np.mean(np.all(samples == s, axis=1)) for s in states]
    np.testing.assert_allclose(freq, p, atol=0.03)
    np.testing.assert_array_equal(samples, sample_potts(model.h, model.J, n=4000, sweeps=10, seed=0))


def test_plm_recovers_couplings_of_a_synthetic_family():
    true = random_potts(seed=0)
    train = sample_potts(true.h, true.J, n=2000, sweeps=30, seed=1)
    fresh = sample_potts(true.h, true.J, n=500, sweeps=30, seed=2)
    fitted = fit_plm(train, steps=60)
    fields_only = fit_plm(train, l2_J=1e4, steps=60)
    r = np.corrcoef(true.energy(fresh), fitted.energy(fresh))[0, 1]
    r_fields = np.corrcoef(true.energy(fresh), fields_only.energy(fresh))[0, 1]
    assert r > 0.9 and r > r_fields + 0.1
    upper = np.triu_indices(6, 1)
    couplings = np.corrcoef(zero_sum(true.J.numpy(), 4)[upper].ravel(), zero_sum(fitted.J.numpy(), 4)[upper].ravel())
    assert couplings[0, 1] > 0.7
    assert torch.equal(fitted.J, fitted.J.permute(1, 0, 3, 2)) and fitted.J[range(6), range(6)].abs().max() == 0


def test_plm_weights_equal_duplicated_rows():
    seqs = np.random.default_rng(0).integers(0, 4, (30, 4))
    doubled = fit_plm(np.concatenate([seqs, seqs[:5]]), steps=15)
    weighted = fit_plm(seqs, weights=np.r_[np.full(5, 2.0), np.ones(25)], steps=15)
    assert torch.equal(doubled.h, weighted.h) and torch.equal(doubled.J, weighted.J)
    with pytest.raises(ValueError):
        fit_plm(seqs, weights=np.ones(3))


@pytest.mark.reliability
def test_potts_save_load_round_trip_and_refusals(tmp_path):
    model = fit_plm(np.random.default_rng(0).integers(0, 21, (20, 5)), l2_h=0.02, l2_J=0.03, steps=5)
    path = tmp_path / "potts.pt"
    model.save(path)
    model.save(path)  # overwriting is fine and leaves no temporary files behind
    assert [p.name for p in tmp_path.iterdir()] == ["potts.pt"]
    loaded = Potts.load(path, L=5)
    assert torch.equal(loaded.h, model.h) and torch.equal(loaded.J, model.J)
    assert (loaded.alphabet, loaded.l2_h, loaded.l2_J, loaded.L, loaded.q) == (ALPHABET, 0.02, 0.03, 5, 21)

    with pytest.raises(InputError, match=f"^{path}: field 'L' is 5, expected 7"):
        Potts.load(path, L=7)
    with pytest.raises(InputError, match=f"^{path}: field 'alphabet'"):
        Potts.load(path, alphabet="ACGT-")
    data = path.read_bytes()
    for cut in (0, 10, len(data) // 2, len(data) - 1):
        broken = write(tmp_path, data[:cut], "broken.pt")
        with pytest.raises(InputError, match=f"^{broken}: "):
            Potts.load(broken)
    torch.save({"h": model.h}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="field 'format'"):
        Potts.load(tmp_path / "other.pt")
    torch.save({"format": "aop-ray potts v1", "h": model.h}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="field 'J' is missing"):
        Potts.load(tmp_path / "other.pt")
    with pytest.raises(InputError, match="missing.pt"):
        Potts.load(tmp_path / "missing.pt")


# ---------------------------------------------------------------- HMM


def test_hmm_scores_family_members_above_shuffled_and_random(tmp_path):
    rng = np.random.default_rng(0)
    consensus = rng.integers(0, 20, 40)
    members = family(rng, 60, 40, mutate=0.2, consensus=consensus)
    members[:20, 5:8] = GAP
    hmm = build_hmm(Alignment([f"s{i}" for i in range(60)], members, list(range(1, 121, 2))), "synthetic")
    assert hmm.M == 40 and hmm.name == "synthetic"

    fresh = family(rng, 30, 40, mutate=0.2, consensus=consensus)
    shuffled = np.array([rng.permutation(r) for r in fresh])
    random = rng.integers(0, 20, (30, 40))
    member_bits = hmm_bits(hmm, fresh)
    decoys = np.concatenate([hmm_bits(hmm, shuffled), hmm_bits(hmm, random)])
    assert np.all(np.isfinite(member_bits)) and member_bits.min() > 20
    assert member_bits.min() > np.nanmax(decoys, initial=-np.inf)

    gapped = fresh[:1].copy()
    gapped[0, [3, 9]] = GAP
    assert hmm_bits(hmm, gapped)[0] == hmm_bits(hmm, np.delete(fresh[:1], [3, 9], axis=1))[0]
    assert np.isnan(hmm_bits(hmm, np.full((2, 40), GAP))).all()

    path = tmp_path / "fam.hmm"
    with path.open("wb") as f:
        hmm.write(f)
    assert load_hmm(path).M == 40
    with path.open("ab") as f:
        hmm.write(f)
    with pytest.raises(InputError, match=f"^{path}: holds 2 HMMs"):
        load_hmm(path)
    for text in ("", "not an hmm\n"):
        with pytest.raises(InputError, match=f"^{write(tmp_path, text, 'bad.hmm')}: cannot read HMM"):
            load_hmm(tmp_path / "bad.hmm")


# ---------------------------------------------------------------- real data (optional)


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/protein is absent")
def test_real_protein_data():
    kunitz = read_alignment(SHARED / "PF00014_mgap6.fasta.gz")
    dhfr = read_alignment(SHARED / "DHFR.a2m")
    assert kunitz.seqs.shape == (13600, 53) and dhfr.seqs.shape == (3629, 171)
    pfam = load_hmm(SHARED / "PF00186_DHFR_1.hmm")
    assert pfam.M == 160
    assert np.all(hmm_bits(pfam, dhfr.seqs[:50]) > 25.0)  # Pfam's gathering threshold for DHFR_1
