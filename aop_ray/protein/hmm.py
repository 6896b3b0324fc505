"""Profile-HMM bit scores (HMMER3, through pyhmmer) as a family-membership oracle.

A Potts energy rewards what the training alignment contains; an HMM built
independently (a Pfam model) asks the question a biologist would: does HMMER
call this sequence a member of the family, and how strongly?

Scores are HMMER's per-sequence bit scores from a search with every filter
off (MSV, Viterbi, Forward, composition bias) and no reporting threshold, so
no sequence is dropped for scoring low. HMMER still reports nothing for a
sequence in which posterior decoding finds no domain envelope (common for
short or random sequences); such sequences, and empty ones, get NaN, to be
read as "not recognised at all", below any finite score.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from pyhmmer import easel, plan7

from aop_ray.errors import located
from aop_ray.protein.alignment import GAP, Alignment, decode

_AMINO = easel.Alphabet.amino()


def build_hmm(alignment: Alignment, name: str) -> plan7.HMM:
    """A profile HMM with one match state per alignment column.

    The "hand" architecture keeps every column as a match state (HMMER's
    default would drop gappy columns), so HMM positions line up with the
    columns the denoiser generates.
    """
    rows = [decode(s) for s in alignment.seqs]
    msa = easel.TextMSA(name=name, sequences=[easel.TextSequence(name=f"s{i}", sequence=r) for i, r in enumerate(rows)])
    msa.reference = "x" * alignment.seqs.shape[1]
    builder = plan7.Builder(_AMINO, architecture="hand")
    hmm, _, _ = builder.build_msa(msa.digitize(_AMINO), plan7.Background(_AMINO))
    return hmm


def load_hmm(path: str | Path) -> plan7.HMM:
    """The one amino-acid HMM in a HMMER3 file (a Pfam model)."""
    try:
        with plan7.HMMFile(path) as f:
            hmms = list(f)
    except (OSError, EOFError, ValueError) as e:
        raise located(path, None, f"cannot read HMM: {' '.join(str(e).split())}") from None
    if len(hmms) != 1:
        raise located(path, None, f"holds {len(hmms)} HMMs, expected one")
    if hmms[0].alphabet != _AMINO:
        raise located(path, None, f"HMM alphabet is {hmms[0].alphabet}, expected amino acids")
    return hmms[0]


def hmm_bits(hmm: plan7.HMM, seqs: np.ndarray) -> np.ndarray:
    """(N,) bit score of each row of token ids with gaps removed; NaN where HMMER finds no domain."""
    seqs = np.atleast_2d(np.asarray(seqs))
    scores = np.full(len(seqs), np.nan)
    texts = {i: decode(s[s != GAP]) for i, s in enumerate(seqs)}
    targets = [easel.TextSequence(name=str(i), sequence=t) for i, t in texts.items() if t]
    if not targets:
        return scores
    pipeline = plan7.Pipeline(_AMINO, bias_filter=False, F1=1.0, F2=1.0, F3=1.0, T=-math.inf, domT=-math.inf)
    for hit in pipeline.search_hmm(hmm, easel.TextSequenceBlock(targets).digitize(_AMINO)):
        scores[int(hit.name)] = hit.score
    return scores
