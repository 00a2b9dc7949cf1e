"""The rating engine shared by the stream, the CLI, `arena watch` and the demo (pure numpy/scipy).

Bradley-Terry in FastChat's parametrisation: P(a beats b) = 1 / (1 + base ** ((R_b - R_a) / scale)),
ties count half a win to each side, ratings are centred on `init` (or shifted so `anchor` has
`anchor_rating`). The likelihood depends on the data only through the n x n matrices of wins and ties,
so every fit (and every bootstrap refit) works on those matrices, never on the battle rows. See
docs/ratings.md for the maths, the confidence intervals and measured speed.

`BradleyTerry` (built once, e.g. `BradleyTerry.from_config(cfg.ratings)`) fits, bootstraps and makes the
leaderboard; `StyleControlledBT` is its style-controlled sibling; `PairCounts` holds the data and
`OnlineElo` is FastChat's sequential Elo.
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
# L2 penalty on the natural-log strengths, (L2 / 2) * sum(theta^2), i.e. a N(0, 10^2) prior (sd 1,737 Elo):
# keeps undefeated/winless models finite and the system identifiable. Its bias shrinks with the data:
# 0.04 Elo at ~240 battles per model, 0.002 Elo at 20,000 (docs/ratings.md).
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
                new = np.zeros((cap, cap), dtype=np.int64)
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
        return int(W[i].sum() + W[:, i].sum() + T[i].sum())

    @property
    def total(self) -> int:
        return int(self.W.sum() + np.triu(self.T, 1).sum())

    def to_dict(self) -> dict[str, Any]:
        W, T = self.W, self.T
        wi, wj = np.nonzero(W)
        ti, tj = np.nonzero(np.triu(T, 1))
        return {"models": list(self.models),
                "wins": [[int(i), int(j), int(W[i, j])] for i, j in zip(wi, wj)],
                "ties": [[int(i), int(j), int(T[i, j])] for i, j in zip(ti, tj)]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PairCounts":
        c = cls(d.get("models", []))
        for i, j, n in d.get("wins", []):
            c.wins[i, j] += n
        for i, j, n in d.get("ties", []):
            c.ties[i, j] += n
            c.ties[j, i] += n
        return c

    def __repr__(self) -> str:
        return f"PairCounts({len(self.models)} models, {self.total} battles)"


# ------------------------------------------------------------------------------------------ fitting

def _newton(S: np.ndarray, N: np.ndarray, theta: np.ndarray, l2: float = L2, tol: float = 1e-10,
            max_iter: int = 100) -> np.ndarray:
    """Maximise sum_ij S_ij log sigmoid(t_i - t_j) - l2/2 |t|^2 for a batch (R, n, n) of score matrices
    S (wins + ties/2) and game matrices N (symmetric). Newton with the exact Hessian (a weighted
    Laplacian + l2 I, positive definite); steps are capped so a cold start on lopsided data cannot
    overshoot. Converges in a handful of iterations; a warm start from the last solution in 1-3."""
    R, n = theta.shape
    eye = np.eye(n)
    for _ in range(max_iter):
        D = theta[:, :, None] - theta[:, None, :]
        P = 1.0 / (1.0 + np.exp(-D))
        g = (S - N * P).sum(axis=2) - l2 * theta
        M = N * P * (1.0 - P)
        H = -M
        H += (M.sum(axis=2) + l2)[:, :, None] * eye
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


def _to_ratings(theta: np.ndarray, models: list[str], *, scale: float, base: float, init: float,
                anchor: str | None, anchor_rating: float | None) -> np.ndarray:
    """Natural-log strengths -> ratings: centred on init, or the anchor pinned to anchor_rating."""
    r = theta * (scale / math.log(base))
    if anchor is not None and anchor not in models:
        # A configured anchor can be absent early in a live arena; a leaderboard beats a crash.
        _log.warning("anchor model %r has no battles yet: ratings centred on %g instead", anchor, init)
        anchor = None
    if anchor is not None:
        i = models.index(anchor)
        return r - r[..., i: i + 1] + (init if anchor_rating is None else anchor_rating)
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


def fit_theta(counts: PairCounts, warm_theta: np.ndarray | None = None) -> np.ndarray:
    S, N = _score_games(counts.W.astype(float), counts.T.astype(float))
    t0 = np.zeros(len(counts.models)) if warm_theta is None else warm_theta
    with _one_blas_thread():
        return _newton(S[None], N[None], t0[None].astype(float))[0]



BOOT_CHUNKS = 4  # fixed, so a seed gives the same replicates on any number of cores


def _bootstrap_theta(counts: PairCounts, theta: np.ndarray, rounds: int, seed: int, tol: float,
                     exact: bool) -> np.ndarray:
    """Strengths of `rounds` bootstrap replicates refitted from the point estimate `theta`, shape
    (rounds, len(models)); see BradleyTerry.bootstrap."""
    n = len(counts.models)
    W, T = counts.W, counts.T
    iu, ju = np.triu_indices(n, 1)
    cells = np.stack([W[iu, ju], T[iu, ju], W[ju, iu]], axis=1)  # (pairs, 3): i wins, tie, j wins
    keep = cells.sum(axis=1) > 0
    iu, ju, cells = iu[keep], ju[keep], cells[keep].astype(float)
    total = int(cells.sum())
    from scipy import sparse

    npairs = len(iu)
    rows = np.arange(npairs)
    # incidence matrix: strength differences D = A theta, gradients g = A^T residual
    A = sparse.csr_matrix((np.r_[np.ones(npairs), -np.ones(npairs)], (np.r_[rows, rows], np.r_[iu, ju])),
                          shape=(npairs, n))
    AT = A.T.tocsr()
    p0 = 1.0 / (1.0 + np.exp(-(theta[iu] - theta[ju])))
    n0 = cells.sum(axis=1)
    H = (AT @ sparse.diags(n0 * p0 * (1.0 - p0)) @ A).toarray() + L2 * np.eye(n)
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
        left = np.ones(r, dtype=bool)
        if not exact:
            prev = np.full(r, np.inf)
            for _ in range(30):
                P = 1.0 / (1.0 + np.exp(-(A @ x)))
                g = AT @ (Sp - Np * P) - L2 * x
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
            x[:, k] = _newton(S, N, np.repeat(theta[None], len(k), axis=0), tol=tol).T
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
    wins: int
    ties: int
    losses: int
    win_rate: float  # (wins + ties / 2) / battles, against all opponents

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------ models

@dataclass(frozen=True, kw_only=True)
class _Parametrisation:
    """How natural-log strengths read as ratings (FastChat's): P(a beats b) = 1 / (1 + base ** ((R_b - R_a)
    / scale)); ratings centred on `init`, or `anchor` pinned to `anchor_rating` (`init` when None)."""
    scale: float = 400.0
    base: float = 10.0
    init: float = 1000.0
    anchor: str | None = None
    anchor_rating: float | None = None

    @classmethod
    def from_config(cls, cfg_ratings):
        """The configured model (cfg.ratings, a RatingsConfig): anchor_rating counts only with an anchor."""
        r = cfg_ratings
        return cls(scale=r.scale, base=r.base, init=r.elo_init, anchor=r.anchor_model,
                   anchor_rating=r.anchor_rating if r.anchor_model else None)

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
        by exact Newton. Chunks run in threads (the array maths releases the GIL)."""
        rounds = self.rounds if rounds is None else rounds
        n = len(counts.models)
        if rounds <= 0 or n == 0:
            return np.zeros((max(rounds, 0), n))
        if theta is None:
            theta = fit_theta(counts, _warm_theta(counts, warm, self.scale, self.base))
        return self._ratings(_bootstrap_theta(counts, theta, rounds, seed, tol, exact), counts.models)

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
        H = np.diag(M.sum(axis=1) + L2) - M
        # per-battle score of pair (i, j) is (y - p_ij)(e_i - e_j), y = 1, 1/2, 0
        V = W * (1.0 - P) ** 2 + W.T * P ** 2 + T * (0.5 - P) ** 2
        V = np.triu(V + V.T, 1)
        V = V + V.T
        J = np.diag(V.sum(axis=1)) - V
        with _one_blas_thread():
            Hi = np.linalg.inv(H)
            C = Hi @ J @ Hi
        if self.anchor is not None and self.anchor in counts.index:
            a = counts.index[self.anchor]
            var = np.diag(C) + C[a, a] - 2 * C[:, a]
        else:
            Pc = np.eye(n) - 1.0 / n
            var = np.diag(Pc @ C @ Pc)
        sd = np.sqrt(np.maximum(var, 0.0)) / k
        return {m: (ratings[m] - z * s, ratings[m] + z * s) for m, s in zip(models, sd)}

    def leaderboard(self, counts: PairCounts, *, ci: str = "bootstrap", rounds: int | None = None, seed: int = 0,
                    warm: dict[str, float] | None = None) -> list[Row]:
        """Rows sorted by rating (desc): BT rating, 95% CI (bootstrap percentiles over `rounds`, default
        self.rounds; sandwich; or none: lower = upper = rating), FastChat rank, battle counts, win rate."""
        if counts.models != sorted(counts.models):
            counts = counts.sorted()  # CIs must not depend on the order the battles arrived in
        models = counts.models
        if not models:
            return []
        rounds = self.rounds if rounds is None else rounds
        theta = fit_theta(counts, _warm_theta(counts, warm, self.scale, self.base))
        r = self._ratings(theta, models)
        ratings = {m: float(x) for m, x in zip(models, r)}
        if ci == "bootstrap" and rounds > 0:
            boot = self.bootstrap(counts, rounds=rounds, seed=seed, theta=theta)
            lower = np.quantile(boot, 0.025, axis=0)
            upper = np.quantile(boot, 0.975, axis=0)
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
        for i, m in enumerate(models):
            nb = int(wins[i] + losses[i] + ties[i])
            rows.append(Row(model=m, rating=ratings[m], lower=float(lower[i]), upper=float(upper[i]),
                            rank=ranks[i], battles=nb, wins=int(wins[i]), ties=int(ties[i]), losses=int(losses[i]),
                            win_rate=float((wins[i] + 0.5 * ties[i]) / nb) if nb else 0.0))
        rows.sort(key=lambda row: (-row.rating, row.model))
        return rows

    def leaderboard_of_battles(self, battles: Iterable[tuple[str, str, str]], *, ci: str = "bootstrap",
                               rounds: int | None = None, seed: int = 0) -> list[Row]:
        """The leaderboard of (model_a, model_b, winner) rows, e.g. the ledger's verdicts: what the demo,
        `arena watch`, `arena report` and `arena iterations` show."""
        return self.leaderboard(PairCounts.from_battles(battles), ci=ci, rounds=rounds, seed=seed)

    def win_rate_vs_baseline(self, counts: PairCounts, baseline: str, *, ratings: dict[str, float] | None = None
                             ) -> dict[str, dict[str, float | int | None]]:
        """Arena-hard / AlpacaEval style win rate of every model against `baseline`: `predicted` from the BT
        ratings (defined even without direct battles), `observed` = (wins + ties/2) / battles against the
        baseline directly (None without any), and that battle count."""
        if baseline not in counts.index:
            raise ValueError(f"baseline {baseline!r} has no battles")
        if ratings is None:
            ratings = self.fit(counts)
        b = counts.index[baseline]
        W, T = counts.W, counts.T
        out: dict[str, dict[str, float | int | None]] = {}
        for m, i in counts.index.items():
            n = int(W[i, b] + W[b, i] + T[i, b])
            obs = float((W[i, b] + 0.5 * T[i, b]) / n) if n and i != b else None
            pred = 1.0 / (1.0 + self.base ** ((ratings[baseline] - ratings[m]) / self.scale))
            out[m] = {"predicted": pred, "observed": obs, "battles": n if i != b else 0}
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
        (the covariates are continuous), so this costs O(battles) per Newton step."""
        winner = np.asarray(winner)
        rated = np.isin(winner, (A_WINS, B_WINS) + TIES)
        ma, mb = np.asarray(model_a)[rated], np.asarray(model_b)[rated]
        y = np.where(winner[rated] == A_WINS, 1.0, np.where(winner[rated] == B_WINS, 0.0, 0.5))
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
