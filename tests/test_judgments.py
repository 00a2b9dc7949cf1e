"""Benchmark judgment files through `arena leaderboard` (issue 20): AlpacaEval annotations (fractional preferences,
AlpacaEval's win rate and standard error) and arena-hard-auto judgments (pairwise games with strong verdicts
weighted 3, single-answer grades), on small files written in the published shapes with hand-computed numbers;
and Bradley-Terry on fractional outcomes against a fit written from the definition."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.optimize import minimize

from arena_cli.main import main
from arena_flywheel.errors import InputError
from arena_flywheel.judgments import detect, read_alpacaeval, read_arena_hard
from arena_flywheel.ratings import BradleyTerry, PairCounts

BASE = "gpt4_turbo"


def _ae(generator: str, preference, out1: str = "Paris.", out2: str = "The capital is **Paris**.") -> dict:
    return {"instruction": "Capital of France?", "output_1": out1, "output_2": out2, "generator_1": BASE,
            "generator_2": generator, "preference": preference, "dataset": "helpful_base"}


# tiny: preferences 1.8, 1.0, 1.5 -> per-example scores 0.8, 0, 0.5: win rate 0.4333, SE sd(ddof 1) / sqrt(3)
# small: 1.2 and 0 (a draw, read as 1.5) -> 0.2, 0.5; a null preference is skipped, as AlpacaEval drops it
ANNOTATIONS = [_ae("tiny", 1.8), _ae("tiny", 1.0), _ae("tiny", 1.5), _ae("small", 1.2), _ae("small", 0),
               _ae("small", None)]


def _run(capsys, *argv):
    code = main(["leaderboard", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_alpacaeval_win_rate_and_standard_error_by_hand(tmp_path, capsys):
    f = tmp_path / "annotations.json"
    f.write_text(json.dumps(ANNOTATIONS, indent=1))
    assert detect(str(f)) == "alpacaeval"
    code, out, err = _run(capsys, "--battles", str(f), "--format", "json", "--rounds", "20")
    assert code == 0
    rows = {r["model"]: r for r in json.loads(out)}
    assert rows["tiny"]["win_rate"] == pytest.approx(1.3 / 3)
    tiny = np.array([0.8, 0.0, 0.5])
    assert rows["tiny"]["win_rate_se"] == pytest.approx(tiny.std(ddof=1) / math.sqrt(3))
    assert rows["tiny"]["win_rate_se"] == pytest.approx(0.2333333333)
    assert rows["small"]["win_rate"] == pytest.approx(0.35) and rows["small"]["win_rate_se"] == pytest.approx(0.15)
    assert rows["tiny"]["battles"] == 3 and rows["small"]["battles"] == 2 and rows[BASE]["battles"] == 5
    # AlpacaEval's avg_length: characters of the model's outputs
    assert rows["tiny"]["avg_len"] == pytest.approx(len("The capital is **Paris**."))
    assert "1 record(s) without a verdict skipped" in err


def test_alpacaeval_bad_preference_is_one_line(tmp_path, capsys):
    f = tmp_path / "annotations.json"
    f.write_text(json.dumps([_ae("tiny", 1.5), _ae("tiny", 2.5)]))
    code, out, err = _run(capsys, "--battles", str(f), "--input-format", "alpacaeval")
    assert code == 2 and out == ""
    assert err.strip() == (f"arena leaderboard: {f}[1]: preference 2.5 is not in [1, 2] (1: output_1 preferred, "
                           "2: output_2 preferred; 0 or 1.5: a draw)")


def _judgment(model: str, qid: str, g1, g2, category: str = "hard_prompt") -> dict:
    return {"question_id": qid, "model": model, "judge": "gpt-4-1106-preview", "category": category,
            "games": [{"user_prompt": "...", "judgment": f"... [[{g1}]]", "score": g1},
                      {"user_prompt": "...", "judgment": f"... [[{g2}]]", "score": g2}]}


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_arena_hard_pairwise_weights_strong_verdicts_by_hand(tmp_path, capsys):
    """Game 1: A is the baseline; game 2: swapped. Model m1's scores: q1 A>>B (baseline, x3) and B>A in game 2
    (baseline) -> 0,0,0,0; q2 B>A (m1) and A=B -> 1, 0.5; q3 B>>A and A>>B (m1 both, x3 each) -> six 1s; q4 has a
    game without a label and is dropped, as show_result drops it: 12 battles, score 7.5, observed 62.5%."""
    d = tmp_path / "gpt-4-1106-preview"
    d.mkdir()
    _write_jsonl(d / "m1.jsonl", [_judgment("m1", "q1", "A>>B", "B>A"), _judgment("m1", "q2", "B>A", "A=B"),
                                  _judgment("m1", "q3", "B>>A", "A>>B"), _judgment("m1", "q4", None, "A>B")])
    _write_jsonl(d / "m2.jsonl", [_judgment("org/m2", "q1", "A=B", "A=B")])  # a model path is dropped
    judged = read_arena_hard(str(d), "gpt-4-0314")
    counts = judged.counts()
    m1, base = counts.index["m1"], counts.index["gpt-4-0314"]
    assert counts.battles("m1") == 12 and judged.skipped == 1
    assert counts.W[m1, base] + counts.T[m1, base] / 2 == pytest.approx(7.5)
    assert counts.battles("m2") == 2 and counts.T[counts.index["m2"], base] == 2
    code, out, _ = _run(capsys, "--battles", str(d), "--baseline", "gpt-4-0314", "--format", "json",
                          "--rounds", "20")
    rows = {r["model"]: r for r in json.loads(out)}
    assert code == 0 and rows["m1"]["baseline_observed"] == pytest.approx(0.625)
    assert rows["m1"]["baseline_battles"] == 12 and rows["m2"]["baseline_observed"] == 0.5
    # the same lines as one file; the category filter keeps them all
    f = _write_jsonl(tmp_path / "m1.jsonl", [_judgment("m1", "q1", "A>>B", "B>A")])
    assert detect(str(f)) == "arena-hard"
    code, out, _ = _run(capsys, "--battles", str(f), "--baseline", "gpt-4-0314", "--category", "hard_prompt",
                        "--format", "json", "--rounds", "0")
    assert code == 0 and {r["model"]: r for r in json.loads(out)}["m1"]["battles"] == 4


def test_arena_hard_pairwise_needs_the_baseline(tmp_path, capsys):
    f = _write_jsonl(tmp_path / "m1.jsonl", [_judgment("m1", "q1", "A>B", "B>A")])
    code, _, err = _run(capsys, "--battles", str(f))
    assert code == 2 and err.strip() == (
        f"arena leaderboard: {f}: arena-hard-auto's pairwise judgments do not name the baseline they were "
        "judged against: pass --baseline MODEL (gpt-4-0314 for arena-hard-v0.1)")
    f = _write_jsonl(tmp_path / "m2.jsonl", [_judgment("m1", "q1", "A>B", "B>A"), {"model": "m1", "games": 3}])
    code, _, err = _run(capsys, "--battles", str(f), "--baseline", "b", "--input-format", "arena-hard")
    assert code == 2 and err.strip() == f"arena leaderboard: {f}:2: needs games (a list of judged games with a score)"


def test_arena_hard_single_answer_grades_pair_models_per_question(tmp_path):
    """q1: m1 8, m2 6, m3 6 -> m1 beats both, m2 ties m3; q2: m1 5, m2 5 -> tie; q3: m1's games 7 and 3 (mean 5),
    m2 9 -> m2 wins."""
    rows = [{"question_id": q, "model": m, "games": [{"score": s} for s in ss]}
            for q, m, ss in [("q1", "m1", [8]), ("q1", "m2", [6]), ("q1", "m3", [6]), ("q2", "m1", [5]),
                             ("q2", "m2", [5]), ("q3", "m1", [7, 3]), ("q3", "m2", [9])]]
    judged = read_arena_hard(str(_write_jsonl(tmp_path / "single.jsonl", rows)), None)
    c = judged.counts()
    i = c.index
    assert c.W[i["m1"], i["m2"]] == 1 and c.W[i["m2"], i["m1"]] == 1 and c.T[i["m1"], i["m2"]] == 1
    assert c.W[i["m1"], i["m3"]] == 1 and c.T[i["m2"], i["m3"]] == 1 and c.total == 5


def test_fractional_outcomes_fit_the_definition():
    """BT on fractional outcomes maximises sum y log sigmoid(d) + (1 - y) log sigmoid(-d): the same ratings as
    a converged L-BFGS fit written from that definition, within 1e-6 Elo."""
    rng = np.random.default_rng(4)
    models = ["a", "b", "c", "d"]
    rows = [(models[i], models[j], float(rng.uniform())) for i, j in
            (rng.choice(4, 2, replace=False) for _ in range(200))]
    counts = PairCounts()
    for a, b, y in rows:
        counts.add_score(a, b, y)
    ours = BradleyTerry(rounds=0).fit(counts)
    ia = np.array([counts.index[a] for a, _, _ in rows])
    ib = np.array([counts.index[b] for _, b, _ in rows])
    y = np.array([r[2] for r in rows])

    def nll(t):
        d = t[ia] - t[ib]
        return -(y * -np.logaddexp(0, -d) + (1 - y) * -np.logaddexp(0, d)).sum()

    def grad(t):
        r = y - 1 / (1 + np.exp(-(t[ia] - t[ib])))
        return -(np.bincount(ia, r, 4) - np.bincount(ib, r, 4))

    t = minimize(nll, np.zeros(4), jac=grad, method="L-BFGS-B", options={"gtol": 1e-12, "ftol": 0}).x
    peer = t * 400 / math.log(10)
    peer = peer - peer.mean() + 1000
    assert max(abs(ours[m] - peer[counts.index[m]]) for m in models) < 1e-6
    # whole outcomes stay whole counts; a fractional one makes the counts floats that round-trip through to_dict
    whole = PairCounts()
    whole.add_score("a", "b", 1.0)
    whole.add_score("a", "b", 0.5)
    assert not whole.fractional and whole.W[0, 1] == 1 and whole.T[0, 1] == 1
    again = PairCounts.from_dict(counts.to_dict())
    assert np.allclose(again.W, counts.W) and np.allclose(again.T, counts.T) and again.total == 200
    with pytest.raises(ValueError):
        counts.add_score("a", "b", 1.5)


def test_alpacaeval_file_reads_as_published(tmp_path):
    f = tmp_path / "annotations.json"
    f.write_text(json.dumps(ANNOTATIONS))
    judged = read_alpacaeval(str(f))
    assert judged.skipped == 1 and len(judged.a) == 5 and judged.style() is not None
    f.write_text("[]")
    with pytest.raises(InputError, match="no annotation with a preference"):
        read_alpacaeval(str(f))


def test_style_control_on_judgment_files(tmp_path, capsys):
    """AlpacaEval files carry both outputs, so style control runs on their fractional outcomes; arena-hard
    judgment files carry no answers, which is one line saying so."""
    f = tmp_path / "annotations.json"
    f.write_text(json.dumps(ANNOTATIONS))
    code, out, err = _run(capsys, "--battles", str(f), "--style-control", "--format", "json", "--rounds", "5")
    rows = {r["model"]: r for r in json.loads(out)}
    assert code == 0 and set(rows) == {BASE, "tiny", "small"} and rows["tiny"]["win_rate"] == pytest.approx(1.3 / 3)
    assert "note: style coefficients (log-odds per sd of the normalised difference): len " in err
    g = _write_jsonl(tmp_path / "m1.jsonl", [_judgment("m1", "q1", "A>B", "B>A")])
    code, _, err = _run(capsys, "--battles", str(g), "--baseline", "b", "--style-control")
    assert code == 2 and err.strip() == (f"arena leaderboard: {g}: --style-control needs the answers' lengths, "
                                         "and arena-hard judgment files do not carry them")
