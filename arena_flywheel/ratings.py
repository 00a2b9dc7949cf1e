"""The rating engine shared by the stream, the CLI, `arena watch` and the demo (pure numpy/scipy).

Bradley-Terry in FastChat's parametrisation: P(a beats b) = 1 / (1 + base ** ((R_b - R_a) / scale)),
ties count half a win to each side, ratings are centred on `init` (or shifted so `anchor` has
`anchor_rating`). The likelihood depends on the data only through the n x n matrices of wins and ties,
so every fit (and every bootstrap refit) works on those matrices, never on the battle rows. The fit is
the exact (unpenalised) maximum likelihood wherever it exists (`mle_exists`: the "beat or tied" graph is
strongly connected), and L2-penalised only where it does not (`why_regularised` names the models). See
docs/ratings.md for the maths, the confidence intervals and measured speed.

`BradleyTerry` (built once, e.g. `BradleyTerry.from_config(cfg.ratings)`) fits, bootstraps and makes the
leaderboard (a `Leaderboard`: the rows plus `regularised` / `note`); `StyleControlledBT` is its
style-controlled sibling; `PairCounts` holds the data and `OnlineElo` is FastChat's sequential Elo.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from typing import Any, Iterable

import numpy as np

try:  # the systems solved here are tiny: OpenBLAS's thread pool only adds wake-up latency (x100 on a busy host)
    from threadpoolctl import ThreadpoolController

    _POOLS: ThreadpoolController | None = ThreadpoolController()
except ImportError:  # pragma: no cover - optional; same results, only slower on busy hosts
    _POOLS = None


def _one_blas_thread():
    return _POOLS.limit(limits=1, user_api="blas") if _POOLS is not None else contextlib.nullcontext()

_log = logging.getLogger(__name__)

# Winners that change ratings; "invalid" (and anything else) is ignored.
A_WINS, B_WINS = "model_a", "model_b"
TIES = ("tie", "tie (bothbad)")
# L2 penalty on the natural-log strengths, (L2 / 2) * sum(theta^2), i.e. a N(0, 10^2) prior (sd 1,737 Elo),
# used only where the unpenalised maximum does not exist (an undefeated or winless model, more generally a
# comparison graph that is not strongly connected): it keeps those ratings finite. Where the maximum exists
# the fit is the exact (unpenalised) maximum likelihood, FastChat's / LMSYS's numbers (docs/ratings.md).
L2 = 1e-2


# ------------------------------------------------------------------------------------------ counts

class PairCounts:
    """Sufficient statistics of Bradley-Terry: wins[i, j] = times i beat j, ties[i, j] = ties[j, i]."""

    def __init__(self, models: Iterable[str] = ()):
        self.models: list[str] = []
        self.index: dict[str, int] = {}
        self.wins = np.zeros((0, 0), dtype=np.int64)
        self.ties = np.zeros((0, 0), dtype=np.int64)
        for m in models:
            self._idx(m)

    def _idx(self, m: str) -> int:
        i = self.index.get(m)
        if i is not None:
            return i
        i = len(self.models)
        self.models.append(m)
        self.index[m] = i
        n = i + 1
        if self.wins.shape[0] < n:  # grow by doubling so adding models one at a time stays cheap
            cap = max(8, 2 * self.wins.shape[0])
            for name in ("wins", "ties"):
                old = getattr(self, name)
                new = np.zeros((cap, cap), dtype=old.dtype)  # float once a fractional outcome came in
                new[: old.shape[0], : old.shape[1]] = old
                setattr(self, name, new)
        return i

    # Views trimmed to the registered models (the arrays may have spare capacity).
    @property
    def W(self) -> np.ndarray:
        n = len(self.models)
        return self.wins[:n, :n]

    @property
    def T(self) -> np.ndarray:
        n = len(self.models)
        return self.ties[:n, :n]

    def add(self, a: str, b: str, winner: str, n: int = 1) -> None:
        if winner == A_WINS:
            i, j = self._idx(a), self._idx(b)
            self.wins[i, j] += n
        elif winner == B_WINS:
            i, j = self._idx(a), self._idx(b)
            self.wins[j, i] += n
        elif winner in TIES:
            i, j = self._idx(a), self._idx(b)
            self.ties[i, j] += n
            self.ties[j, i] += n
        # invalid verdicts never change ratings

    def add_score(self, a: str, b: str, y: float, n: float = 1) -> None:
        """`n` battles with a fractional outcome: y = a's score in [0, 1] (a preference probability; 1 a won,
        1/2 tie, 0 b won). Bradley-Terry's likelihood sees y wins for a and 1 - y for b; they are kept as a
        tie part 2 min(y, 1 - y) and a win part |2y - 1|, the same scores and games, so whole outcomes stay
        whole counts and the bootstrap's outcome cells keep their meaning (docs/ratings.md)."""
        if not 0.0 <= y <= 1.0:
            raise ValueError(f"a score must be in [0, 1], got {y!r}")
        if y in (0.0, 0.5, 1.0) and float(n).is_integer():
            self.add(a, b, A_WINS if y == 1.0 else B_WINS if y == 0.0 else "tie", int(n))
            return
        if self.wins.dtype != np.float64:
            self.wins, self.ties = self.wins.astype(np.float64), self.ties.astype(np.float64)
        i, j = self._idx(a), self._idx(b)
        tie = 2.0 * min(y, 1.0 - y) * n
        if y > 0.5:
            self.wins[i, j] += (2.0 * y - 1.0) * n
        else:
            self.wins[j, i] += (1.0 - 2.0 * y) * n
        self.ties[i, j] += tie
        self.ties[j, i] += tie

    @classmethod
    def from_battles(cls, rows: Iterable[tuple[str, str, str]]) -> "PairCounts":
        c = cls()
        for a, b, w in rows:
            c.add(a, b, w)
        return c

    @classmethod
    def from_arrays(cls, models: list[str], a: np.ndarray, b: np.ndarray, outcome: np.ndarray) -> "PairCounts":
        """Vectorised constructor: a, b model indices into `models`; outcome 0 = a wins, 1 = tie, 2 = b wins."""
        c = cls(models)
        n = len(models)
        a = np.asarray(a, dtype=np.int64)
        b = np.asarray(b, dtype=np.int64)
        outcome = np.asarray(outcome)
        cells = np.bincount(outcome * n * n + a * n + b, minlength=3 * n * n).reshape(3, n, n)
        c.wins[:n, :n] = cells[0] + cells[2].T
        c.ties[:n, :n] = cells[1] + cells[1].T
        return c

    def sorted(self) -> "PairCounts":
        """The same counts with models in name order: the bootstrap draws per model index, so the same
        battles read in another order (a ledger, a topic) give the same confidence intervals."""
        return PairCounts(sorted(self.models)).merge(self)

    def merge(self, other: "PairCounts") -> "PairCounts":
        idx = np.array([self._idx(m) for m in other.models], dtype=np.int64)
        if other.wins.dtype != self.wins.dtype:  # fractional counts make both float
            self.wins, self.ties = self.wins.astype(np.float64), self.ties.astype(np.float64)
        if len(idx):
            self.wins[np.ix_(idx, idx)] += other.W
            self.ties[np.ix_(idx, idx)] += other.T
        return self

    def copy(self) -> "PairCounts":
        c = PairCounts()
        c.models = list(self.models)
        c.index = dict(self.index)
        c.wins = self.wins.copy()
        c.ties = self.ties.copy()
        return c

    def battles(self, model: str) -> int:
        i = self.index.get(model)
        if i is None:
            return 0
        W, T = self.W, self.T
        return round(W[i].sum() + W[:, i].sum() + T[i].sum())

    @property
    def fractional(self) -> bool:
        """Whether some battle had a fractional outcome (add_score): the counts are then floats."""
        return self.wins.dtype == np.float64

    @property
    def total(self) -> int:
        return round(self.W.sum() + np.triu(self.T, 1).sum())

    def to_dict(self) -> dict[str, Any]:
        W, T = self.W, self.T
        wi, wj = np.nonzero(W)
        ti, tj = np.nonzero(np.triu(T, 1))
        num = float if self.fractional else int
        return {"models": list(self.models),
                "wins": [[int(i), int(j), num(W[i, j])] for i, j in zip(wi, wj)],
                "ties": [[int(i), int(j), num(T[i, j])] for i, j in zip(ti, tj)]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PairCounts":
        c = cls(d.get("models", []))
        if any(isinstance(n, float) for _, _, n in [*d.get("wins", []), *d.get("ties", [])]):
            c.wins, c.ties = c.wins.astype(np.float64), c.ties.astype(np.float64)
        for i, j, n in d.get("wins", []):
            c.wins[i, j] += n
        for i, j, n in d.get("ties", []):
            c.ties[i, j] += n
            c.ties[j, i] += n
        return c

    def __repr__(self) -> str:
        return f"PairCounts({len(self.models)} models, {self.total} battles)"


# ------------------------------------------------------------------------------------------ fitting

def _newton(S: np.ndarray, N: np.ndarray, theta: np.ndarray, l2: float | np.ndarray = L2, tol: float = 1e-10,
            max_iter: int = 100) -> np.ndarray:
    """Maximise sum_ij S_ij log sigmoid(t_i - t_j) - l2/2 |t|^2 for a batch (R, n, n) of score matrices
    S (wins + ties/2) and game matrices N (symmetric); `l2` is one value or one per replicate (R,). Newton
    with the exact Hessian (a weighted Laplacian + l2 I, positive definite); steps are capped so a cold
    start on lopsided data cannot overshoot. Converges in a handful of iterations; a warm start from the
    last solution in 1-3. With l2 = 0 (only where the maximum exists: a strongly connected comparison
    graph) the Laplacian is singular along the constant vector, the one direction the likelihood does not
    see: 11^T / n is added to it, which leaves the steps orthogonal to 1 (the gradient is) and so the
    mean of the strengths where it started."""
    R, n = theta.shape
    eye = np.eye(n)
    l2 = np.broadcast_to(np.asarray(l2, dtype=float), (R,))
    free = l2 == 0
    l2 = l2[:, None]
    ones = np.where(free, 1.0 / n, 0.0)[:, None, None] if free.any() else None
    for _ in range(max_iter):
        D = theta[:, :, None] - theta[:, None, :]
        P = 1.0 / (1.0 + np.exp(-D))
        g = (S - N * P).sum(axis=2) - l2 * theta
        M = N * P * (1.0 - P)
        H = -M
        H += (M.sum(axis=2) + l2)[:, :, None] * eye
        if ones is not None:
            H += ones
        step = np.linalg.solve(H, g[:, :, None])[:, :, 0]
        big = np.abs(step).max(axis=1, keepdims=True)
        step *= np.minimum(1.0, 3.0 / np.maximum(big, 1e-300))
        theta = theta + step
        if big.max() < tol:
            break
    return theta


def _score_games(W: np.ndarray, T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    S = W + 0.5 * T
    return S, S + S.swapaxes(-1, -2)


def _anchor_weights(anchor: str | tuple[str, ...] | None, models: list[str]) -> np.ndarray | None:
    """Weights w with sum 1 such that w . ratings is pinned: one model, or the mean of several (a group of
    fixed opponents, steadier than any one of them); None to centre on the mean of all models."""
    names = (anchor,) if isinstance(anchor, str) else tuple(anchor or ())
    present = [m for m in names if m in models]
    if names and not present:
        # A configured anchor can be absent early in a live arena; a leaderboard beats a crash. (A group
        # with some members present pins those: normal early in a history, not worth a warning.)
        _log.warning("anchor %s has no battles yet: ratings centred instead", ", ".join(names))
    if not present:
        return None
    w = np.zeros(len(models))
    w[[models.index(m) for m in present]] = 1.0 / len(present)
    return w


def fixed_opponents(rated: list[str], trained: set[str]) -> tuple[str, ...] | None:
    """The anchor checkpoint tables pin (the mean of these): every rated model that is not a trained model
    or one of its checkpoints (`model@checkpoint`). Why the mean of all of them and not one: see
    arena_cli/iterations.py. None when there is no fixed opponent."""
    fixed = tuple(m for m in rated if "@" not in m and m not in trained)
    return fixed or None


def _to_ratings(theta: np.ndarray, models: list[str], *, scale: float, base: float, init: float,
                anchor: str | tuple[str, ...] | None, anchor_rating: float | None) -> np.ndarray:
    """Natural-log strengths -> ratings: centred on init, or the anchor (one model or the mean of several)
    pinned to anchor_rating."""
    r = theta * (scale / math.log(base))
    w = _anchor_weights(anchor, models)
    if w is not None:
        return r - (r @ w)[..., None] + (init if anchor_rating is None else anchor_rating)
    return r - r.mean(axis=-1, keepdims=True) + init


def _warm_theta(counts: PairCounts, warm: dict[str, float] | None, scale: float, base: float) -> np.ndarray:
    theta = np.zeros(len(counts.models))
    if warm:
        known = [(i, warm[m]) for i, m in enumerate(counts.models) if m in warm]
        if known:
            mean = sum(r for _, r in known) / len(known)
            for i, r in known:
                theta[i] = (r - mean) * math.log(base) / scale
    return theta


def _scored(counts: PairCounts) -> np.ndarray:
    """adj[i, j]: i scored against j (a win or a tie): the edges of the comparison graph."""
    return (counts.W + counts.T) > 0


def mle_exists(counts: PairCounts) -> bool:
    """Whether the unpenalised maximum-likelihood fit exists (finite, unique up to the offset): iff the
    comparison graph, with an edge i -> j when i beat or tied j, is strongly connected (Ford 1957), i.e.
    every model reaches every other through "beat or tied" relations. In particular every model has a win
    or a tie and a loss or a tie."""
    if len(counts.models) <= 1:
        return True
    adj = _scored(counts)
    for m in (adj, adj.T):  # model 0 reaches every model, and every model reaches model 0
        seen = np.zeros(len(adj), dtype=bool)
        seen[0] = True
        frontier = seen.copy()
        while frontier.any():  # breadth-first: each model is in the frontier once, O(n^2) in all
            frontier = m[frontier].any(axis=0) & ~seen
            seen |= frontier
        if not seen.all():
            return False
    return True


def _names(ms: list[str], most: int = 6) -> str:
    return ", ".join(ms) if len(ms) <= most else ", ".join(ms[:most]) + f" and {len(ms) - most} more"


def why_regularised(counts: PairCounts) -> tuple[tuple[str, ...], str]:
    """((), "") where the unpenalised maximum likelihood exists; else (models, reason): the models that made
    the L2 prior needed and why, e.g. (("champ",), "champ won every game"). These are the groups of the
    comparison graph's condensation that no model outside them beat or tied (they "won every game against
    the others"), that beat or tied no model outside them ("lost every game"), or that never played the
    others; a group holding more than half the models is "the others" and is not named."""
    models = counts.models
    n = len(models)
    if mle_exists(counts):
        return (), ""
    from scipy.sparse.csgraph import connected_components

    adj = _scored(counts)
    k, label = connected_components(adj, directed=True, connection="strong")
    cross = adj & (label[:, None] != label[None, :])  # edges between groups
    out_ = np.bincount(label[np.nonzero(cross)[0]], minlength=k) > 0  # the group beat or tied an outsider
    in_ = np.bincount(label[np.nonzero(cross)[1]], minlength=k) > 0  # an outsider beat or tied the group
    battles = counts.W.sum(axis=0) + counts.W.sum(axis=1) + counts.T.sum(axis=1)
    named: list[tuple[list[str], str]] = []
    for c in range(k):
        ms = sorted(models[i] for i in np.flatnonzero(label == c))
        if (in_[c] and out_[c]) or 2 * len(ms) > n:
            continue
        one = len(ms) == 1
        if one and battles[counts.index[ms[0]]] == 0:
            why = f"{ms[0]} has no battles"
        elif not in_[c] and not out_[c]:
            why = f"{_names(ms)} never played the other models"
        elif not in_[c]:
            why = f"{ms[0]} won every game" if one else f"{_names(ms)} won every game against the other models"
        else:
            why = f"{ms[0]} lost every game" if one else f"{_names(ms)} lost every game against the other models"
        named.append((ms, why))
    named.sort()
    if not named:  # pragma: no cover - a condensation always has a small source or sink group
        return tuple(models), "the comparison graph is not strongly connected"
    return tuple(m for ms, _ in named for m in ms), "; ".join(why for _, why in named)


def fit_theta(counts: PairCounts, warm_theta: np.ndarray | None = None, penalised: bool | None = None
              ) -> np.ndarray:
    """Natural-log strengths: the unpenalised maximum likelihood (centred on 0) where it exists, else the
    L2-penalised fit; `penalised` forces the choice (None: mle_exists decides)."""
    if penalised is None:
        penalised = not mle_exists(counts)
    S, N = _score_games(counts.W.astype(float), counts.T.astype(float))
    t0 = np.zeros(len(counts.models)) if warm_theta is None else warm_theta
    with _one_blas_thread():
        theta = _newton(S[None], N[None], t0[None].astype(float), l2=L2 if penalised else 0.0)[0]
    return theta if penalised else theta - theta.mean()


BOOT_CHUNKS = 4  # fixed, so a seed gives the same replicates on any number of cores


def _strongly_connected(fwd: np.ndarray, bwd: np.ndarray, iu: np.ndarray, ju: np.ndarray, n: int
                         ) -> np.ndarray:
    """Per replicate: is the comparison graph strongly connected? fwd, bwd (r, pairs) bool: pair k's
    first model iu[k] beat or tied ju[k], and the other way round. Breadth-first search from model 0
    along the edges and against them, a batch of replicates at once (each step one batched product with
    their adjacency matrices, at most ~32 MB of them at a time)."""
    r = fwd.shape[0]
    ok = np.ones(r, dtype=bool)
    step = max(1, 8_000_000 // (n * n))
    for lo in range(0, r, step):
        k = slice(lo, min(r, lo + step))
        adj = np.zeros((k.stop - k.start, n, n), dtype=np.float32)
        adj[:, iu, ju] = fwd[k]
        adj[:, ju, iu] = bwd[k]
        for m in (adj, adj.transpose(0, 2, 1)):  # who model 0 reaches; who reaches model 0
            seen = np.zeros((len(adj), n), dtype=bool)
            seen[:, 0] = True
            frontier = seen
            while True:
                frontier = (np.matmul(frontier.astype(np.float32)[:, None, :], m)[:, 0, :] > 0) & ~seen
                if not frontier.any():
                    break
                seen |= frontier
            ok[k] &= seen.all(axis=1)
    return ok


def _pair_sums(iu: np.ndarray, ju: np.ndarray, r: int, n: int):
    """v -> A^T v for the pairs' incidence matrix A (row k: +1 at iu[k], -1 at ju[k]) and v of shape (pairs, r):
    per model, the sum of v over its pairs as the first model minus as the second. With bincount rather than
    scipy.sparse, whose import alone is about a tenth of a second of a whole `arena leaderboard`."""
    col = np.arange(r)
    fi, fj = (iu[:, None] * r + col).ravel(), (ju[:, None] * r + col).ravel()

    def sums(v: np.ndarray) -> np.ndarray:
        flat = v.ravel()
        return (np.bincount(fi, flat, n * r) - np.bincount(fj, flat, n * r)).reshape(n, r)
    return sums


def _pair_laplacian(iu: np.ndarray, ju: np.ndarray, w: np.ndarray, n: int) -> np.ndarray:
    """A^T diag(w) A, dense (n, n): w on both diagonals of a pair, -w off them."""
    H = np.bincount(iu * n + iu, w, n * n) + np.bincount(ju * n + ju, w, n * n)
    H -= np.bincount(iu * n + ju, w, n * n) + np.bincount(ju * n + iu, w, n * n)
    return H.reshape(n, n)


def _bootstrap_theta(counts: PairCounts, theta: np.ndarray, rounds: int, seed: int, tol: float,
                     exact: bool, penalised: bool = True) -> np.ndarray:
    """Strengths of `rounds` bootstrap replicates refitted from the point estimate `theta`, shape
    (rounds, len(models)); see BradleyTerry.bootstrap. `penalised=False` (the point estimate is the
    unpenalised maximum): each replicate is fitted by the same rule, unpenalised where its maximum
    exists, L2-penalised where its resample lost the strong connectivity."""
    n = len(counts.models)
    W, T = counts.W, counts.T
    iu, ju = np.triu_indices(n, 1)
    cells = np.stack([W[iu, ju], T[iu, ju], W[ju, iu]], axis=1)  # (pairs, 3): i wins, tie, j wins
    keep = cells.sum(axis=1) > 0
    iu, ju, cells = iu[keep], ju[keep], cells[keep].astype(float)
    total = round(cells.sum())  # fractional outcomes (add_score) make the cells floats of whole battles in all
    npairs = len(iu)
    p0 = 1.0 / (1.0 + np.exp(-(theta[iu] - theta[ju])))
    n0 = cells.sum(axis=1)
    H = _pair_laplacian(iu, ju, n0 * p0 * (1.0 - p0), n)
    H += L2 * np.eye(n) if penalised else 1.0 / n  # 11^T / n: the unpenalised Laplacian's null direction
    # edges of the data's comparison graph (a resample only loses some): first model beat/tied, and back
    had_fwd, had_bwd = cells[:, 0] + cells[:, 1] > 0, cells[:, 2] + cells[:, 1] > 0
    with _one_blas_thread():
        Hi = np.linalg.inv(H)
    probs = (cells / total).ravel()

    def chunk(args):
        ss, r = args
        rng = np.random.default_rng(ss)
        d = rng.multinomial(total, probs, size=r).reshape(r, npairs, 3)
        Sp = (d[:, :, 0] + 0.5 * d[:, :, 1]).T  # (pairs, r)
        Np = d.sum(axis=2).T.astype(float)
        x = np.repeat(theta[:, None], r, axis=1)  # (n, r)
        l2 = np.full(r, L2)
        if not penalised:  # the same rule per replicate: unpenalised where its maximum exists
            fwd, bwd = d[:, :, 0] + d[:, :, 1] > 0, d[:, :, 2] + d[:, :, 1] > 0
            lost = (had_fwd & ~fwd).any(axis=1) | (had_bwd & ~bwd).any(axis=1)
            exists = ~lost  # all edges kept: still strongly connected
            if lost.any():
                exists[lost] = _strongly_connected(fwd[lost], bwd[lost], iu, ju, n)
            l2[exists] = 0.0
        left = np.ones(r, dtype=bool)
        if not exact:
            prev = np.full(r, np.inf)
            pair_sums = _pair_sums(iu, ju, r, n)
            for _ in range(30):
                P = 1.0 / (1.0 + np.exp(-(x[iu] - x[ju])))
                g = pair_sums(Sp - Np * P) - l2 * x
                step = Hi @ g
                size = np.abs(step).max(axis=0)
                # A replicate whose curvature is far from the point estimate's (sparse pairs resampled
                # 3x, or separated data) may crawl or oscillate: stop it here, refit it exactly below.
                left = (size >= tol) & np.isfinite(size)
                bad = ~np.isfinite(size) | (size > prev)
                x += np.where(bad | ~left, 0.0, step)
                left |= bad
                prev = np.where(bad, -np.inf, size)  # once bad, stays bad
                if not left.any():
                    break
        if left.any():  # exact Newton (per-replicate Hessians) for whatever did not converge
            k = np.flatnonzero(left)
            Wr = np.zeros((len(k), n, n))
            Tr = np.zeros((len(k), n, n))
            dk = d[k]
            Wr[:, iu, ju] = dk[:, :, 0]
            Wr[:, ju, iu] = dk[:, :, 2]
            Tr[:, iu, ju] = dk[:, :, 1]
            Tr[:, ju, iu] = dk[:, :, 1]
            S, N = _score_games(Wr, Tr)
            x[:, k] = _newton(S, N, np.repeat(theta[None], len(k), axis=0), l2=l2[k], tol=tol).T
        return x.T

    chunks = min(BOOT_CHUNKS, rounds)
    sizes = [rounds // chunks + (1 if k < rounds % chunks else 0) for k in range(chunks)]
    seeds = np.random.SeedSequence(seed).spawn(chunks)
    workers = min(chunks, os.cpu_count() or 1)
    with _one_blas_thread():  # our own threads run the chunks
        if workers > 1:
            with ThreadPoolExecutor(workers) as ex:
                parts = list(ex.map(chunk, zip(seeds, sizes)))
        else:
            parts = [chunk(a) for a in zip(seeds, sizes)]
    return np.concatenate(parts, axis=0)


def rank_with_ci(lower, upper) -> list[int]:
    """FastChat's rule: 1 + the number of models whose lower bound is above my upper bound."""
    lo = np.asarray(lower, dtype=float)
    up = np.asarray(upper, dtype=float)
    return [int(1 + (lo > u).sum()) for u in up]


# ------------------------------------------------------------------------------------------ online Elo

class OnlineElo:
    """Sequential Elo as FastChat's compute_online_elo (K=4, init 1000, scale 400, base 10)."""

    def __init__(self, k: float = 4.0, init: float = 1000.0, scale: float = 400.0, base: float = 10.0):
        self.k, self.init, self.scale, self.base = float(k), float(init), float(scale), float(base)
        self.ratings: dict[str, float] = {}

    def update(self, a: str, b: str, winner: str) -> None:
        if winner == A_WINS:
            sa = 1.0
        elif winner == B_WINS:
            sa = 0.0
        elif winner in TIES:
            sa = 0.5
        else:
            return
        ra = self.ratings.get(a, self.init)
        rb = self.ratings.get(b, self.init)
        ea = 1.0 / (1.0 + self.base ** ((rb - ra) / self.scale))
        self.ratings[a] = ra + self.k * (sa - ea)
        self.ratings[b] = rb + self.k * ((1.0 - sa) - (1.0 - ea))

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "init": self.init, "scale": self.scale, "base": self.base,
                "ratings": dict(self.ratings)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "OnlineElo":
        e = cls(k=d.get("k", 4.0), init=d.get("init", 1000.0), scale=d.get("scale", 400.0),
                base=d.get("base", 10.0))
        e.ratings = {m: float(r) for m, r in d.get("ratings", {}).items()}
        return e


# ------------------------------------------------------------------------------------------ leaderboard

@dataclass
class Row:
    model: str
    rating: float
    lower: float
    upper: float
    rank: int
    battles: int
    wins: int  # floats (4 decimals) when some outcome was fractional: PairCounts.add_score's win / tie parts
    ties: int
    losses: int
    win_rate: float  # (wins + ties / 2) / battles, against all opponents

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Leaderboard(list):
    """What BradleyTerry.leaderboard returns: the rows (a list of Row, sorted by rating) plus how they were
    fitted. `regularised`: the models that made the L2-penalised fit needed (empty: the rows are the exact,
    unpenalised maximum likelihood); `note`: one line saying why, "" when exact (docs/ratings.md)."""

    def __init__(self, rows: Iterable[Row] = (), regularised: tuple[str, ...] = (), reason: str = "",
                 replicates: dict[str, np.ndarray] | None = None):
        super().__init__(rows)
        self.regularised = tuple(regularised)
        self.reason = reason
        # {model: its rating in each bootstrap replicate} (the replicates behind lower / upper), None when
        # the CIs were not bootstrapped; e.g. for win_rate_vs_baseline(..., replicates=...)
        self.replicates = replicates

    @property
    def note(self) -> str:
        if not self.regularised:
            return ""
        return f"ratings regularised (L2 prior, no finite maximum-likelihood fit) because {self.reason}"


# ------------------------------------------------------------------------------------------ models

@dataclass(frozen=True, kw_only=True)
class _Parametrisation:
    """How natural-log strengths read as ratings (FastChat's): P(a beats b) = 1 / (1 + base ** ((R_b - R_a)
    / scale)); ratings centred on `init`, or `anchor` pinned to `anchor_rating` (`init` when None)."""
    scale: float = 400.0
    base: float = 10.0
    init: float = 1000.0
    anchor: str | tuple[str, ...] | None = None  # one model, or several whose mean is pinned
    anchor_rating: float | None = None

    def pinned(self, rated: list[str], trained: set[str]):
        """This parametrisation when it has an anchor of its own (ratings.anchor_model), else the same pinned on
        the fixed opponents' mean (`fixed_opponents`): what every board showing checkpoints uses."""
        return self if self.anchor is not None else replace(self, anchor=fixed_opponents(rated, trained))

    @classmethod
    def from_config(cls, cfg_ratings):
        """The configured model (cfg.ratings, a RatingsConfig): anchor_rating counts only with an anchor."""
        r = cfg_ratings
        return cls(scale=r.scale, base=r.base, init=r.elo_init, anchor=r.anchor_model,
                   anchor_rating=r.anchor_rating)  # used only with an anchor, configured or `pinned`

    def _ratings(self, theta: np.ndarray, models: list[str]) -> np.ndarray:
        return _to_ratings(theta, models, scale=self.scale, base=self.base, init=self.init, anchor=self.anchor,
                           anchor_rating=self.anchor_rating)


@dataclass(frozen=True, kw_only=True)
class BradleyTerry(_Parametrisation):
    """Bradley-Terry on pair counts (ties = half a win to each side), with bootstrap or sandwich CIs.
    Built once (e.g. `BradleyTerry.from_config(cfg.ratings)`) and used for every fit; `rounds` is the
    default number of bootstrap replicates. Frozen: derive variants with dataclasses.replace."""
    rounds: int = 100

    @classmethod
    def from_config(cls, cfg_ratings) -> "BradleyTerry":
        return replace(super().from_config(cfg_ratings), rounds=cfg_ratings.bootstrap_rounds)

    def fit(self, counts: PairCounts, *, warm: dict[str, float] | None = None) -> dict[str, float]:
        """Maximum likelihood ratings {model: rating}; `warm`: earlier ratings to start from (same answer)."""
        if not counts.models:
            return {}
        theta = fit_theta(counts, _warm_theta(counts, warm, self.scale, self.base))
        return {m: float(x) for m, x in zip(counts.models, self._ratings(theta, counts.models))}

    def regularised(self, counts: PairCounts) -> tuple[tuple[str, ...], str]:
        """((), "") where fit() is the exact maximum likelihood; else (the models that made the L2 prior
        needed, the reason in words): see why_regularised."""
        return why_regularised(counts)

    def bootstrap(self, counts: PairCounts, rounds: int | None = None, seed: int = 0, *,
                  warm: dict[str, float] | None = None, theta: np.ndarray | None = None, tol: float = 1e-6,
                  exact: bool = False) -> np.ndarray:
        """Ratings of `rounds` (default self.rounds) bootstrap replicates, shape (rounds, len(models)).

        Resampling the battles with replacement (FastChat) is the same as one multinomial draw of the
        total over the (pair, outcome) cells with the observed frequencies, so we draw that directly and
        refit all replicates of a chunk at once, in pair space, from the point estimate (`theta`, the
        natural-log strengths, when the caller has it), with the point estimate's Hessian (a replicate's
        Hessian differs by sampling noise only, so the iteration converges in a few steps and needs one
        n x n inverse in all); replicates for which that does not converge (or exact=True) are refitted
        by exact Newton. Chunks run in threads (the array maths releases the GIL). Each replicate follows
        fit()'s rule: unpenalised where its own maximum exists, L2-penalised where not (a resample can lose
        a model's only loss)."""
        rounds = self.rounds if rounds is None else rounds
        n = len(counts.models)
        if rounds <= 0 or n == 0:
            return np.zeros((max(rounds, 0), n))
        penalised = not mle_exists(counts)
        if theta is None:
            theta = fit_theta(counts, _warm_theta(counts, warm, self.scale, self.base), penalised)
        return self._ratings(_bootstrap_theta(counts, theta, rounds, seed, tol, exact, penalised), counts.models)

    def sandwich_ci(self, counts: PairCounts, ratings: dict[str, float] | None = None, *,
                    warm: dict[str, float] | None = None,
                    z: float = 1.959963984540054) -> dict[str, tuple[float, float]]:
        """95% intervals from the robust (sandwich) covariance H^-1 J H^-1 of the strengths, where J sums
        the outer products of per-battle scores (grouped by pair and outcome). Intervals are for the
        ratings as reported: contrasts with the anchor, or deviations from the mean without one."""
        models = counts.models
        n = len(models)
        if n == 0:
            return {}
        if ratings is None:
            ratings = self.fit(counts, warm=warm)
        k = math.log(self.base) / self.scale
        theta = np.array([ratings[m] for m in models]) * k
        W, T = counts.W.astype(float), counts.T.astype(float)
        P = 1.0 / (1.0 + np.exp(-(theta[:, None] - theta[None, :])))
        N = W + W.T + T
        M = N * P * (1.0 - P)
        if mle_exists(counts):  # unpenalised: (Laplacian + 11^T/n)^-1 acts as its pseudo-inverse on contrasts
            H = np.diag(M.sum(axis=1)) - M + 1.0 / n
        else:
            H = np.diag(M.sum(axis=1) + L2) - M
        # per-battle score of pair (i, j) is (y - p_ij)(e_i - e_j), y = 1, 1/2, 0
        V = W * (1.0 - P) ** 2 + W.T * P ** 2 + T * (0.5 - P) ** 2
        V = np.triu(V + V.T, 1)
        V = V + V.T
        J = np.diag(V.sum(axis=1)) - V
        with _one_blas_thread():
            Hi = np.linalg.inv(H)
            C = Hi @ J @ Hi
        w = _anchor_weights(self.anchor, models)
        if w is not None:  # var(r_m - w.r) = C_mm - 2 (C w)_m + w'Cw
            var = np.diag(C) - 2 * (C @ w) + w @ C @ w
        else:
            Pc = np.eye(n) - 1.0 / n
            var = np.diag(Pc @ C @ Pc)
        sd = np.sqrt(np.maximum(var, 0.0)) / k
        return {m: (ratings[m] - z * s, ratings[m] + z * s) for m, s in zip(models, sd)}

    def leaderboard(self, counts: PairCounts, *, ci: str = "bootstrap", rounds: int | None = None, seed: int = 0,
                    warm: dict[str, float] | None = None) -> Leaderboard:
        """Rows sorted by rating (desc): BT rating, 95% CI (bootstrap percentiles over `rounds`, default
        self.rounds; sandwich; or none: lower = upper = rating), FastChat rank, battle counts, win rate.
        A Leaderboard (a list of Row) whose `regularised` / `note` say when and why the L2 prior was used."""
        if counts.models != sorted(counts.models):
            counts = counts.sorted()  # CIs must not depend on the order the battles arrived in
        models = counts.models
        if not models:
            return Leaderboard()
        rounds = self.rounds if rounds is None else rounds
        replicates = None
        regularised, reason = why_regularised(counts)
        theta = fit_theta(counts, _warm_theta(counts, warm, self.scale, self.base), penalised=bool(regularised))
        r = self._ratings(theta, models)
        ratings = {m: float(x) for m, x in zip(models, r)}
        if ci == "bootstrap" and rounds > 0:
            boot = self.bootstrap(counts, rounds=rounds, seed=seed, theta=theta)  # the same rule per replicate
            lower = np.quantile(boot, 0.025, axis=0)
            upper = np.quantile(boot, 0.975, axis=0)
            replicates = {m: boot[:, i] for i, m in enumerate(models)}
        elif ci == "sandwich":
            iv = self.sandwich_ci(counts, ratings)
            lower = np.array([iv[m][0] for m in models])
            upper = np.array([iv[m][1] for m in models])
        elif ci in ("none", "bootstrap"):
            lower = upper = r
        else:
            raise ValueError(f"unknown ci {ci!r}: use bootstrap, sandwich or none")
        ranks = rank_with_ci(lower, upper)
        W, T = counts.W, counts.T
        wins, losses, ties = W.sum(axis=1), W.sum(axis=0), T.sum(axis=1)
        rows = []
        num = (lambda x: round(float(x), 4)) if counts.fractional else int
        for i, m in enumerate(models):
            nb = round(wins[i] + losses[i] + ties[i])
            rows.append(Row(model=m, rating=ratings[m], lower=float(lower[i]), upper=float(upper[i]),
                            rank=ranks[i], battles=nb, wins=num(wins[i]), ties=num(ties[i]), losses=num(losses[i]),
                            win_rate=float((wins[i] + 0.5 * ties[i]) / nb) if nb else 0.0))
        rows.sort(key=lambda row: (-row.rating, row.model))
        return Leaderboard(rows, regularised, reason, replicates)

    def leaderboard_of_battles(self, battles: Iterable[tuple[str, str, str]], *, ci: str = "bootstrap",
                               rounds: int | None = None, seed: int = 0) -> Leaderboard:
        """The leaderboard of (model_a, model_b, winner) rows, e.g. the ledger's verdicts: what the demo,
        `arena watch`, `arena report` and `arena iterations` show."""
        return self.leaderboard(PairCounts.from_battles(battles), ci=ci, rounds=rounds, seed=seed)

    def win_rate_vs_baseline(self, counts: PairCounts, baseline: str, *, ratings: dict[str, float] | None = None,
                             replicates: dict[str, np.ndarray] | None = None
                             ) -> dict[str, dict[str, float | int | None]]:
        """Arena-hard / AlpacaEval style win rate of every model against `baseline`: `predicted` from the BT
        ratings (defined even without direct battles), `observed` = (wins + ties/2) / battles against the
        baseline directly (None without any), and that battle count. With `replicates` ({model: ratings of
        the bootstrap replicates}, e.g. `Leaderboard.replicates`) also `lower` / `upper`: the 2.5% / 97.5%
        quantiles of the predicted win rate over the replicates (arena-hard-auto's show_result CI)."""
        if baseline not in counts.index:
            raise ValueError(f"baseline {baseline!r} has no battles")
        if ratings is None:
            ratings = self.fit(counts)
        b = counts.index[baseline]
        W, T = counts.W, counts.T
        out: dict[str, dict[str, float | int | None]] = {}
        for m, i in counts.index.items():
            n = round(W[i, b] + W[b, i] + T[i, b])
            obs = float((W[i, b] + 0.5 * T[i, b]) / n) if n and i != b else None
            pred = 1.0 / (1.0 + self.base ** ((ratings[baseline] - ratings[m]) / self.scale))
            out[m] = {"predicted": pred, "observed": obs, "battles": n if i != b else 0}
            if replicates is not None:
                diff = np.asarray(replicates[baseline], dtype=float) - np.asarray(replicates[m], dtype=float)
                rep = 1.0 / (1.0 + self.base ** (diff / self.scale))
                out[m]["lower"] = float(np.quantile(rep, 0.025)) if len(rep) else pred
                out[m]["upper"] = float(np.quantile(rep, 0.975)) if len(rep) else pred
        return out


@dataclass(frozen=True, kw_only=True)
class StyleControlledBT(_Parametrisation):
    """Style-controlled BT (the idea of LMSYS's style control): logistic regression of the outcome on the
    model indicators plus style covariates, so a judge's taste for long or heavily formatted answers is
    credited to the covariates, not to the models. Same parametrisation and L2 as BradleyTerry."""

    def fit(self, model_a, model_b, winner, style_a, style_b, *,
            tol: float = 1e-10) -> tuple[dict[str, float], np.ndarray]:
        """model_a, model_b, winner: one entry per battle; style_a, style_b: (battles, k) arrays of
        non-negative style counts of each side's answer (e.g. tokens, headers, list items). The covariate
        is the normalised difference (a - b) / (a + b), standardised. Returns (ratings, coefficients);
        coefficient j is the log-odds change per standard deviation of covariate j. Rows are not grouped
        (the covariates are continuous), so this costs O(battles) per Newton step. `winner` may also be
        model_a's score in [0, 1] per battle (floats: fractional outcomes)."""
        winner = np.asarray(winner)
        if winner.dtype.kind == "f":  # scores of model_a in [0, 1] (fractional outcomes); NaN is not rated
            rated = ~np.isnan(winner)
            y = winner[rated]
        else:
            rated = np.isin(winner, (A_WINS, B_WINS) + TIES)
            y = np.where(winner[rated] == A_WINS, 1.0, np.where(winner[rated] == B_WINS, 0.0, 0.5))
        ma, mb = np.asarray(model_a)[rated], np.asarray(model_b)[rated]
        sa = np.asarray(style_a, dtype=float)[rated].reshape(len(y), -1)
        sb = np.asarray(style_b, dtype=float)[rated].reshape(len(y), -1)
        models = sorted(set(ma.tolist()) | set(mb.tolist()))
        ix = {m: i for i, m in enumerate(models)}
        ia = np.array([ix[m] for m in ma], dtype=np.int64)
        ib = np.array([ix[m] for m in mb], dtype=np.int64)
        den = sa + sb
        F = np.divide(sa - sb, den, out=np.zeros_like(den), where=den > 0)
        sd = F.std(axis=0)
        F = (F - F.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
        n, k = len(models), F.shape[1]
        from scipy import sparse

        rows = np.arange(len(y))
        X = sparse.hstack([sparse.csr_matrix((np.r_[np.ones(len(y)), -np.ones(len(y))],
                                              (np.r_[rows, rows], np.r_[ia, ib])), shape=(len(y), n)),
                           sparse.csr_matrix(F)]).tocsr()
        reg = np.r_[np.full(n, L2), np.full(k, L2)]
        w = np.zeros(n + k)
        with _one_blas_thread():
            for _ in range(100):
                p = 1.0 / (1.0 + np.exp(-(X @ w)))
                g = X.T @ (y - p) - reg * w
                H = (X.T @ sparse.diags(p * (1 - p)) @ X).toarray() + np.diag(reg)
                step = np.linalg.solve(H, g)
                step *= min(1.0, 3.0 / max(np.abs(step).max(), 1e-300))
                w += step
                if np.abs(step).max() < tol:
                    break
        return {m: float(v) for m, v in zip(models, self._ratings(w[:n], models))}, w[n:]

    def leaderboard(self, model_a, model_b, winner, style_a, style_b, counts: PairCounts, *, rounds: int = 100,
                    seed: int = 0) -> tuple[Leaderboard, np.ndarray]:
        """Rows as BradleyTerry.leaderboard's (battle counts and win rates from `counts`, the same battles)
        with the style-controlled ratings, their 95% bootstrap CIs (the battles resampled with replacement
        `rounds` times, each refitted; `rounds` 0: lower = upper = rating) and FastChat's rank; plus the
        style coefficients of the point fit."""
        ratings, coef = self.fit(model_a, model_b, winner, style_a, style_b)
        models = sorted(ratings)
        r = np.array([ratings[m] for m in models])
        lower = upper = r
        replicates = None
        if rounds > 0:
            rng = np.random.default_rng(seed)
            cols = [np.asarray(x) for x in (model_a, model_b, winner, style_a, style_b)]
            boot = np.empty((rounds, len(models)))
            for k in range(rounds):
                take = rng.integers(0, len(cols[0]), len(cols[0]))
                rep, _ = self.fit(*(c[take] for c in cols))
                # a model that drew no battle in this resample keeps its point rating
                boot[k] = [rep.get(m, ratings[m]) for m in models]
            lower, upper = np.quantile(boot, 0.025, axis=0), np.quantile(boot, 0.975, axis=0)
            replicates = {m: boot[:, i] for i, m in enumerate(models)}
        ranks = rank_with_ci(lower, upper)
        plain = {row.model: row for row in BradleyTerry(rounds=0).leaderboard(counts, ci="none")}
        rows = [replace(plain[m], rating=float(r[i]), lower=float(lower[i]), upper=float(upper[i]), rank=ranks[i])
                for i, m in enumerate(models)]
        rows.sort(key=lambda row: (-row.rating, row.model))
        return Leaderboard(rows, replicates=replicates), coef
