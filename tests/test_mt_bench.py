"""`arena mt-bench`: FastChat's single-answer grading of MT-bench, per category, and the radar in `arena report`.

The competitor is a tiny real model (transformers backend) or recorded answers (replay backend); the judge
is the replay backend, a real backend class, driven by a file of scripted judge texts.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from arena_cli.main import main
from consumers.backends import create_backend
from consumers.judging.single import answer_turns, grade, judge_prompt, load_bench, parse_rating, scores

DATA = Path(__file__).resolve().parent / "data" / "mt_bench"
CATEGORIES = ["writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"]


def _raw_prompts() -> dict[str, dict]:
    return {p["name"]: p for p in map(json.loads, (DATA / "judge_prompts.jsonl").read_text().splitlines())}


def test_bench_is_read_as_published_and_prompts_are_fastchats():
    bench = load_bench(DATA)
    assert len(bench.questions) == 80 and len(bench.references) == 30
    assert [q["category"] for q in bench.questions[::10]] == CATEGORIES
    raw = _raw_prompts()
    q81 = next(q for q in bench.questions if q["question_id"] == 81)  # writing: no reference
    name, system, user = judge_prompt(bench, q81, ["ANSWER ONE", "ANSWER TWO"], 1)
    assert name == "single-v1" and system == raw["single-v1"]["system_prompt"]
    assert user == raw["single-v1"]["prompt_template"].format(question=q81["turns"][0], answer="ANSWER ONE")
    q111 = next(q for q in bench.questions if q["question_id"] == 111)  # math: reference-guided, both turns
    name, system, user = judge_prompt(bench, q111, ["A1", "A2"], 2)
    ref = bench.references[111]
    assert name == "single-math-v1-multi-turn" and system == raw[name]["system_prompt"]
    assert user == raw[name]["prompt_template"].format(question_1=q111["turns"][0], question_2=q111["turns"][1],
                                                      answer_1="A1", answer_2="A2", ref_answer_1=ref[0],
                                                      ref_answer_2=ref[1])
    assert ref[0] in user and ref[1] in user and "A2" in user


def test_rating_is_parsed_as_fastchat_does():
    assert parse_rating("Good answer.\nRating: [[7]]") == 7
    assert parse_rating("[[8.5]] and later [[2]]") == 8.5  # the first [[N]]
    assert parse_rating("I rate it [6].") == 6  # the backup pattern
    assert parse_rating("Rating: 9/10") == -1
    rows = [{"category": "math", "turn": 1, "score": 8.0}, {"category": "math", "turn": 2, "score": -1.0},
            {"category": "stem", "turn": 2, "score": 4.0}]
    s = scores(rows)
    assert s["categories"] == {"math": 8.0, "stem": 4.0} and s["unparsed"] == 1
    assert (s["turn_1"], s["turn_2"], s["overall"]) == (8.0, 4.0, 6.0)


def _script(path: Path, questions, rating) -> Path:
    """Scripted judge texts for the replay backend, keyed question_id:turn."""
    with open(path, "w") as fh:
        for q in questions:
            for turn in (1, 2):
                r = rating(q, turn)
                text = f"Judged.\nRating: [[{r}]]" if r is not None else "I will not give a number."
                fh.write(json.dumps({"question_id": f"{q['question_id']}:{turn}", "text": text}) + "\n")
    return path


def _expected(q, turn):
    if q["question_id"] == 81 and turn == 2:
        return None  # one judgment without a rating: left out, counted
    return CATEGORIES.index(q["category"]) + turn  # 2..10, distinct per category and turn


@pytest.mark.slow
def test_grade_with_a_real_backend_class_driven_by_a_script(tmp_path, tiny_model):
    bench = load_bench(DATA)
    first = [q for q in bench.questions if q["question_id"] in (81, 101, 111)]
    competitor = create_backend({"backend": "transformers", "model": str(tiny_model), "device": "cpu"})
    texts, failed = answer_turns(competitor, [q["turns"] for q in first], max_new_tokens=6,
                                 ids=[str(q["question_id"]) for q in first])
    assert not failed and all(len(t) == 2 for t in texts)
    judge = create_backend({"backend": "replay", "model": str(_script(tmp_path / "j.jsonl", first, _expected))})
    judgments = grade(bench, {q["question_id"]: t for q, t in zip(first, texts)}, judge, "scripted")
    assert [(j["question_id"], j["turn"]) for j in judgments] == [(81, 1), (81, 2), (101, 1), (101, 2),
                                                                  (111, 1), (111, 2)]
    assert [j["judge"][1] for j in judgments[:4]] == ["single-v1", "single-v1-multi-turn", "single-math-v1",
                                                      "single-math-v1-multi-turn"]
    assert texts[0][1] in judgments[1]["user_prompt"]  # turn 2 is judged on the whole conversation
    assert bench.references[101][0] in judgments[2]["user_prompt"]
    assert [j["score"] for j in judgments] == [0 + 1, -1, 2 + 1, 2 + 2, 3 + 1, 3 + 2]  # writing 0, reasoning 2, math 3


def _config(tmp_path: Path, tiny_model) -> Path:
    toml = tmp_path / "arena.toml"
    toml.write_text(f'data_dir = "{tmp_path / "arena-data"}"\n[[competitors]]\nname = "tiny"\n'
                    f'backend = "transformers"\nmodel = "{tiny_model}"\nmax_new_tokens = 6\ndevice = "cpu"\n')
    return toml


@pytest.mark.slow
def test_cli_scores_a_competitor_per_category_and_report_draws_the_radar(tmp_path, tiny_model, capsys):
    toml = _config(tmp_path, tiny_model)
    bench = load_bench(DATA)
    script = _script(tmp_path / "judge.jsonl", bench.questions, _expected)
    base = ["--config", str(toml)]
    assert main(base + ["mt-bench", "--competitor", "tiny", "--data", str(DATA), "--judge-backend", "replay",
                        "--judge-model", str(script), "--limit", "1"]) == 0
    printed = capsys.readouterr().out
    res = json.loads((tmp_path / "arena-data" / "mt_bench" / "tiny.json").read_text())
    # per category: the mean of its two turns' scripted ratings (writing: turn 2 had no rating)
    want = {c: (k + 1 + k + 2) / 2 for k, c in enumerate(CATEGORIES)} | {"writing": 1.0}
    # the tiny model's 512-token context cannot hold every turn-2 prompt: those questions are reported, not graded
    skipped = {u["question_id"] for u in res["unanswered"]}
    assert len(skipped) <= 2 and all("context too long" in u["reason"] for u in res["unanswered"])
    assert res["questions"] == 8 and res["judgments"] == 2 * (8 - len(skipped)) and res["unparsed"] == 1
    graded = [q["category"] for q in bench.questions[::10] if q["question_id"] not in skipped]
    assert res["categories"] == {c: want[c] for c in graded}
    lines = (tmp_path / "arena-data" / "mt_bench" / "tiny_judgments.jsonl").read_text().splitlines()
    assert len(lines) == res["judgments"] and {"question_id", "model", "judge", "user_prompt", "judgment", "score",
                                               "turn"} <= set(json.loads(lines[0]))
    assert "writing" in printed and "overall" in printed

    # recorded answers (FastChat model_answer) graded the same way, then both on the radar
    answers = tmp_path / "recorded.jsonl"
    answers.write_text("".join(json.dumps({"question_id": q["question_id"], "model_id": "rec",
                                           "choices": [{"index": 0, "turns": ["first", "second"]}]}) + "\n"
                               for q in bench.questions))
    assert main(base + ["mt-bench", "--competitor", "rec", "--answers", str(answers), "--data", str(DATA),
                        "--judge-backend", "replay", "--judge-model", str(script), "--limit", "1"]) == 0
    rec = json.loads((tmp_path / "arena-data" / "mt_bench" / "rec.json").read_text())
    assert (rec["questions"], rec["judgments"], rec["unparsed"], rec["unanswered"]) == (8, 16, 1, [])
    assert list(rec["categories"]) == CATEGORIES and rec["categories"] == want
    assert rec["turn_1"] == pytest.approx(sum(k + 1 for k in range(8)) / 8)
    out = tmp_path / "report"
    assert main(base + ["report", "--out", str(out)]) == 0  # no ledger: the evaluations alone
    assert (out / "mt_bench_radar.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bad_arguments_are_one_line_errors(tmp_path, tiny_model, capsys):
    base = ["--config", str(_config(tmp_path, tiny_model)), "mt-bench"]
    script = str(_script(tmp_path / "j.jsonl", load_bench(DATA).questions, _expected))
    cases = [
        (["--competitor", "tiny", "--data", str(DATA)], "needs a model judge"),
        (["--competitor", "nobody", "--data", str(DATA), "--judge-backend", "replay", "--judge-model", script],
         "no competitor 'nobody'"),
        (["--competitor", "tiny", "--data", str(tmp_path / "nope"), "--judge-backend", "replay",
          "--judge-model", "x"], "not a folder"),
        (["--competitor", "tiny", "--data", str(DATA), "--judge-backend", "replay",
          "--judge-model", str(tmp_path / "missing.jsonl")], "not found"),
        (["--competitor", "tiny@it9-sft", "--data", str(DATA), "--judge-backend", "replay",
          "--judge-model", script], "no checkpoint folder"),
        (["--competitor", "tiny", "--data", str(DATA), "--limit", "0"], "--limit"),
    ]
    for argv, msg in cases:
        assert main(base + argv) == 2, argv
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (argv, err)
