"""Rating engine vs FastChat's current method on 1,000,000 synthetic battles among 100 models (10% ties).

Peer (written here from FastChat's description of its Bradley-Terry leaderboard): group the battles into
unique (model_a, model_b, outcome) rows with counts, minimise the weighted logistic loss with scipy's
L-BFGS-B (gtol 1e-6, at most 100 iterations, from zeros), then 100 bootstrap refits on multinomially
resampled row weights in a multiprocessing pool with one process per core.
Ours: arena_flywheel.ratings: PairCounts.from_arrays + BradleyTerry().leaderboard(ci="bootstrap", rounds=100).
Both start from the same integer arrays, in the same process; we print both times, the ratio, the
largest rating difference, and the time of one warm refit after a single new verdict.

    python benchmarks/bench_ratings.py [--battles 1000000] [--models 100] [--rounds 100] [--peer-rounds 100]
"""
from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arena_flywheel.ratings import BradleyTerry, PairCounts  # noqa: E402

BT = BradleyTerry()  # scale 400, base 10, init 1000: the peer's parametrisation


def synthetic(n_battles: int, n_models: int, seed: int = 0, tie: float = 0.1):
    rng = np.random.default_rng(seed)
    true = rng.normal(0, 200, n_models)
    a = rng.integers(0, n_models, n_battles)
    b = (a + rng.integers(1, n_models, n_battles)) % n_models
    p = 1 / (1 + 10 ** ((true[b] - true[a]) / 400))
    outcome = np.where(rng.random(n_battles) < tie, 1, np.where(rng.random(n_battles) < p, 0, 2))
    return a, b, outcome  # 0 = a wins, 1 = tie, 2 = b wins


# ---------------------------------------------------------------------------------------------- peer

def peer_group(a, b, outcome):
    """Unique (a, b, y) rows and their counts; y = 1 a wins, 0.5 tie, 0 b wins."""
    rows = np.column_stack([a, b, 2 - outcome])
    uniq, counts = np.unique(rows, axis=0, return_counts=True)
    return uniq[:, :2], uniq[:, 2] / 2.0, counts.astype(np.float64)


def peer_loss_grad(r, pairs, y, w, alpha):
    z = alpha * (r[pairs[:, 0]] - r[pairs[:, 1]])
    p = expit(z)
    loss = -(w * (y * np.log(p) + (1 - y) * np.log(1 - p))).sum()
    gz = -alpha * w * (y - p)
    grad = np.zeros_like(r)
    np.add.at(grad, pairs[:, 0], gz)
    np.add.at(grad, pairs[:, 1], -gz)
    return loss, grad


def peer_fit(pairs, y, w, n_models, alpha, tol=1e-6, **options):
    res = minimize(peer_loss_grad, np.zeros(n_models), args=(pairs, y, w, alpha), jac=True, method="L-BFGS-B",
                   options={"maxiter": 100, "gtol": tol, **options})
    return res.x


def peer_leaderboard(a, b, outcome, n_models, rounds, base=10.0, scale=400.0, init=1000.0):
    pairs, y, w = peer_group(a, b, outcome)
    alpha = math.log(base)
    point = peer_fit(pairs, y, w, n_models, alpha) * scale + init
    boot = None
    if rounds:
        rng = np.random.default_rng(0)
        bw = rng.multinomial(len(a), w / w.sum(), size=rounds).astype(np.float64) / len(a)
        fn = partial(peer_fit, pairs, y, n_models=n_models, alpha=alpha)
        with mp.get_context("fork").Pool(os.cpu_count()) as pool:
            boot = np.array(pool.map(fn, bw)) * scale + init
    return point, boot


# ---------------------------------------------------------------------------------------------- main

def timed(fn, repeat=1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--battles", type=int, default=1_000_000)
    ap.add_argument("--models", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=100, help="our bootstrap rounds")
    ap.add_argument("--peer-rounds", type=int, default=100, help="peer bootstrap refits")
    ap.add_argument("--repeat", type=int, default=3, help="best of N for our timings")
    args = ap.parse_args(argv)

    a, b, outcome = synthetic(args.battles, args.models)
    names = [f"model-{i:03d}" for i in range(args.models)]
    print(f"{args.battles:,} battles, {args.models} models, {np.mean(outcome == 1):.1%} ties, "
          f"{os.cpu_count()} cores, numpy {np.__version__}")

    def ours():
        counts = PairCounts.from_arrays(names, a, b, outcome)
        return counts, BT.leaderboard(counts, ci="bootstrap", rounds=args.rounds, seed=0)

    t_ours, (counts, rows) = timed(ours, args.repeat)
    t_fit, _ = timed(lambda: BT.fit(PairCounts.from_arrays(names, a, b, outcome)), args.repeat)
    t_peer, (peer_point, peer_boot) = timed(lambda: peer_leaderboard(a, b, outcome, args.models, args.peer_rounds))
    t_peer_fit, _ = timed(lambda: peer_leaderboard(a, b, outcome, args.models, 0))

    ours_r = np.array([next(r.rating for r in rows if r.model == m) for m in names])
    diff = np.abs(ours_r - peer_point).max()
    print(f"ours : full leaderboard + {args.rounds}-round bootstrap CIs  {t_ours * 1000:8.1f} ms   "
          f"(point fit only {t_fit * 1000:.1f} ms)")
    print(f"peer : L-BFGS + {args.peer_rounds} bootstrap refits ({os.cpu_count()} processes)  "
          f"{t_peer * 1000:8.1f} ms   (point fit only {t_peer_fit * 1000:.1f} ms)")
    peer_total = t_peer
    if args.peer_rounds and args.peer_rounds != args.rounds:
        # scale the bootstrap part linearly to the same number of rounds
        peer_total = t_peer_fit + (t_peer - t_peer_fit) * args.rounds / args.peer_rounds
        print(f"peer scaled to {args.rounds} rounds: {peer_total * 1000:.1f} ms")
    print(f"speed-up: {peer_total / t_ours:.1f}x (point fit {t_peer_fit / t_fit:.1f}x)")
    t_group, grouped = timed(lambda: peer_group(a, b, outcome))
    t_count, _ = timed(lambda: PairCounts.from_arrays(names, a, b, outcome), args.repeat)
    print(f"  of which grouping the 1M rows: peer np.unique {t_group * 1000:.1f} ms, ours bincount "
          f"{t_count * 1000:.1f} ms; without it: peer {(peer_total - t_group) * 1000:.1f} ms, ours "
          f"{(t_ours - t_count) * 1000:.1f} ms ({(peer_total - t_group) / (t_ours - t_count):.1f}x)")
    # FastChat's L-BFGS stops on scipy's default relative-reduction test (ftol) with gradient left over;
    # the same peer run to convergence (ftol=0, gtol 1e-9) is the reference for the 0.01 Elo check.
    pairs, y, w = peer_group(a, b, outcome)
    conv = peer_fit(pairs, y, w, args.models, math.log(10), tol=1e-9, ftol=0.0, maxiter=1000) * 400 + 1000
    diff_conv = np.abs(ours_r - conv).max()
    print(f"max |rating difference| ours vs peer as FastChat runs it: {diff:.5f} Elo; "
          f"vs the peer run to convergence: {diff_conv:.6f} Elo ({'OK' if diff_conv <= 0.01 else 'ABOVE 0.01'}); "
          f"peer as run vs converged: {np.abs(peer_point - conv).max():.5f} Elo")
    if peer_boot is not None:
        lo = np.array([next(r.lower for r in rows if r.model == m) for m in names])
        up = np.array([next(r.upper for r in rows if r.model == m) for m in names])
        plo, pup = np.quantile(peer_boot, 0.025, axis=0), np.quantile(peer_boot, 0.975, axis=0)
        print(f"mean 95% CI width: ours {np.mean(up - lo):.2f}, peer {np.mean(pup - plo):.2f} Elo; "
              f"max |bound difference| {max(np.abs(lo - plo).max(), np.abs(up - pup).max()):.2f} Elo "
              f"(different random resamples)")

    # incremental: one new verdict, warm refit from the previous ratings
    warm = {r.model: r.rating for r in rows}
    times = []
    rng = np.random.default_rng(1)
    for _ in range(50):
        i, j = rng.choice(args.models, 2, replace=False)
        counts.add(names[i], names[j], "model_a")
        t = time.perf_counter()
        warm = BT.fit(counts, warm=warm)
        times.append(time.perf_counter() - t)
    print(f"incremental warm refit after one new verdict: median {np.median(times) * 1000:.2f} ms, "
          f"max {np.max(times) * 1000:.2f} ms (50 verdicts)")
    t_s, _ = timed(lambda: BT.sandwich_ci(counts, warm), args.repeat)
    print(f"sandwich CIs (given the fit): {t_s * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
