"""The selection ablation: the whole slice as the pool, IFD from the model's own losses, and `arena ablation
--fast` on the demo's zoo (real models, real judge pool on the test broker, real SFT, one BT fit)."""
from __future__ import annotations

import json

import pytest

from arena_cli.main import main
from arena_flywheel.events import Battle, Contestant, Failure, JudgeInfo, Message, Verdict
from trainer.select import select, slice_pool

JUDGE = JudgeInfo(backend="reference", template_id="reference-v1", template_hash="h")


def _battle(ins: str, a: str, b: str, ans_a: str, ans_b: str) -> Battle:
    return Battle(instruction_id=ins, messages=[Message(role="user", content=f"question {ins}")],
                  a=Contestant(response_id=f"{ins}-{a}", model=a, answers=[ans_a]),
                  b=Contestant(response_id=f"{ins}-{b}", model=b, answers=[ans_b]))


def _verdict(b: Battle, score_a: float, score_b: float) -> Verdict:
    winner = "model_a" if score_a > score_b else "model_b" if score_b > score_a else "tie"
    return Verdict(battle_id=b.id, instruction_id=b.instruction_id, competitor_a=b.a.competitor,
                   competitor_b=b.b.competitor, model_a=b.a.model, model_b=b.b.model, score_a=score_a,
                   score_b=score_b, winner=winner, margin=abs(score_a - score_b), judge=JUDGE)


def test_slice_pool_has_every_instruction_the_target_battled():
    battles, verdicts = [], []
    # i1: the target loses to both, by 2 (ace) and 6 (novice): the larger margin's answer is the one to learn
    # i2: the target beats both: margin 0, the best-judged opponent answer (ace's)
    # i3: only opponents battle: not the target's slice
    for ins, scores in (("i1", {"ace": (3, 5), "novice": (2, 8)}), ("i2", {"ace": (9, 6), "novice": (9, 2)})):
        for opp, (t, o) in scores.items():
            b = _battle(ins, "target", opp, f"target says {ins}", f"{opp} says {ins}")
            battles.append(b)
            verdicts.append(_verdict(b, t, o))
    other = _battle("i3", "ace", "novice", "x", "y")
    battles.append(other)
    verdicts.append(_verdict(other, 9, 1))
    pool = slice_pool(battles, verdicts, "target")
    by = {f.instruction_id: f for f in pool}
    assert set(by) == {"i1", "i2"}
    assert (by["i1"].winner_model, by["i1"].margin, by["i1"].winner_answers, by["i1"].losses) == (
        "novice", 6.0, ["novice says i1"], 2)
    assert (by["i2"].winner_model, by["i2"].margin, by["i2"].losses) == ("ace", 0.0, 0)
    assert by["i2"].target_answers == ["target says i2"] and len(by["i2"].verdict_ids) == 2
    # pair-judge keeps the failures only; the baselines choose from the whole slice
    assert [f.instruction_id for f in select(pool, "pair-judge", budget=2, threshold=1.0)] == ["i1"]
    assert {f.instruction_id for f in select(pool, "random", budget=2)} == {"i1", "i2"}


@pytest.fixture(scope="module")
def zoo():
    """The demo's zoo (trained once, ~65 s on 2 cores, then cached in ~/.cache/arena-flywheel/zoo)."""
    from arena_cli.zoo import DEMO, build_zoo

    return build_zoo(None, DEMO)


def _failure(i: int, prompt: str, answer: str) -> Failure:
    return Failure(instruction_id=f"i{i}", target="target", messages=[Message(role="user", content=prompt)],
                   target_answers=["?"], winner_model="ace", winner_answers=[answer], margin=1.0)


@pytest.mark.slow
def test_ifd_is_lower_when_the_instruction_makes_the_answer_predictable(zoo):
    # the same answer after an instruction that determines it, and after one that does not
    pairs = [("Upper case: apple river", "Add: 3 + 4", "APPLE RIVER"),
             ("Reverse the words: tiger lemon piano", "Count the words: tiger lemon piano", "piano lemon tiger"),
             ("Add: 3 + 4", "Upper case: tiger", "7")]
    pool = [_failure(2 * k + j, prompt, answer) for k, (good, bad, answer) in enumerate(pairs)
            for j, prompt in enumerate((good, bad))]
    from trainer.select import ifd_scores

    scores = ifd_scores(pool, str(zoo["ace"]))  # a tiny model of the zoo that has learnt the tasks
    for k in range(len(pairs)):
        assert scores[2 * k] < scores[2 * k + 1], (pairs[k], scores)
    # IFD selection takes the hardest: the answers the instruction does not explain
    chosen = select(pool, "ifd", budget=3, model_path=str(zoo["ace"]))
    assert {f.instruction_id for f in chosen} == {"i1", "i3", "i5"}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_cli_ablation_fast_rates_one_checkpoint_per_method(broker, zoo, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", broker)  # the judge pool joins a group on the test broker
    methods = ["pair-judge", "random", "kmeans", "length", "ifd", "tags"]
    assert main(["ablation", "--fast", "--methods", ",".join(methods)]) == 0
    printed = capsys.readouterr().out
    res = json.loads((tmp_path / "arena-data" / "ablation" / "ablation.json").read_text())
    rows = {r["method"]: r for r in res["rows"]}
    assert list(rows) == ["base", *methods]
    budget = res["settings"]["budget"]
    base = rows["base"]
    for m in methods:
        r = rows[m]
        assert r["examples"] == budget and r["lower"] <= r["rating"] <= r["upper"]
        assert r["battles_vs_base"] == res["settings"]["eval"] and 0 <= r["win_rate_vs_base"] <= 1
        # every method's SFT checkpoint is rated clearly above the base it started from
        assert r["lower"] > base["upper"], (m, r, base)
        assert (tmp_path / "arena-data" / "ablation" / "checkpoints" / m / "it1-sft" / "config.json").is_file()
    assert rows["pair-judge"]["mean_margin"] >= res["settings"]["threshold"]  # failures only
    assert "INSTAG stand-in" in rows["tags"]["label"] and "INSTAG stand-in" in printed, printed
    md = (tmp_path / "arena-data" / "ablation" / "ablation.md").read_text()
    assert "| method | examples | rating | 95% CI | win rate vs base |" in md and "k-means on MiniLM" in md
    # `arena report` draws it (no ledger needed)
    assert main(["report", "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "report" / "ablation.md").read_text() == md


def test_cli_ablation_bad_arguments_are_one_line_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for argv, msg in ((["--methods", "pair-judge,nope"], "unknown method nope"),
                      (["--methods", "random,random"], "listed twice"),
                      (["--budget", "0"], "--budget must be at least 1"),
                      (["--budget", "50", "--slice", "10"], "larger than the slice")):
        assert main(["ablation", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (argv, err)
