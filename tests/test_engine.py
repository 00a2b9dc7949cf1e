"""Rating engine and `arena leaderboard`: checked against a straightforward implementation (scipy on the
raw per-battle log-likelihood), on simulated arenas with known strengths, and through the real CLI."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from scipy.optimize import minimize

from arena_cli.main import main
from arena_flywheel.ratings import (L2, BradleyTerry, Leaderboard, OnlineElo, PairCounts, StyleControlledBT, fit_theta,
                                    mle_exists, rank_with_ci, why_regularised)

LN10 = math.log(10)
BT = BradleyTerry()  # FastChat's defaults: scale 400, base 10, centred on 1000


def simulate(strength: dict[str, float], n: int, seed: int, tie: float = 0.1) -> list[tuple[str, str, str]]:
    """Battles from a BT model with the given ratings (scale 400, base 10), a share of ties."""
    rng = np.random.default_rng(seed)
    models = list(strength)
    rows = []
    for _ in range(n):
        a, b = rng.choice(len(models), 2, replace=False)
        ma, mb = models[a], models[b]
        p = 1 / (1 + 10 ** ((strength[mb] - strength[ma]) / 400))
        if rng.random() < tie:
            rows.append((ma, mb, "tie"))
        else:
            rows.append((ma, mb, "model_a" if rng.random() < p else "model_b"))
    return rows


def reference_fit(rows, l2: float = 0.0) -> dict[str, float]:
    """Independent BT: minimise the per-battle negative log-likelihood (tie = 1/2 outcome) with scipy,
    FastChat's parametrisation, centred on 1000."""
    models = sorted({m for a, b, _ in rows for m in (a, b)})
    ix = {m: i for i, m in enumerate(models)}
    a = np.array([ix[r[0]] for r in rows])
    b = np.array([ix[r[1]] for r in rows])
    y = np.array([{"model_a": 1.0, "model_b": 0.0}.get(r[2], 0.5) for r in rows])

    def nll(t):  # t: natural-log strengths, rating = t * 400 / ln 10
        d = t[a] - t[b]
        return np.sum(np.logaddexp(0, -d) * y + np.logaddexp(0, d) * (1 - y)) + l2 / 2 * np.sum(t ** 2)

    res = minimize(nll, np.zeros(len(models)), method="BFGS", options={"gtol": 1e-10})
    r = res.x * 400 / LN10
    r = r - r.mean() + 1000
    return dict(zip(models, r))


STRENGTH = {"a": 1200.0, "b": 1100.0, "c": 1000.0, "d": 950.0, "e": 750.0}


def test_fit_agrees_with_a_straightforward_maximum_likelihood():
    rows = simulate(STRENGTH, 600, seed=1)
    c = PairCounts.from_battles(rows)
    got = BT.fit(c)
    ref = reference_fit(rows)
    assert mle_exists(c) and got.keys() == ref.keys()
    assert max(abs(got[m] - ref[m]) for m in got) < 1e-3  # the exact, unpenalised maximum
    assert abs(np.mean(list(got.values())) - 1000) < 1e-9  # centred on init without an anchor
    # the penalised fit (used only where the maximum does not exist) is the L2-penalised maximum, and its
    # bias against the unpenalised one is small already at ~240 battles per model
    pen = fit_theta(c, penalised=True) * 400 / LN10
    pen = dict(zip(c.models, pen - pen.mean() + 1000))
    assert max(abs(pen[m] - v) for m, v in reference_fit(rows, l2=L2).items()) < 1e-3
    assert 1e-3 < max(abs(pen[m] - got[m]) for m in got) < 0.1


def sparse_arena(models: int = 25, seed: int = 21) -> list[tuple[str, str, str]]:
    """A sparse human-arena-like sample: every model in 30-60 battles, ~15% ties, ratings spread 150 Elo."""
    rng = np.random.default_rng(seed)
    names = [f"model-{i:02d}" for i in range(models)]
    truth = dict(zip(names, rng.normal(1000, 150, models)))
    want = dict(zip(names, rng.integers(30, 61, models)))
    have = dict.fromkeys(names, 0)
    rows = []
    while True:
        open_ = [m for m in names if have[m] < want[m]]
        if len(open_) < 2:
            break
        a, b = rng.choice(open_, 2, replace=False)
        p = 1 / (1 + 10 ** ((truth[b] - truth[a]) / 400))
        u = rng.random()
        rows.append((a, b, "tie" if u < 0.15 else "model_a" if u < 0.15 + 0.85 * p else "model_b"))
        have[a] += 1
        have[b] += 1
    return rows


def converged_unpenalised_fit(rows) -> dict[str, float]:
    """The definition, in FastChat's parametrisation and units: maximise sum over battles of
    y log P(a beats b) + (1 - y) log P(b beats a), P(a beats b) = 1 / (1 + 10^((R_b - R_a) / 400)),
    y = 1, 1/2 (tie), 0, over the ratings R themselves, no prior; L-BFGS-B run to convergence
    (gtol 1e-12, no relative-reduction stop); centred on 1000."""
    models = sorted({m for a, b, _ in rows for m in (a, b)})
    ix = {m: i for i, m in enumerate(models)}
    a = np.array([ix[r[0]] for r in rows])
    b = np.array([ix[r[1]] for r in rows])
    y = np.array([{"model_a": 1.0, "model_b": 0.0}.get(r[2], 0.5) for r in rows])

    def nll(R):
        z = (R[a] - R[b]) * LN10 / 400  # log-odds that a beats b
        p = 1 / (1 + 10 ** ((R[b] - R[a]) / 400))
        gz = -(y - p) * LN10 / 400
        grad = np.bincount(a, gz, len(models)) - np.bincount(b, gz, len(models))
        return np.sum(y * np.logaddexp(0, -z) + (1 - y) * np.logaddexp(0, z)), grad

    res = minimize(nll, np.full(len(models), 1000.0), jac=True, method="L-BFGS-B",
                   options={"gtol": 1e-12, "ftol": 0.0, "maxiter": 100_000, "maxfun": 100_000})
    assert np.abs(res.jac).max() < 1e-8, res.message
    return dict(zip(models, res.x - res.x.mean() + 1000))


def test_sparse_arena_gets_the_exact_unpenalised_fit():
    """Issue 20: tens of battles per model, where the L2 prior's bias was visible (LMSYS publishes the
    unpenalised fit). Every model has wins and losses, so the maximum exists and is what we report."""
    rows = sparse_arena()
    c = PairCounts.from_battles(rows)
    W = c.W
    per_model = [c.battles(m) for m in c.models]
    assert len(c.models) == 25 and 30 <= min(per_model) and max(per_model) <= 60 and c.T.sum() > 0
    assert (W.sum(axis=1) > 0).all() and (W.sum(axis=0) > 0).all()
    assert mle_exists(c) and why_regularised(c) == ((), "")
    ref = converged_unpenalised_fit(rows)
    got = BT.fit(c)
    assert max(abs(got[m] - ref[m]) for m in ref) < 0.01
    board = BT.leaderboard(c, ci="bootstrap", rounds=50)
    assert isinstance(board, Leaderboard) and board.regularised == () and board.note == ""
    assert max(abs(r.rating - ref[r.model]) for r in board) < 0.01
    sand = BT.leaderboard(c, ci="sandwich")
    assert max(abs(r.rating - ref[r.model]) for r in sand) < 0.01
    assert all(r.lower < r.rating < r.upper for r in sand)
    # anchored: the same differences
    pinned = BradleyTerry(anchor="model-00", anchor_rating=1114.0).fit(c)
    assert max(abs((pinned[m] - 1114.0) - (ref[m] - ref["model-00"])) for m in ref) < 0.01
    # the old always-penalised fit was visibly off here (what the issue measured on a real sample)
    pen = fit_theta(c, penalised=True) * 400 / LN10
    assert np.abs((pen - pen.mean() + 1000) - np.array([ref[m] for m in c.models])).max() > 0.1


def test_sparse_bootstrap_replicates_follow_the_same_rule():
    """Replicates are unpenalised where their own maximum exists; a resample that drops a model's only
    loss falls back to the penalised fit (finite). The batched refits equal exact Newton per replicate."""
    c = PairCounts.from_battles(sparse_arena(models=12, seed=5))
    c.add("solo", "model-00", "model_a", n=6)
    c.add("solo", "model-01", "model_a", n=6)
    c.add("model-02", "solo", "model_a")  # solo's only loss: lost in ~37% of the resamples
    assert mle_exists(c)
    fast, exact = BT.bootstrap(c, rounds=60, seed=1), BT.bootstrap(c, rounds=60, seed=1, exact=True)
    assert np.isfinite(fast).all() and np.abs(fast - exact).max() < 0.01
    solo = fast[:, c.models.index("solo")]
    # without its loss solo is unbeaten: only the prior holds it, far above the replicates that kept it
    assert (solo > np.median(solo) + 300).sum() >= 10


def test_strong_connectivity_checks_match_scipy():
    from scipy.sparse.csgraph import connected_components

    from arena_flywheel.ratings import _strongly_connected

    rng = np.random.default_rng(0)
    n, r = 9, 400
    iu, ju = np.triu_indices(n, 1)
    fwd = rng.random((r, len(iu))) < rng.uniform(0.05, 0.4, (r, 1))
    bwd = rng.random((r, len(iu))) < rng.uniform(0.05, 0.4, (r, 1))
    got = _strongly_connected(fwd, bwd, iu, ju, n)
    want = []
    for k in range(r):
        adj = np.zeros((n, n), dtype=bool)
        adj[iu, ju] = fwd[k]
        adj[ju, iu] = bwd[k]
        want.append(connected_components(adj, directed=True, connection="strong")[0] == 1)
        c = PairCounts([f"m{i}" for i in range(n)])
        c.wins[:n, :n] = adj  # the point fit's check, on the same graph
        assert mle_exists(c) == want[-1]
    assert 50 < sum(want) < 350 and got.tolist() == want


def test_ties_count_half_a_win_each():
    c = PairCounts()
    c.add("x", "y", "tie", n=10)
    c.add("x", "y", "tie (bothbad)", n=10)
    r = BT.fit(c)
    assert abs(r["x"] - r["y"]) < 1e-9
    # 3 wins, 1 loss, 2 ties (x100) score like 4 wins to 2 losses (x100)
    t = PairCounts()
    t.add("x", "y", "model_a", n=300)
    t.add("x", "y", "model_b", n=100)
    t.add("y", "x", "tie", n=200)
    d = PairCounts()
    d.add("x", "y", "model_a", n=400)
    d.add("x", "y", "model_b", n=200)
    rt, rd = BT.fit(t), BT.fit(d)
    assert abs((rt["x"] - rt["y"]) - (rd["x"] - rd["y"])) < 1e-6
    assert abs((rd["x"] - rd["y"]) - 400 * math.log10(2)) < 0.01  # 2:1 odds = 120.4 Elo


def test_anchor_pins_a_model_and_keeps_differences():
    rows = simulate(STRENGTH, 400, seed=2)
    c = PairCounts.from_battles(rows)
    free = BT.fit(c)
    pinned = BradleyTerry(anchor="c", anchor_rating=1114.0).fit(c)
    assert pinned["c"] == pytest.approx(1114.0)
    assert all(abs((pinned[m] - pinned["c"]) - (free[m] - free["c"])) < 1e-9 for m in free)
    assert BradleyTerry(anchor="c").fit(c)["c"] == pytest.approx(1000.0)  # anchor_rating defaults to init
    # a configured anchor without battles (early in a live arena) falls back to centring, no crash
    ghost = BradleyTerry(anchor="ghost", anchor_rating=1114.0)
    absent = {r.model: r.rating for r in ghost.leaderboard(c, ci="sandwich")}
    assert absent == pytest.approx(free)
    rows_ = BradleyTerry(anchor="c", anchor_rating=1114.0).leaderboard(c, ci="sandwich")
    anchor_row = next(r for r in rows_ if r.model == "c")
    assert anchor_row.lower == pytest.approx(1114.0) and anchor_row.upper == pytest.approx(1114.0)


def test_a_group_anchor_pins_the_mean_of_its_models():
    """anchor=(a, b): the mean of a and b is pinned (iteration tables pin the fixed opponents' mean), the
    differences stay the free fit's, and the CIs are those of r_m - mean(r_a, r_b) per replicate/sandwich."""
    rows = simulate(STRENGTH, 400, seed=2)
    c = PairCounts.from_battles(rows)
    free = BT.fit(c)
    group = BradleyTerry(anchor=("c", "d"), anchor_rating=1114.0)
    pinned = group.fit(c)
    assert (pinned["c"] + pinned["d"]) / 2 == pytest.approx(1114.0)
    assert all(abs((pinned[m] - pinned["c"]) - (free[m] - free["c"])) < 1e-9 for m in free)
    for ci in ("bootstrap", "sandwich"):
        board = {r.model: r for r in group.leaderboard(c, ci=ci, rounds=50)}
        # c - mean(c, d) = (c - d) / 2 = -(d - mean(c, d)): mirror images, so exactly equal widths
        assert board["c"].upper - board["c"].lower == pytest.approx(board["d"].upper - board["d"].lower)
        assert board["c"].upper - board["c"].lower > 0
        assert all(r.lower <= r.rating <= r.upper for r in board.values())
    assert BradleyTerry(anchor=("c",), anchor_rating=1114.0).fit(c) == pytest.approx(
        BradleyTerry(anchor="c", anchor_rating=1114.0).fit(c))
    # a member without battles is left out of the mean; none present: centred
    assert BradleyTerry(anchor=("c", "ghost"), anchor_rating=1114.0).fit(c)["c"] == pytest.approx(1114.0)
    assert BradleyTerry(anchor=("ghost",)).fit(c) == pytest.approx(free)


def test_undefeated_and_winless_models_stay_finite_and_ordered():
    c = PairCounts()
    c.add("champ", "mid", "model_a", n=5)
    c.add("mid", "low", "model_a", n=3)
    c.add("mid", "low", "model_b", n=2)
    c.add("low", "bottom", "model_a", n=4)
    r = BT.fit(c)
    assert all(math.isfinite(v) for v in r.values())
    assert r["champ"] > r["mid"] > r["low"] > r["bottom"]
    # no finite maximum likelihood: the penalised fit, and the output says which models made it needed
    assert not mle_exists(c)
    assert why_regularised(c) == (("bottom", "champ"), "bottom lost every game; champ won every game")
    for ci in ("bootstrap", "sandwich", "none"):
        board = BT.leaderboard(c, ci=ci, rounds=20)
        assert board.regularised == ("bottom", "champ")
        assert board.note.endswith("because bottom lost every game; champ won every game")
        for row in board:
            assert all(math.isfinite(x) for x in (row.rating, row.lower, row.upper))
    # groups: {x, y} beat each other and never lost to the rest; a model that never played the others
    g = PairCounts.from_battles(sparse_arena(models=8, seed=3))
    g.add("x", "y", "model_a")
    g.add("y", "x", "model_a")
    g.add("x", "model-00", "model_a", n=3)
    g.add("y", "model-01", "model_a")
    assert why_regularised(g) == (("x", "y"), "x, y won every game against the other models")
    g.add("model-02", "y", "model_a")
    assert mle_exists(g) and BT.leaderboard(g, ci="none").note == ""
    g.add("p", "q", "tie")
    assert why_regularised(g) == (("p", "q"), "p, q never played the other models")
    lonely = PairCounts(["nobody"]).merge(PairCounts.from_battles(sparse_arena(models=6, seed=4)))
    assert why_regularised(lonely) == (("nobody",), "nobody has no battles")


def test_scale_base_and_init_follow_fastchat_parametrisation():
    c = PairCounts()
    c.add("x", "y", "model_a", n=3000)
    c.add("x", "y", "model_b", n=1000)
    r = BradleyTerry(scale=400, base=10, init=1500).fit(c)
    assert r["x"] + r["y"] == pytest.approx(3000)
    assert r["x"] - r["y"] == pytest.approx(400 * math.log10(3), abs=0.01)
    e = BradleyTerry(scale=1, base=math.e, init=0).fit(c)
    assert e["x"] - e["y"] == pytest.approx(math.log(3), abs=1e-4)


def test_warm_start_gives_the_same_answer():
    c = PairCounts.from_battles(simulate(STRENGTH, 500, seed=3))
    cold = BT.fit(c)
    c.add("e", "a", "model_a")
    warm = BT.fit(c, warm=cold)
    fresh = BT.fit(c)
    assert max(abs(warm[m] - fresh[m]) for m in fresh) < 1e-6
    assert warm["e"] > cold["e"]


def test_rank_rule():
    # b's interval overlaps a's; c's upper bound is below both lower bounds
    assert rank_with_ci([10, 8, 0], [12, 11, 5]) == [1, 1, 3]
    assert rank_with_ci([10, 8, 0, 0], [12, 11, 5, 9]) == [1, 1, 3, 2]


def test_bootstrap_ci_covers_the_truth_in_most_simulations():
    truth = {"a": 1150.0, "b": 1050.0, "c": 1000.0, "d": 900.0}
    centred = {m: v - np.mean(list(truth.values())) + 1000 for m, v in truth.items()}
    cover_b, cover_s, total = 0, 0, 0
    for seed in range(20):
        c = PairCounts.from_battles(simulate(truth, 300, seed=100 + seed))
        boot = BT.bootstrap(c, rounds=100, seed=seed)
        assert boot.shape == (100, 4)
        lo, hi = np.quantile(boot, 0.025, axis=0), np.quantile(boot, 0.975, axis=0)
        iv = BT.sandwich_ci(c)
        for i, m in enumerate(c.models):
            total += 1
            cover_b += lo[i] <= centred[m] <= hi[i]
            cover_s += iv[m][0] <= centred[m] <= iv[m][1]
    assert cover_b / total >= 0.85, cover_b / total
    assert cover_s / total >= 0.85, cover_s / total


@pytest.mark.parametrize("n", [3, 30, 400])
def test_bootstrap_refits_equal_exact_newton_per_replicate(n):
    """The shared-Hessian refits (with their fallback) give each replicate's own maximum, also on sparse
    data where resampling triples a pair's games or separates a model."""
    c = PairCounts.from_battles(simulate(STRENGTH, n, seed=11)) if n > 3 else PairCounts.from_battles(
        [("x", "y", "model_a"), ("x", "z", "tie"), ("y", "z", "model_b")])
    fast, exact = BT.bootstrap(c, rounds=40, seed=3), BT.bootstrap(c, rounds=40, seed=3, exact=True)
    assert np.isfinite(fast).all()
    assert np.abs(fast - exact).max() < 0.01


def test_bootstrap_is_reproducible_and_resamples():
    c = PairCounts.from_battles(simulate(STRENGTH, 300, seed=4))
    b1, b2 = BT.bootstrap(c, rounds=30, seed=7), BT.bootstrap(c, rounds=30, seed=7)
    assert np.array_equal(b1, b2)
    assert not np.array_equal(b1, BT.bootstrap(c, rounds=30, seed=8))
    assert b1.std(axis=0).min() > 1  # the replicates differ


def test_pair_counts_bookkeeping_and_round_trip():
    c = PairCounts()
    c.add("x", "y", "model_a", n=2)
    c.add("y", "x", "model_a")
    c.add("x", "z", "tie")
    c.add("x", "z", "invalid", n=5)
    assert c.total == 4 and c.battles("x") == 4 and c.battles("y") == 3 and c.battles("nobody") == 0
    back = PairCounts.from_dict(json.loads(json.dumps(c.to_dict())))
    assert back.models == c.models and np.array_equal(back.W, c.W) and np.array_equal(back.T, c.T)
    other = PairCounts()
    other.add("z", "w", "model_b")
    other.add("x", "y", "model_b")
    merged = c.copy().merge(other)
    assert merged.total == 6 and merged.battles("w") == 1 and c.total == 4
    assert merged.W[merged.index["y"], merged.index["x"]] == 2
    rows = [("p", "q", "model_a"), ("q", "r", "tie"), ("r", "p", "model_b")]
    arr = PairCounts.from_arrays(["p", "q", "r"], [0, 1, 2], [1, 2, 0], [0, 1, 2])
    ref = PairCounts.from_battles(rows)
    assert np.array_equal(arr.W, ref.W) and np.array_equal(arr.T, ref.T)


def test_online_elo_matches_fastchat_update():
    e = OnlineElo()
    e.update("a", "b", "model_a")
    assert e.ratings == {"a": 1002.0, "b": 998.0}
    e.update("a", "b", "tie")
    ea = 1 / (1 + 10 ** ((998 - 1002) / 400))
    assert e.ratings["a"] == pytest.approx(1002 + 4 * (0.5 - ea))
    e.update("a", "b", "invalid")
    back = OnlineElo.from_dict(json.loads(json.dumps(e.to_dict())))
    assert back.ratings == e.ratings and back.k == 4


def test_leaderboard_rows_and_win_rate_vs_baseline():
    c = PairCounts.from_battles(simulate(STRENGTH, 800, seed=5))
    rows = BT.leaderboard(c, ci="bootstrap", rounds=50)
    fit = BT.fit(c)
    assert [r.model for r in rows] == sorted(fit, key=fit.get, reverse=True)
    assert rows[0].model == "a" and rows[-1].model == "e"
    assert rows[0].rank == 1 and rows[-1].rank > 1
    assert [r.rank for r in rows] == rank_with_ci([r.lower for r in rows], [r.upper for r in rows])
    for r in rows:
        assert r.lower <= r.rating <= r.upper
        assert r.battles == r.wins + r.ties + r.losses == c.battles(r.model)
        assert r.win_rate == pytest.approx((r.wins + r.ties / 2) / r.battles)
    wr = BT.win_rate_vs_baseline(c, "c")
    assert wr["c"]["predicted"] == pytest.approx(0.5) and wr["c"]["observed"] is None
    assert wr["a"]["predicted"] > 0.6 and wr["e"]["predicted"] < 0.4
    assert abs(wr["a"]["observed"] - wr["a"]["predicted"]) < 0.15


def test_bradley_terry_from_config():
    from arena_flywheel.config import load_config

    cfg = load_config(env={}, overrides={"ratings.bootstrap_rounds": 7, "ratings.anchor_model": "c",
                                         "ratings.anchor_rating": 1114.0})
    bt = BradleyTerry.from_config(cfg.ratings)
    assert bt.rounds == 7 and bt.anchor == "c" and bt.anchor_rating == 1114.0
    rows = bt.leaderboard(PairCounts.from_battles(simulate(STRENGTH, 200, seed=6)), ci="none")
    assert next(r for r in rows if r.model == "c").rating == pytest.approx(1114.0)


# ----------------------------------------------------------------------------------------------- CLI

def _write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_cli_jsonl_battles_and_verdicts(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rows = simulate(STRENGTH, 300, seed=8)
    f = tmp_path / "battles.jsonl"
    _write_jsonl(f, [{"model_a": a, "model_b": b, "winner": w} for a, b, w in rows] +
                 [{"model_a": "a", "model_b": "b", "winner": "invalid"}])
    assert main(["leaderboard", "--battles", str(f), "--format", "json", "--rounds", "20"]) == 0
    out = json.loads(capsys.readouterr().out)
    expect = BT.fit(PairCounts.from_battles(rows))
    assert [r["model"] for r in out] == sorted(expect, key=expect.get, reverse=True)
    assert all(abs(r["rating"] - expect[r["model"]]) < 1e-6 for r in out)
    assert sum(r["battles"] for r in out) == 2 * len(rows)
    # verdict rows: competitors + scores, winner from scores (equal scores tie); split filter
    v = tmp_path / "verdicts.jsonl"
    score = {"model_a": (8, 3), "model_b": (2, 9), "tie": (5, 5)}
    _write_jsonl(v, [{"competitor_a": a, "competitor_b": b, "model_a": "x", "model_b": "y", "split": "eval",
                      "score_a": score[w][0], "score_b": score[w][1]} for a, b, w in rows] +
                 [{"competitor_a": "a", "competitor_b": "zz", "score_a": 1, "score_b": 0, "split": "train"}])
    assert main(["leaderboard", "--battles", str(v), "--split", "eval", "--format", "json", "--ci", "none"]) == 0
    out2 = json.loads(capsys.readouterr().out)
    assert {r["model"]: r["rating"] for r in out2} == pytest.approx(expect, abs=1e-6)
    # markdown with an anchor
    assert main(["leaderboard", "--battles", str(f), "--anchor", "c", "--anchor-rating", "1114",
                 "--ci", "sandwich"]) == 0
    md = capsys.readouterr().out
    assert md.startswith("| rank | model | rating |") and "| c | 1114.0 |" in md


def test_cli_csv(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rows = simulate(STRENGTH, 200, seed=9)
    f = tmp_path / "battles.csv"
    with f.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["model_a", "model_b", "winner"])
        w.writerows(rows)
    assert main(["leaderboard", "--battles", str(f), "--format", "csv", "--rounds", "10"]) == 0
    out = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert len(out) == 5 and out[0]["rank"] == "1" and set(out[0]) >= {"model", "rating", "lower", "upper"}
    expect = BT.fit(PairCounts.from_battles(rows))
    assert all(abs(float(r["rating"]) - expect[r["model"]]) < 1e-3 for r in out)


@pytest.mark.parametrize("content, needle", [
    ('{"model_a": "x", "model_b": "y", "winner": "model_a"}\n{not json\n', ":2: invalid JSON"),
    ('{"model_a": "x", "model_b": "y", "winner": "draw"}\n', "winner 'draw'"),
    ('{"model_a": "x", "winner": "model_a"}\n', "needs model_a and model_b"),
    ('{"model_a": "x", "model_b": "y"}\n', "needs a winner or score_a and score_b"),
    ("a,b,c\n1,2,3\n", "no CSV header"),
    ("", "empty file"),
    ('{"model_a": "x", "model_b": "y", "winner": "invalid"}\n', "no rated battles"),
])
def test_cli_bad_files_give_one_line_errors(tmp_path, monkeypatch, capsys, content, needle):
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    assert main(["leaderboard", "--battles", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_cli_missing_file_and_unknown_anchor(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["leaderboard", "--battles", str(tmp_path / "nope.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
    f = tmp_path / "b.jsonl"
    _write_jsonl(f, [{"model_a": "x", "model_b": "y", "winner": "model_a"}])
    assert main(["leaderboard", "--battles", str(f), "--anchor", "ghost"]) == 2
    assert "ghost" in capsys.readouterr().err


def test_cli_says_when_and_why_ratings_are_regularised(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "b.jsonl"
    rows = [("x", "y", "model_a"), ("z", "y", "model_a"), ("x", "z", "tie")]
    _write_jsonl(f, [{"model_a": a, "model_b": b, "winner": w} for a, b, w in rows])
    assert main(["leaderboard", "--battles", str(f), "--format", "json", "--rounds", "10"]) == 0
    out = capsys.readouterr()
    assert [r["model"] for r in json.loads(out.out)][0] == "x"  # stdout stays valid JSON
    assert out.err.strip() == "note: ratings regularised (L2 prior, no finite maximum-likelihood fit) " \
                              "because y lost every game"
    _write_jsonl(f, [{"model_a": a, "model_b": b, "winner": w} for a, b, w in rows + [("y", "x", "model_a")]])
    assert main(["leaderboard", "--battles", str(f), "--rounds", "10"]) == 0
    assert capsys.readouterr().err == ""  # the exact fit: nothing to say


def test_ledger_verdicts_on_real_sqlite(tmp_path):
    """The leaderboard's ledger reader: verdicts of one split, in order; a missing or table-less ledger is a
    one-line error, and a missing one is not created."""
    import sqlalchemy as sa

    from arena_cli.commands.leaderboard import ledger_verdicts
    from arena_flywheel.events import JudgeInfo, Verdict
    from arena_flywheel.store import LedgerStore

    rows = simulate(STRENGTH, 120, seed=10)
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    judge = JudgeInfo(backend="reference", template_id="t")
    with LedgerStore(url) as store:
        store.write([Verdict(battle_id=f"bat-{i}", instruction_id=f"ins-{i}", split="eval" if i % 4 else "train",
                             competitor_a=a, competitor_b=b, model_a=a, model_b=b, winner=w, judge=judge,
                             created_at=1000.0 + i) for i, (a, b, w) in enumerate(rows)])
    got = ledger_verdicts(url, "eval")
    assert got == [r for i, r in enumerate(rows) if i % 4]
    sa.create_engine(f"sqlite:///{tmp_path / 'empty.db'}").connect().close()
    with pytest.raises(Exception, match="cannot read the ledger"):
        ledger_verdicts(f"sqlite:///{tmp_path / 'empty.db'}", "eval")
    with pytest.raises(Exception, match="no such ledger"):
        ledger_verdicts(f"sqlite:///{tmp_path / 'absent.db'}", "eval")
    assert not (tmp_path / "absent.db").exists()


def test_style_control_removes_a_length_bias():
    """A judge that prefers longer answers inflates the verbose model; the style covariate takes it back."""
    rng = np.random.default_rng(12)
    truth = {"a": 1100.0, "b": 1000.0, "verbose": 1000.0, "c": 900.0}
    length = {"a": 300, "b": 300, "verbose": 900, "c": 300}
    models = list(truth)
    ma, mb, win, la, lb = [], [], [], [], []
    for _ in range(4000):
        i, j = rng.choice(4, 2, replace=False)
        a, b = models[i], models[j]
        xa, xb = rng.normal(length[a], 50), rng.normal(length[b], 50)
        logit = (truth[a] - truth[b]) * LN10 / 400 + 1.5 * (xa - xb) / (xa + xb)
        ma.append(a), mb.append(b), la.append([xa]), lb.append([xb])
        win.append("model_a" if rng.random() < 1 / (1 + math.exp(-logit)) else "model_b")
    plain = BT.fit(PairCounts.from_battles(zip(ma, mb, win)))
    styled, coef = StyleControlledBT(anchor="b", anchor_rating=1000.0).fit(ma, mb, win, la, lb)
    assert plain["verbose"] - plain["b"] > 40  # the bias is there
    assert abs(styled["verbose"] - 1000) < 30 and abs(styled["a"] - 1100) < 30 and abs(styled["c"] - 900) < 30
    assert coef[0] > 0


def test_the_same_battles_in_any_order_give_the_same_leaderboard():
    """Bootstrap CIs do not depend on the order the battles were read in (a ledger, a topic, a file)."""
    import random

    from arena_flywheel.config import RatingsConfig

    rows = simulate(STRENGTH, 300, seed=8)
    shuffled = list(rows)
    random.Random(1).shuffle(shuffled)
    first = [r.as_dict() for r in BradleyTerry.from_config(RatingsConfig()).leaderboard_of_battles(rows)]
    again = [r.as_dict() for r in BradleyTerry.from_config(RatingsConfig()).leaderboard_of_battles(shuffled)]
    assert first == again
    assert [r.as_dict() for r in BT.leaderboard(PairCounts.from_battles(shuffled))] == \
        [r.as_dict() for r in BT.leaderboard(PairCounts.from_battles(rows))]  # the stream's refits too
    c = PairCounts.from_battles(shuffled)
    assert c.sorted().models == sorted(c.models) and BT.fit(c.sorted()) == pytest.approx(BT.fit(c))
