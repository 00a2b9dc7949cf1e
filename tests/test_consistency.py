
import pytest

from arena_flywheel.errors import InputError as UsageError
from arena_flywheel.consistency import compute, load_board
from conftest import shared_data


def b(score, lo, hi, samples=None):
    return {"score": score, "lower": lo, "upper": hi, "samples": samples}


def test_hand_computed_three_models():
    bench = {"a": b(3, 2.5, 3.5), "b": b(2, 1.5, 2.5), "c": b(1, 1.8, 2.2)}
    ref = {"A": b(30, 29, 31), "B": b(10, 9, 11), "C": b(20, 19, 21)}
    r = compute(bench, ref, {"a": "A", "b": "B", "c": "C"})
    # separable in bench: (a,b)? 2.5 > 2.5 no; (a,c) yes; (b,c) no -> 1/3
    assert r["separability"] == pytest.approx(1 / 3)
    # (a,c): ref A > C separated, same order -> +1
    assert r["agreement_with_confidence"] == 1.0 and r["strict_agreement"] == 1.0
    # ranks bench a>b>c, ref A>C>B: spearman 1 - 6*2/(3*8) = 0.5, kendall (2-1)/3
    assert r["spearman"] == pytest.approx(0.5)
    assert r["kendall_tau"] == pytest.approx(1 / 3)


def test_disagreement_and_brier_from_samples():
    bench = {"a": b(2, 1.9, 2.1, [2, 2, 2, 0]), "b": b(1, 0.9, 1.1, [1, 1, 1, 1])}
    ref = {"A": b(1, 0.9, 1.1), "B": b(2, 1.9, 2.1)}
    r = compute(bench, ref, {"a": "A", "b": "B"})
    assert r["agreement_with_confidence"] == -1.0 and r["strict_agreement"] == 0.0
    # p(a>b) = 3/4, truth 0 -> brier 0.5625, log-loss -ln(0.25)
    assert r["brier"] == pytest.approx(0.5625)
    assert r["log_loss"] == pytest.approx(1.3862944, rel=1e-5)


def test_ties_in_ranks():
    bench = {"a": b(1, 0, 2), "b": b(1, 0, 2)}
    ref = {"A": b(5, 4, 6), "B": b(5, 4, 6)}
    r = compute(bench, ref, {"a": "A", "b": "B"})
    assert r["separability"] == 0.0 and r["spearman"] is None
    assert r["brier"] == pytest.approx(0.0)


def test_missing_models_named():
    with pytest.raises(UsageError, match="not in benchmark: zz"):
        compute({"a": b(1, 1, 1)}, {"A": b(1, 1, 1)}, {"a": "A", "zz": "A"})


def test_real_reference_against_itself(tmp_path):
    path = shared_data("reference_leaderboards/lmsys_arena_elo_results_20240329_leaderboard.csv")
    ref = load_board(path, ("rating",))
    top = list(ref)[:10]
    r = compute(ref, ref, {m: m for m in top})
    assert r["spearman"] == pytest.approx(1.0) and r["agreement_with_confidence"] == 1.0
    assert 0 < r["separability"] < 1
