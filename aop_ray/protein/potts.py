"""A Potts model of a protein family, fitted by pseudo-likelihood, as an energy oracle.

E(x) = -sum_i h_i(x_i) - sum_{i<j} J_ij(x_i, x_j); lower is more natural. The
gap is one of the q = 21 states, so alignments need no special handling.

Fitting (`fit_plm`) follows plmc / EVcouplings:

* Objective: sum_n w_n sum_i -log p(x_ni | x_n,-i)
  + l2_h ||h||^2 + l2_J (L-1)(q-1) sum_{i<j} ||J_ij||^2.
  The coupling penalty is scaled by (L-1)(q-1) because each site's conditional
  has that many coupling parameters per state against one field; unscaled, the
  same l2_J would regularise couplings far less than fields on long families.
  The whole objective is divided by sum(w) for the optimiser, which does not
  move the minimum.
* Optimiser: full-batch L-BFGS with a strong-Wolfe line search. The objective
  is smooth and convex, so a quasi-Newton method converges in far fewer passes
  than Adam and needs no learning-rate schedule; with no randomness the fit is
  a deterministic function of its inputs.
* Couplings are a free (L, L, q, q) tensor symmetrised on use, so
  J[i, j, a, b] = J[j, i, b, a] and J_ii = 0 hold exactly. The gauge is not
  fixed; the L2 penalty picks the minimum-norm one.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from aop_ray.errors import located
from aop_ray.protein.alignment import ALPHABET

_FORMAT = "aop-ray potts v1"


def _symmetric(w: torch.Tensor) -> torch.Tensor:
    """Couplings with J[i,j,a,b] = J[j,i,b,a] and zero diagonal blocks."""
    length = w.shape[0]
    off_diagonal = 1.0 - torch.eye(length, dtype=w.dtype, device=w.device)
    return (w + w.permute(1, 0, 3, 2)) / 2 * off_diagonal[:, :, None, None]


def _as_tokens(seqs: np.ndarray | torch.Tensor, length: int | None, q: int) -> torch.Tensor:
    t = torch.as_tensor(seqs).long()
    if t.ndim != 2 or (length is not None and t.shape[1] != length):
        raise ValueError(f"expected sequences of shape (N, {length or 'L'}), got {tuple(t.shape)}")
    if t.numel() and (t.min() < 0 or t.max() >= q):
        raise ValueError(f"token ids must lie in 0..{q - 1}")
    return t


@dataclasses.dataclass
class Potts:
    """Fields h (L, q) and symmetric couplings J (L, L, q, q) over `alphabet`."""

    h: torch.Tensor
    J: torch.Tensor
    alphabet: str = ALPHABET
    l2_h: float = 0.0
    l2_J: float = 0.0

    @property
    def L(self) -> int:
        return self.h.shape[0]

    @property
    def q(self) -> int:
        return self.h.shape[1]

    def energy(self, seqs: np.ndarray | torch.Tensor, chunk: int = 256) -> np.ndarray | torch.Tensor:
        """E(x) per row; a tensor (on the input's device) for tensor input, else a float64 array."""
        device = seqs.device if isinstance(seqs, torch.Tensor) else torch.device("cpu")
        t = _as_tokens(seqs, self.L, self.q).to(device)
        h, J = self.h.to(device), self.J.to(device)
        sites = torch.arange(self.L, device=device)
        out = []
        for x in t.split(chunk):
            fields = h[sites, x].sum(1)
            pairs = J[sites[:, None], sites[None, :], x[:, :, None], x[:, None, :]].sum((1, 2)) / 2
            out.append(-(fields + pairs))
        e = torch.cat(out) if out else torch.zeros(0, dtype=h.dtype, device=device)
        return e if isinstance(seqs, torch.Tensor) else e.double().cpu().numpy()

    def save(self, path: str | Path) -> None:
        """Write atomically, so a crash never leaves a half-written model under `path`."""
        path = Path(path)
        state = {
            "format": _FORMAT,
            "h": self.h.detach().cpu(),
            "J": self.J.detach().cpu(),
            "L": self.L,
            "q": self.q,
            "alphabet": self.alphabet,
            "l2_h": float(self.l2_h),
            "l2_J": float(self.l2_J),
        }
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(state, f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @staticmethod
    def load(path: str | Path, L: int | None = None, alphabet: str = ALPHABET) -> Potts:
        """Read a saved model, refusing one made for another length or alphabet."""
        try:
            state = torch.load(path, weights_only=True, map_location="cpu")
        except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
            raise located(path, None, f"cannot read Potts model: {' '.join(str(e).split())}") from None
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            raise located(path, None, f"not a Potts model file (field 'format' is not {_FORMAT!r})")
        missing = [field for field in ("h", "J", "L", "q", "alphabet") if field not in state]
        if missing:
            raise located(path, None, f"field {missing[0]!r} is missing")
        expected = {"alphabet": alphabet, "L": L, "q": len(alphabet)}
        for field, want in expected.items():
            if want is not None and state[field] != want:
                raise located(path, None, f"field {field!r} is {state[field]!r}, expected {want!r}")
        h, J = state["h"], state["J"]
        length, q = state["L"], state["q"]
        if not isinstance(h, torch.Tensor) or tuple(h.shape) != (length, q):
            raise located(path, None, f"field 'h' is not a ({length}, {q}) tensor")
        if not isinstance(J, torch.Tensor) or tuple(J.shape) != (length, length, q, q):
            raise located(path, None, f"field 'J' is not a ({length}, {length}, {q}, {q}) tensor")
        return Potts(
            h=h, J=J, alphabet=state["alphabet"], l2_h=float(state.get("l2_h", 0.0)), l2_J=float(state.get("l2_J", 0.0))
        )


def token_distribution(logits: torch.Tensor, temperature: float, q: int) -> torch.Tensor:
    """(B, L, q) what the sampler draws at each position: softmax(logits / T) over the `q` residues, or the
    argmax one-hot at T = 0 (`sampling.unmask`'s two token rules)."""
    logits = logits[..., :q].float()
    if temperature > 0:
        return (logits / temperature).softmax(-1)
    return torch.nn.functional.one_hot(logits.argmax(-1), q).float()


def excess_energy(
    h: torch.Tensor, J: torch.Tensor, tokens: torch.Tensor, logits: torch.Tensor, mask_id: int, temperature: float
) -> torch.Tensor:
    """(B, L) the Potts energy a draw at each masked position costs above that position's best residue.

    The cost of revealing position i now (AOP target `energy`), the family-model counterpart of "the
    denoiser's argmax is wrong there": with the other positions as they stand (revealed residues, and
    the denoiser's own distribution where still masked: a mean field), residue a at i has local energy
        e_i(a) = -h_i(a) - sum_{j != i} sum_b context_j(b) J_ij(a, b),
    the draw at temperature T costs E_{a ~ p_T(i)}[e_i(a)], and the cost is that minus min_a e_i(a):
    zero where the sampler surely picks the residue the family model prefers, whatever the position's
    number of couplings (which a plain energy increment would reward instead of the choice). 0 at
    revealed positions.
    """
    q = h.shape[1]
    masked = tokens == mask_id
    drawn = token_distribution(logits, temperature, q)
    revealed = torch.nn.functional.one_hot(tokens.clamp(max=q - 1), q).float()
    context = torch.where(masked[..., None], drawn, revealed)
    local = -(h.float() + torch.einsum("ijab,njb->nia", J.float(), context))
    cost = (drawn * local).sum(-1) - local.amin(-1)
    return cost * masked


def fit_plm(
    seqs: np.ndarray,
    weights: np.ndarray | None = None,
    l2_h: float = 0.01,
    l2_J: float = 0.01,
    steps: int = 200,
    lr: float = 1.0,
) -> Potts:
    """Fit fields and couplings by weighted L2-regularised pseudo-likelihood (see module docstring).

    Identical rows are merged (weights summed) first: the objective is
    unchanged and alignments often hold many duplicates (a third of PF00014).
    `steps` bounds the L-BFGS iterations; `lr` is its initial step length.
    """
    q = len(ALPHABET)
    x = _as_tokens(seqs, None, q)
    w = torch.ones(len(x), dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
    if len(x) == 0 or w.shape != (len(x),) or not bool((w >= 0).all()) or float(w.sum()) <= 0:
        raise ValueError("need sequences and one non-negative weight per sequence, not all zero")
    x, inverse = torch.unique(x, dim=0, return_inverse=True)
    w = torch.zeros(len(x), dtype=torch.float64).index_add_(0, inverse, w)
    total = float(w.sum())
    w = (w / total).float()
    length = x.shape[1]
    rows = x + torch.arange(length) * q  # row of the (L*q, L*q) coupling matrix that each residue selects
    h = torch.zeros(length, q, requires_grad=True)
    raw = torch.zeros(length, length, q, q, requires_grad=True)
    scale_J = l2_J * (length - 1) * (q - 1)
    optimizer = torch.optim.LBFGS(
        [h, raw],
        lr=lr,
        max_iter=steps,
        history_size=10,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-7,
        tolerance_change=1e-12,
    )

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        J = _symmetric(raw)
        coupling = J.permute(0, 2, 1, 3).reshape(length * q, length * q)
        # Summing the selected rows is the one-hot matmul without the q-fold wasted multiplications by zero.
        selected = torch.nn.functional.embedding_bag(rows, coupling, mode="sum")
        logits = (selected + h.reshape(-1)).reshape(len(x), length, q)
        nll = -(torch.log_softmax(logits, -1).gather(2, x[:, :, None]).squeeze(2).sum(1) * w).sum()
        penalty = l2_h * h.pow(2).sum() + scale_J * J.pow(2).sum() / 2  # J holds each pair twice
        loss = nll + penalty / total
        loss.backward()
        return loss

    optimizer.step(objective)
    return Potts(h=h.detach(), J=_symmetric(raw.detach()), alphabet=ALPHABET, l2_h=l2_h, l2_J=l2_J)


def sample_potts(
    h: np.ndarray | torch.Tensor, J: np.ndarray | torch.Tensor, n: int, sweeps: int, seed: int = 0
) -> np.ndarray:
    """`n` independent Gibbs chains from uniform random starts, each run `sweeps` full sweeps.

    Returns each chain's final state, (n, L) int64: with enough sweeps these
    are independent draws, which is what synthetic-family tests need.
    """
    h = torch.as_tensor(h, dtype=torch.float64)
    J = torch.as_tensor(J, dtype=torch.float64)
    length, q = h.shape
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(q, (n, length), generator=generator)
    sites = torch.arange(length)
    for _ in range(sweeps):
        for i in range(length):
            logits = h[i] + J[i, sites, :, x].sum(1)  # (n, q): J[i, j, :, x_j] summed over j
            x[:, i] = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(1)
    return x.numpy()
