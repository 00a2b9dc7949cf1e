"""`arena consistency` with arena-hard-auto's definitions (issue 20). Every expected number below is worked out
by hand from the definitions in arena_flywheel/consistency.py (docs/testset.md); the normal CDF values are
table values: Phi(1) = 0.8413447460685429, Phi(1/sqrt 3) = 0.7181485691746134, Phi(sqrt 2) =
0.9213503964748575, Phi(2) = 0.9772498680518208."""
import json
import math

import pytest

from arena_cli.main import main
from arena_flywheel.consistency import (GROUPS, Z95, agreement_separation, compute, load_board, prob_above,
                                        separation)
from arena_flywheel.errors import InputError
from conftest import shared_data

PHI_1, PHI_INV_SQRT3, PHI_SQRT2, PHI_2 = 0.8413447460685429, 0.7181485691746134, 0.9213503964748575, 0.9772498680518208
REFERENCE = "reference_leaderboards/lmsys_arena_elo_results_20240329_leaderboard.csv"


def b(score, lo, hi, samples=None):
    return {"score": score, "lower": lo, "upper": hi, "samples": samples}


def test_separation_touching_points_and_ties():
    assert separation(b(0, 2, 3), b(0, 1, 2)) == 1    # touching at 2: separated (arena-hard-auto's notebook)
    assert separation(b(0, 1, 2), b(0, 2, 3)) == -1
    assert separation(b(0, 1, 2.5), b(0, 2, 3)) == 0  # share [2, 2.5]
    assert separation(b(5, 5, 5), b(5, 5, 5)) == 0    # two equal points: a tie, not separated
    assert separation(b(5, 5, 5), b(5, 3, 7)) == 0    # a point inside an interval overlaps it
    assert separation(b(5, 5, 5), b(6, 6, 6)) == -1   # two different points (a board without CIs)


def test_agreement_separation_is_the_notebook_agreement_cells():
    """Hand cases of the agreement cell's test (max(0, min(upper) - max(lower)) > 0 is an overlap; else the
    (lower, upper) tuples order the pair), where it differs from separation()."""
    assert agreement_separation(b(5, 5, 5), b(5, 3, 7)) == (True, 1)    # a point inside: separated, (5,5) > (3,7)
    assert separation(b(5, 5, 5), b(5, 3, 7)) == 0                      # ... which separability calls overlap
    assert agreement_separation(b(5, 3, 7), b(5, 5, 5)) == (True, -1)
    assert agreement_separation(b(0, 2, 3), b(0, 1, 2)) == (True, 1)    # touching: separated, as in separation()
    assert agreement_separation(b(0, 1, 2.5), b(0, 2, 3)) == (False, 0)  # share [2, 2.5]
    assert agreement_separation(b(5, 5, 5), b(5, 5, 5)) == (True, 0)    # equal points: separated, in no order
    # two models: the reference's anchor point sits inside the other's CI, the benchmark separates them in
    # the tuple order -> that pair counts, and scores 1; in the reverse order it scores 0; overlapping, 0.5
    ref = {"x": b(1114, 1114, 1114), "y": b(1110, 1100, 1120)}
    for bx, by, want in ((b(60, 55, 65), b(40, 35, 45), 1.0), (b(40, 35, 45), b(60, 55, 65), 0.0),
                         (b(50, 45, 55), b(48, 44, 52), 0.5)):
        r = compute({"x": bx, "y": by}, ref, {"x": "x", "y": "y"})
        assert (r["reference_separable_pairs"], r["agreement_with_confidence"]) == (1, want)
    # equal reference points: separated in no order, so even a benchmark that separates them scores 0
    r = compute({"x": b(60, 55, 65), "y": b(40, 35, 45)}, {"x": b(9, 9, 9), "y": b(9, 9, 9)}, {"x": "x", "y": "y"})
    assert (r["reference_separable_pairs"], r["agreement_with_confidence"]) == (1, 0.0)


def test_four_models_agreement_separability_and_the_paper_triple():
    #            score  95% CI           reference  score  95% CI
    bench = {"a": b(10, 9, 11), "b": b(8, 7, 9), "c": b(7.5, 6, 8.5), "d": b(12, 11.5, 12.5)}
    ref = {"A": b(100, 95, 105), "B": b(90, 80, 94), "C": b(70, 60, 75), "D": b(85, 82, 86)}
    r = compute(bench, ref, {"a": "A", "b": "B", "c": "C", "d": "D"})
    # benchmark: a>b (touch at 9), a>c, d>a, d>b, d>c separated; b,c overlap -> separability 5/6
    assert r["separability"] == pytest.approx(5 / 6)
    # reference separates A>B, A>C, A>D, B>C, D>C (B,D overlap: [80,94] and [82,86]) -> 5 pairs:
    # AB 1 (a>b), AC 1 (a>c), AD 0 (benchmark d>a: opposite), BC 0.5 (b,c overlap), CD 1 (d>c) -> 3.5 / 5
    assert r["reference_separable_pairs"] == 5
    assert r["agreement_with_confidence"] == pytest.approx(0.7)
    # (the old definition, over benchmark-separable pairs with +1/0/-1, gave (1+1-1+0+1)/5 = 0.4)
    # point scores, same strict order on both boards: ab, ac, bc, cd yes; ad, bd no -> 4/6
    assert r["strict_agreement"] == pytest.approx(4 / 6)
    # ranks of a,b,c,d: benchmark (2,3,4,1), reference (1,2,4,3): sum d^2 = 6, rho = 1 - 6*6/(4*15) = 0.4;
    # 4 concordant and 2 discordant pairs: tau = 2/6
    assert r["spearman"] == pytest.approx(0.4) and r["kendall_tau"] == pytest.approx(1 / 3)
    # the Arena Learning paper's triple and its mean
    assert r["arena_learning_spearman"] == pytest.approx(0.4)
    assert r["arena_learning_human_agreement_95ci"] == pytest.approx(0.7)
    assert r["arena_learning_differentiation_95ci"] == pytest.approx(5 / 6)
    assert r["arena_learning_average_consistency"] == pytest.approx((0.4 + 0.7 + 5 / 6) / 3)


def test_brier_from_the_normal_approximation_of_bootstrap_samples():
    # a: mean 2, population variance 1; b: mean 0, variance 0; c: mean 0, variance 1
    bench = {"a": b(2, 1, 3, [1, 3]), "b": b(0, 0, 0, [0, 0]), "c": b(0, -1, 1, [-1, 1, -1, 1])}
    # the reference separates only A>B; C overlaps both ([1.4, 2.6] with [2.5, 3.5] and [0.5, 1.5])
    ref = {"A": b(3, 2.5, 3.5), "B": b(1, 0.5, 1.5), "C": b(2, 1.4, 2.6)}
    r = compute(bench, ref, {"a": "A", "b": "B", "c": "C"})
    # P(a>b) = Phi(2/1), P(a>c) = Phi(2/sqrt 2), P(b>c) = Phi(0) = 0.5; labels 1, 1, 0 (A>B, A>C, C>B)
    terms = [(PHI_2 - 1) ** 2, (PHI_SQRT2 - 1) ** 2, (0.5 - 0) ** 2]
    assert r["brier"] == pytest.approx(sum(terms) / 3, rel=1e-9)  # = 0.085568...
    assert r["brier_reference_separable"] == pytest.approx(terms[0], rel=1e-9)  # A-B only
    assert r["log_loss"] == pytest.approx(-(math.log(PHI_2) + math.log(PHI_SQRT2) + math.log(0.5)) / 3, rel=1e-9)
    assert r["reference_separable_pairs"] == 1
    # a (lower 1) vs b (upper 0) and vs c (upper 1) are benchmark-separated above: A>B agrees -> 1
    assert r["agreement_with_confidence"] == 1.0


def test_disagreement_and_brier_from_samples():
    # a: samples [2,2,2,0] -> mean 1.5, variance (3*0.25 + 2.25)/4 = 0.75; b: [1,1,1,1] -> mean 1, variance 0
    bench = {"a": b(2, 1.9, 2.1, [2, 2, 2, 0]), "b": b(1, 0.9, 1.1, [1, 1, 1, 1])}
    ref = {"A": b(1, 0.9, 1.1), "B": b(2, 1.9, 2.1)}
    r = compute(bench, ref, {"a": "A", "b": "B"})
    # both boards separate the pair, in opposite orders: agreement 0 (not -1), strict 0
    assert r["agreement_with_confidence"] == 0.0 and r["strict_agreement"] == 0.0
    # P(a>b) = Phi(0.5 / sqrt 0.75) = Phi(1/sqrt 3); the reference says b>a (y = 0)
    assert r["brier"] == pytest.approx(PHI_INV_SQRT3 ** 2, rel=1e-9)
    assert r["log_loss"] == pytest.approx(-math.log(1 - PHI_INV_SQRT3), rel=1e-9)


def test_without_samples_sigma_comes_from_the_interval():
    a, z = b(1, 1 - Z95, 1 + Z95), b(0, 0, 0)  # a's 95% CI is +-1.96 sigma with sigma = 1; z is a point
    assert prob_above(a, z) == pytest.approx(PHI_1, rel=1e-12)
    assert prob_above(b(2, 2, 2), b(1, 1, 1)) == 1.0 and prob_above(b(1, 1, 1), b(1, 1, 1)) == 0.5


def test_ties_in_the_reference():
    bench = {"a": b(1, 0, 2), "b": b(1, 0, 2)}
    ref = {"A": b(5, 4, 6), "B": b(5, 4, 6)}
    r = compute(bench, ref, {"a": "A", "b": "B"})
    assert r["separability"] == 0.0 and r["spearman"] is None and r["strict_agreement"] == 0.0
    assert r["brier"] == pytest.approx(0.0)  # P = 0.5 against y = 0.5 on a reference tie
    assert r["agreement_with_confidence"] is None and r["arena_learning_average_consistency"] is None


def test_missing_models_named():
    with pytest.raises(InputError, match="not in benchmark: zz"):
        compute({"a": b(1, 1, 1)}, {"A": b(1, 1, 1)}, {"a": "A", "zz": "A"})
    with pytest.raises(InputError, match="must map a name to a name"):
        compute({"a": b(1, 1, 1)}, {"A": b(1, 1, 1)}, {"a": ["A"]})


def test_bounds_from_bootstrap_percentiles_or_the_point(tmp_path):
    rows = [{"model": "s", "score": 50, "results": list(range(101))},  # percentiles of 0..100 are p itself
            {"model": "p", "score": 7},
            {"model": "given", "score": 1, "lower": 0.5, "upper": 1.5, "results": list(range(101))}]
    (tmp_path / "board.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    board = load_board(tmp_path / "board.jsonl")
    assert (board["s"]["lower"], board["s"]["upper"]) == (2.5, 97.5)
    assert (board["p"]["lower"], board["p"]["upper"], board["p"]["samples"]) == (7, 7, None)
    assert (board["given"]["lower"], board["given"]["upper"]) == (0.5, 1.5)  # a row's own bounds win
    (tmp_path / "bad.csv").write_text("model,score,lower,upper\nx,1,2,0\n")
    with pytest.raises(InputError, match=r"bad\.csv:2: lower 2 is above upper 0"):
        load_board(tmp_path / "bad.csv")


def test_cli_json_and_tables(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bench.csv").write_text("model,score,lower,upper\na,10,9,11\nb,8,7,9\nc,7.5,6,8.5\nd,12,11.5,12.5\n")
    (tmp_path / "ref.csv").write_text("model,rating,rating_q025,rating_q975\nA,100,95,105\nB,90,80,94\n"
                                      "C,70,60,75\nD,85,82,86\n")
    (tmp_path / "map.json").write_text(json.dumps({"a": "A", "b": "B", "c": "C", "d": "D"}))
    args = ["consistency", "--benchmark", "bench.csv", "--reference", "ref.csv", "--name-map", "map.json"]
    assert main(args + ["--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {k for keys in GROUPS.values() for k in keys}  # every key is in one table
    assert out["agreement_with_confidence"] == pytest.approx(0.7)  # the four-model case above, from files
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "arena-hard-auto" in table and "Arena Learning" in table and "│ separability" in table
    (tmp_path / "map.json").write_text(json.dumps({"a": 1, "b": "B"}))
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("arena consistency:") and "\n" not in err and "name map" in err


# The 20 models of arena-hard-auto's paper table (notebook/benchmark_statistics.ipynb, "Benchmark Performance on
# shared 20 models"): score and 95% CI of each from lmarena/arena-hard-auto@c39d1b7 notebook/
# bootstrap_stats_arena_hard.jsonl (Apache-2.0; the bootstrap samples are left out), names mapped by its
# notebook/arena_to_arena_hard.json.
ARENA_HARD_20 = [  # (arena-hard name, Chatbot Arena name, score, lower, upper)
    ("claude-3-opus-20240229", "claude-3-opus-20240229", 60.36, 56.369749999999996, 64.3005),
    ("gpt-4-0314", "gpt-4-0314", 50, 50, 50),  # the baseline: a point
    ("claude-3-sonnet-20240229", "claude-3-sonnet-20240229", 46.8, 42.819, 50.92025),
    ("gpt-4-0613", "gpt-4-0613", 37.9, 34.299, 41.8),
    ("mistral-large-2402", "mistral-large-2402", 37.71, 33.74975, 41.56),
    ("Qwen1.5-72B-Chat", "qwen1.5-72b-chat", 36.12, 32.3195, 39.8005),
    ("mistral-medium", "mistral-medium", 31.9, 28.429, 36.0805),
    ("gpt-3.5-turbo-0613", "gpt-3.5-turbo-0613", 24.82, 21.589, 27.97025),
    ("Mixtral-8x7B-Instruct-v0.1", "mixtral-8x7b-instruct-v0.1", 23.4, 20.25975, 26.800250000000002),
    ("Yi-34B-Chat", "yi-34b-chat", 23.15, 20.189, 26.300250000000002),
    ("claude-2.1", "claude-2.1", 22.77, 19.65, 26.011),
    ("gpt-3.5-turbo-1106", "gpt-3.5-turbo-1106", 18.87, 16.279500000000002, 21.80075),
    ("gemini-1.0-pro", "gemini-pro", 17.8, 15.09, 20.490499999999997),
    ("command-r", "command-r", 17.02, 14.56925, 19.80075),
    ("Starling-LM-7B-alpha", "starling-lm-7b-alpha", 12.8, 10.83975, 15.06075),
    ("mistral-7b-instruct", "mistral-7b-instruct-v0.2", 12.57, 10.33, 15.04),
    ("Llama-2-70b-chat-hf", "llama-2-70b-chat", 11.55, 9.54925, 13.72025),
    ("gemma-7b-it", "gemma-7b-it", 7.47, 5.9195, 9.370499999999998),
    ("Llama-2-7b-chat-hf", "llama-2-7b-chat", 4.59, 3.48, 5.8302499999999995),
    ("gemma-2b-it", "gemma-2b-it", 3.0, 2.20975, 3.94),
]


def test_arena_hard_auto_published_table():
    """The paper's Arena-Hard-Auto row against the Chatbot Arena of 2024-03-29: separability 84.21%
    (160/190), Spearman 0.9323, strict agreement 0.9158 (174/190) and agreement with confidence 160/177 =
    0.903954802259887, all as the notebook printed them. The last needs the agreement cell's own overlap test:
    a point interval inside another is separated there (the reference's anchor mixtral-8x7b-instruct-v0.1, CI
    [1114, 1114], against gpt-3.5-turbo-0613, gemini-pro and claude-2.1: 3 more reference-separable pairs; the
    benchmark's baseline gpt-4-0314, the point 50, against claude-3-sonnet); counted as overlapping, as the
    separability cell does, it was 159/174 = 0.9138."""
    ref = load_board(shared_data(REFERENCE))
    bench = {m: b(s, lo, hi) for m, _, s, lo, hi in ARENA_HARD_20}
    r = compute(bench, ref, {m: arena for m, arena, *_ in ARENA_HARD_20})
    assert r["separability"] == pytest.approx(160 / 190)
    assert r["spearman"] == pytest.approx(0.932330827067669)
    assert r["strict_agreement"] == pytest.approx(0.9157894736842105)
    assert (r["reference_separable_pairs"], r["agreement_with_confidence"]) == (177, pytest.approx(160 / 177))
    assert r["agreement_with_confidence"] == pytest.approx(0.903954802259887, abs=1e-15)


def test_real_reference_against_itself():
    ref = load_board(shared_data(REFERENCE), ("rating",))
    top = list(ref)[:10]
    r = compute(ref, ref, {m: m for m in top})
    assert r["spearman"] == pytest.approx(1.0) and r["agreement_with_confidence"] == 1.0
    assert 0 < r["separability"] < 1 and r["strict_agreement"] == 1.0
