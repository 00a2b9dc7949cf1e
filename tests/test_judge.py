"""Judge tests: parsing the 1,040 real GPT-4 reviews, the games protocol and policies, health, the pool over
the real broker with reference, model and replayed judges."""
import glob
import json

import pytest

from consumers.judging.parse import parse_scores
from tests.conftest import shared_data

# In these two reviews the text says "Assistant 2: 4" but the dataset's score field says 2; we parse what
# the text states.
_FIELD_DISAGREES_WITH_TEXT = {"57H8uDw5kYEX2wFgvY8BN8": (10.0, 4.0), "ZgNXGB9wziYPnGFjqLzqVH": (10.0, 4.0)}


def test_parses_every_real_gpt4_review():
    root = shared_data("vicuna_eval_2023/review")
    n = 0
    for path in sorted(glob.glob(f"{root}/**/*.jsonl", recursive=True)):
        for line in open(path):
            d = json.loads(line)
            n += 1
            want = _FIELD_DISAGREES_WITH_TEXT.get(d["review_id"], tuple(float(x) for x in d["score"]))
            assert parse_scores(d["text"]) == want, d["review_id"]
    assert n == 1040


@pytest.mark.parametrize("text,want", [
    ("8 9\nBoth fine.", (8.0, 9.0)),
    ("8.5 9\nexplanation", (8.5, 9.0)),
    ("8, 7\n", (8.0, 7.0)),
    ("Solving...\nAssistant 1: 8/10\nAssistant 2: 3\nDone", (8.0, 3.0)),
    ("The scores are (1, 5) for Assistant 1 and Assistant 2.", (1.0, 5.0)),
    ("I cannot decide.", None),
    ("", None),
    ("42 7\nout of range", None),
])
def test_hand_cases(text, want):
    assert parse_scores(text) == want


from arena_flywheel.events import Game  # noqa: E402
from consumers.judging.policies import fastchat, position_flip, score_sum  # noqa: E402


def _games(ab, ba):
    return [Game(order="ab", score_a=ab[0], score_b=ab[1]), Game(order="ba", score_a=ba[0], score_b=ba[1])]


def test_score_sum_averages_and_ties_within_margin():
    assert score_sum(_games((8, 6), (7, 7)), tie_margin=0.5) == ("model_a", 7.5, 6.5, 1.0)
    assert score_sum(_games((8, 7), (7, 7.5)), tie_margin=0.5)[0] == "tie"  # diff 0.25 < 0.5
    assert score_sum(_games((6, 6), (6, 6)))[0] == "tie"
    assert score_sum(_games((2, 9), (3, 8)))[:2] == ("model_b", 2.5)


def test_fastchat_disagreement_is_a_tie_and_flip_is_seen():
    g = _games((9, 5), (4, 6))  # first position always wins: a biased judge
    assert fastchat(g)[0] == "tie"
    assert position_flip(g) is True
    assert fastchat(_games((9, 5), (8, 6)))[0] == "model_a"


def test_unparsed_game_is_invalid_never_a_tie():
    g = [Game(order="ab", score_a=8, score_b=7), Game(order="ba", error="unparseable")]
    assert score_sum(g)[0] == "invalid"
    assert fastchat(g)[0] == "invalid"
    assert position_flip(g) is None


from arena_flywheel.events import Battle, Contestant, Message  # noqa: E402
from consumers.judging.protocol import play_games  # noqa: E402
from consumers.judging.reference import reference_judge, reference_score  # noqa: E402


def _battle(a, b, ref):
    return Battle(instruction_id="i1", messages=[Message(role="user", content="What is 6*7?")], reference=ref,
                  a=Contestant(response_id="ra", model="ma", answers=[a]),
                  b=Contestant(response_id="rb", model="mb", answers=[b]))


def test_reference_score_exact_numeric_similarity():
    assert reference_score("42.", ["42"]) == 10.0
    assert reference_score("The answer is 42", ["42"]) == 9.0
    assert reference_score("Paris is the capital", ["The capital is Paris"]) < 9.0
    assert reference_score("banana", ["42"]) < reference_score("The answer is 42", ["42"])


def test_two_games_cancel_a_known_first_position_bias():
    def biased(battle, first, second):  # the reference judge plus +3 for whatever is shown first
        s1, s2 = (float(x) for x in reference_judge(battle, first, second).split("\n")[0].split())
        return f"{min(10, s1 + 3):g} {s2:g}\nbiased"

    battles = [_battle("The answer is 42", "I think 41", "42"), _battle("41", "It is 42", "42"),
               _battle("forty", "fourty", "42")]
    flips = 0
    for bt in battles:
        fair = score_sum(play_games(bt, reference_judge))
        games = play_games(bt, biased)
        assert score_sum(games)[0] == fair[0]  # the bias cancels in the average
        assert games[0].score_a != games[1].score_a or games[0].score_b != games[1].score_b
        flips += position_flip(games)
    assert flips >= 1  # and it is measured: the near-equal pair flips with position


def test_unparseable_judge_retries_then_invalid():
    calls = []

    def mute(battle, first, second):
        calls.append(1)
        return "I refuse."

    games = play_games(_battle("42", "41", "42"), mute, max_parse_retries=2)
    assert len(calls) == 6 and all(g.attempts == 3 and g.error for g in games)
    assert score_sum(games)[0] == "invalid"


from arena_flywheel.events import JudgeInfo, Verdict  # noqa: E402
from consumers.judging.health import JudgeHealth  # noqa: E402


def _verdict(games):
    w, a, b, m = score_sum(games)
    return Verdict(battle_id="b", instruction_id="i", competitor_a="x", competitor_b="y", model_a="x", model_b="y",
                   games=games, score_a=a, score_b=b, winner=w, margin=m, judge=JudgeInfo(backend="reference"))


def test_health_rates():
    h = JudgeHealth()
    h.add(_verdict(_games((9, 5), (4, 6))), 10, 50)  # flip; first shown wins both games; a (shorter) wins 6.5-5.5
    h.add(_verdict(_games((9, 5), (8, 6))), 50, 10)  # a wins both games; a is longer
    h.add(_verdict([Game(order="ab", error="x"), Game(order="ba", error="x")]))
    s = h.summary()
    assert s == {"verdicts": 3, "invalid_rate": 0.3333, "position_flip_rate": 0.5, "single_game_rate": 0.0,
                 "first_position_win_rate": 0.75, "longer_answer_win_rate": 0.5}
    h.add(_verdict([Game(order="ba", score_a=3, score_b=7)]), 10, 50)  # one game: no flip to measure
    s = h.summary()
    assert s["position_flip_rate"] == 0.5 and s["single_game_rate"] == 0.3333
    assert s["first_position_win_rate"] == 0.8 and s["longer_answer_win_rate"] == 0.6667


def test_pool_over_real_broker_battles_in_verdicts_out(cfg):
    import time as _t

    from arena_flywheel.kafka import Publisher, ensure_topics
    from consumers.judge import JudgePool
    from tests.test_generate import read_all

    cfg.kafka.session_timeout_ms = 1000
    cfg.kafka.heartbeat_interval_ms = 300
    ensure_topics(cfg)
    battles = [_battle("42", "41", "42"), _battle("It is 41", "The answer is 42", "42")]
    with Publisher(cfg) as pub:
        for b in battles:
            pub.send(b)
        pub.send_raw(cfg.topic("battles"), b"k", b"not json")
        pub.flush()
    pool = JudgePool(cfg)
    deadline = _t.monotonic() + 30
    while pool.counts["battles"] + pool.counts["dead_letters"] < 3 and _t.monotonic() < deadline:
        pool.poll_once()
    pool.close()
    verdicts = read_all(cfg, "verdicts", Verdict)
    assert sorted(v.winner for v in verdicts) == ["model_a", "model_b"]
    assert pool.counts["dead_letters"] == 1
    # idempotent ids: judging the same battle again gives the same verdict id
    assert {v.id for v in verdicts} == {pool.judge(b).id for b in battles}
    assert all(v.judge.template_hash and len(v.games) == 2 for v in verdicts)


def test_default_template_loads_renders_and_is_hashed():
    from consumers.judging.templates import load_template

    t = load_template("wizardarena-dual-score")
    text = t.render("Q?", "A1", "A2")
    assert "Q?" in text and "A1" in text and "{" not in text and len(t.sha256) == 64
    with pytest.raises(KeyError):
        load_template("no-such-template")


def test_arena_hard_counts_strong_preferences_three():
    from consumers.judging.policies import arena_hard

    g = [Game(order="ab", raw="... [[A>>B]]"), Game(order="ba", raw="final verdict [[B>A]]")]
    assert arena_hard(g) == ("model_a", None, None, 4.0)  # 3 + 1, "ba" game: B shown second is a
    g = [Game(order="ab", raw="[[A>B]]"), Game(order="ba", raw="[[A>B]]")]  # first shown wins both: tie
    assert arena_hard(g)[0] == "tie"
    assert arena_hard([Game(order="ab", raw="[[A>B]]"), Game(order="ba", raw="no label")])[0] == "invalid"


class _Scripted:
    """A test double for a generation backend: answers from a list of judge texts, in call order."""

    def __init__(self, texts):
        self.texts, self.requests = list(texts), []

    def generate(self, reqs):
        from consumers.backends.base import Completion

        self.requests.extend(reqs)
        return [Completion(text=self.texts.pop(0)) for _ in reqs]


def test_model_judge_maps_positions_back_and_retries_unparsed_games():
    from consumers.judging.model import ModelJudge
    from consumers.judging.templates import load_template

    b = _battle("It is 41", "The answer is 42", "42")
    backend = _Scripted(["8 3\nfirst shown better", "I cannot decide", "2 9\nsecond shown better"])
    mj = ModelJudge(backend, load_template("wizardarena-dual-score"), max_parse_retries=1)
    (ab, ba), = mj.games([b])
    assert (ab.score_a, ab.score_b, ab.attempts) == (8, 3, 1)
    assert (ba.score_a, ba.score_b, ba.attempts) == (9, 2, 2)  # shown b first: scores swapped back
    first, second = backend.requests[0].messages[0]["content"], backend.requests[1].messages[0]["content"]
    assert first.index("It is 41") < first.index("The answer is 42")
    assert second.index("The answer is 42") < second.index("It is 41")
    # out of retries: an error game, kept with its raw text (the policy then says invalid)
    mj = ModelJudge(_Scripted(["no", "no", "7 7", "still no"]), load_template("wizardarena-dual-score"),
                    max_parse_retries=1)
    (ab, ba), = mj.games([b])  # first call: ab "no", ba "no"; the retry: ab "7 7", ba "still no"
    assert ab.score_a == 7 and ab.error is None and ab.attempts == 2
    assert ba.error == "unparseable judge output" and ba.raw == "still no" and ba.attempts == 2
    assert score_sum([ab, ba])[0] == "invalid"


def test_model_judge_labels_and_reference_template():
    from consumers.judging.model import ModelJudge
    from consumers.judging.policies import arena_hard
    from consumers.judging.templates import load_template

    b = _battle("It is 41", "The answer is 42", "42")
    mj = ModelJudge(_Scripted(["A is wrong. [[B>>A]]", "[[A>>B]]"]), load_template("pairwise-labels"), labels=True)
    games = mj.games([b])[0]
    assert [g.preference for g in games] == ["B>>A", "A>>B"] and arena_hard(games)[0] == "model_b"
    backend = _Scripted(["1 10", "10 1"])
    ModelJudge(backend, load_template("reference-guided-dual-score")).games([b])
    assert "42" in backend.requests[0].messages[0]["content"].split("Reference Answer]")[1]


@pytest.mark.slow
def test_tiny_model_judge_over_real_broker_gives_invalid_not_a_crash(cfg, tmp_path):
    """An untrained tiny transformers model as judge: its text never parses, so every verdict is
    `invalid` after the retries, counted in the health; nothing crashes and nothing is a silent tie."""
    import time as _t

    from arena_flywheel.kafka import Publisher, ensure_topics
    from arena_flywheel.tinymodel import build_tiny_model
    from consumers.judge import JudgePool
    from tests.test_generate import read_all

    model = build_tiny_model(tmp_path / "judge-model", max_positions=2048)  # the judge prompt is ~600 tokens
    cfg.judge.backend, cfg.judge.model = "transformers", str(model)
    cfg.judge.max_new_tokens, cfg.judge.max_parse_retries = 12, 1
    ensure_topics(cfg)
    battles = [_battle("42", "41", "42"), _battle("It is 41", "The answer is 42", "42")]
    with Publisher(cfg) as pub:
        for b in battles:
            pub.send(b)
        pub.flush()
    pool = JudgePool(cfg)
    deadline = _t.monotonic() + 60
    while pool.counts["battles"] < 2 and _t.monotonic() < deadline:
        pool.poll_once()
    stats = pool.stats()
    pool.close()
    verdicts = read_all(cfg, "verdicts", Verdict)
    assert [v.winner for v in verdicts] == ["invalid", "invalid"]
    assert all(g.error == "unparseable judge output" and g.attempts == 2 and g.raw
               for v in verdicts for g in v.games), [v.games for v in verdicts]
    assert verdicts[0].judge.backend == "transformers" and verdicts[0].judge.template_id == "wizardarena-dual-score"
    assert stats["invalid"] == 2 and stats["health"]["invalid_rate"] == 1.0


def test_judge_config_mismatch_is_one_line(cfg):
    from arena_flywheel.errors import ConfigError as UsageError
    from consumers.judge import JudgePool

    cfg.judge.backend, cfg.judge.model, cfg.judge.policy = "openai", "m", "arena-hard"
    with pytest.raises(UsageError, match="pairwise-labels"):
        JudgePool(cfg)
    cfg.judge.template = "nope"
    with pytest.raises(UsageError, match="unknown judge template"):
        JudgePool(cfg)


def test_mt_bench_labels_with_the_fastchat_policy_and_health():
    from consumers.judging.model import ModelJudge
    from consumers.judging.policies import fastchat, parse_preference
    from consumers.judging.templates import load_template

    assert [parse_preference(t) for t in ("... [[A]]", "[[B]]", "so [[C]]", "[[D]]")] == ["A>B", "B>A", "A=B", None]
    b = _battle("It is 41", "The answer is 42", "42")
    # b is better in both games: shown second in "ab" ([[B]]), shown first in "ba" ([[A]])
    mj = ModelJudge(_Scripted(["B is right. [[B]]", "[[A]]"]), load_template("pairwise-abc"), labels=True)
    games = mj.games([b])[0]
    assert fastchat(games) == ("model_b", None, None, 1.0)
    # position bias: the first shown wins both games -> the games disagree on the battle's winner: a tie
    flip = [Game(order="ab", raw="[[A]]"), Game(order="ba", raw="[[A]]")]
    assert fastchat(flip)[0] == "tie"
    # health reads label games too (arena-hard verdicts carry no scores)
    h = JudgeHealth()
    w, sa, sb, m = fastchat(flip)
    h.add(Verdict(battle_id="b", instruction_id="i", competitor_a="x", competitor_b="y", model_a="x", model_b="y",
                  games=flip, winner=w, margin=m, policy="fastchat", judge=JudgeInfo(backend="openai")))
    s = h.summary()
    assert s["position_flip_rate"] == 1.0 and s["first_position_win_rate"] == 1.0


# ------------------------------------------------------------------------------------------ one game
def test_one_game_protocol_splits_orders_and_leaves_the_bias_to_average_out():
    from consumers.judging.protocol import orders_for

    def biased(battle, first, second):  # the reference judge plus +3 for whatever is shown first
        s1, s2 = (float(x) for x in reference_judge(battle, first, second).split("\n")[0].split())
        return f"{min(10, s1 + 3):g} {s2:g}\nbiased"

    battles = [_battle(f"It is {41 + i % 2}", f"maybe {40 + i % 3}", "42").model_copy(update={"id": f"bat-{i}"})
               for i in range(200)]
    orders = [orders_for(b, 1) for b in battles]
    assert all(len(o) == 1 for o in orders) and orders[0] == orders_for(battles[0], 1)  # stable per battle
    assert 80 < sum(o == ("ab",) for o in orders) < 120  # about half shown each way
    health = {}
    for name, judge in (("fair", reference_judge), ("biased", biased)):
        h = health[name] = JudgeHealth()
        for b, o in zip(battles, orders):
            games = play_games(b, judge, orders=o)
            w, sa, sb, m = score_sum(games)
            assert len(games) == 1 and (sa, sb) == (games[0].score_a, games[0].score_b)
            h.add(Verdict(battle_id=b.id, instruction_id="i", competitor_a="x", competitor_b="y", model_a="x",
                          model_b="y", games=games, score_a=sa, score_b=sb, winner=w, margin=m,
                          judge=JudgeInfo(backend="reference", games=1)))
    fair, bias = health["fair"].summary(), health["biased"].summary()
    # the bias is not cancelled per battle, and the health shows it: every verdict one game, and the
    # first-shown answer wins far more often than with the fair judge
    assert bias["single_game_rate"] == 1.0 and bias["position_flip_rate"] == 0.0
    assert 0.4 < fair["first_position_win_rate"] < 0.6 and bias["first_position_win_rate"] > 0.75
    # one game is a different protocol, so a different judge id (two games keep the old ids)
    assert JudgeInfo(backend="reference", games=1).judge_id != JudgeInfo(backend="reference").judge_id
    assert JudgeInfo(backend="reference").judge_id == "reference:::"


def test_policies_read_one_game():
    from consumers.judging.policies import arena_hard

    assert score_sum([Game(order="ba", score_a=8, score_b=6)], tie_margin=1) == ("model_a", 8, 6, 2)
    assert fastchat([Game(order="ba", raw="[[A]]")]) == ("model_b", None, None, 1.0)  # b was shown first
    assert arena_hard([Game(order="ab", raw="[[B>>A]]")]) == ("model_b", None, None, 3.0)
    assert score_sum([Game(order="ab", error="unparseable judge output")])[0] == "invalid"
    assert score_sum([])[0] == "invalid" and fastchat([])[0] == "invalid"


# -------------------------------------------------------------------------------------- replayed judges
def _vicuna_battles(review_file, answers_dir):
    """Battles of the answers a vicuna-eval review file judged, sides in canonical (response id) order,
    and the scores each review states for sides a and b."""
    answers = {}
    for f in answers_dir.glob("*.jsonl"):
        for line in open(f):
            d = json.loads(line)
            answers[d["answer_id"]] = d
    questions = {d["question_id"]: d["text"] for d in map(json.loads, open(answers_dir.parent / "question.jsonl"))}
    out = []
    for line in open(review_file):
        r = json.loads(line)
        one, two = answers[r["answer1_id"]], answers[r["answer2_id"]]
        sides = sorted([(f"res-{one['answer_id']}", one, 0), (f"res-{two['answer_id']}", two, 1)], key=lambda t: t[0])
        a, b = (Contestant(response_id=rid, model=d["model_id"], answers=[d["text"]]) for rid, d, _ in sides)
        stated = _FIELD_DISAGREES_WITH_TEXT.get(r["review_id"], tuple(r["score"]))
        want = (stated[sides[0][2]], stated[sides[1][2]])  # the review's (answer 1, answer 2) mapped to (a, b)
        out.append((Battle(instruction_id=f"vicuna-{r['question_id']}", messages=[
            Message(role="user", content=questions[r["question_id"]])], a=a, b=b), want, sides[0][2] == 0))
    return out


def test_replay_loads_every_real_vicuna_review():
    from consumers.judging.replay import RecordedJudgments

    rec = RecordedJudgments(str(shared_data("vicuna_eval_2023/review")))  # answers found in ../answer
    assert len(rec.games) == 1040 and rec.unresolved == 0 and rec.conflicts == 0
    assert rec.single_order() == 1040  # answer 1 was always shown first: no game has its swap recorded
    assert rec.kinds == {"scores": 1040, "labels": 0} and "gpt-4-0328-generic" in rec.judges


def test_replay_judge_gives_the_recorded_scores_in_one_game_and_refuses_to_invent_the_other_order():
    from consumers.judging.replay import RecordedJudgments, ReplayJudge

    root = shared_data("vicuna_eval_2023")
    review = root / "review/vicuna-13b_20230322-clean-lang/review_gpt35_vicuna-13b.jsonl"
    rec = RecordedJudgments(str(review))
    cases = _vicuna_battles(review, root / "answer")
    battles = [b for b, _, _ in cases]
    games = ReplayJudge(rec, games=1).games(battles)
    n_ab = 0
    for (b, want, gpt35_is_a), g in zip(cases, games):
        assert len(g) == 1 and g[0].error is None
        assert g[0].order == ("ab" if gpt35_is_a else "ba")  # the order the review was recorded in
        assert (g[0].score_a, g[0].score_b) == want, b.instruction_id
        n_ab += g[0].order == "ab"
    assert 0 < n_ab < 80  # canonical sides put the recorded first answer on both sides
    # two games: the swapped order was never recorded, so each verdict is invalid with the reason
    for (b, _, _), g in zip(cases, ReplayJudge(rec, games=2).games(battles)):
        assert score_sum(g)[0] == "invalid"
        missing = [x for x in g if x.error]
        assert len(missing) == 1 and "no recorded judgment" in missing[0].error
    # answers that differ from the recorded ones are not judged by someone else's review
    changed = battles[0].model_copy(update={"a": battles[0].a.model_copy(update={"answers": ["something else"]})})
    assert ReplayJudge(rec, games=1).games([changed])[0][0].error.startswith("no recorded judgment")


@pytest.mark.slow
def test_replay_judge_pool_over_real_broker(cfg):
    import time as _t

    from arena_flywheel.kafka import Publisher, ensure_topics
    from consumers.judge import JudgePool
    from tests.test_generate import read_all

    root = shared_data("vicuna_eval_2023")
    review = root / "review/vicuna-7b_20230322-fp16/review_bard_vicuna-7b.jsonl"
    cases = _vicuna_battles(review, root / "answer")
    cfg.judge.backend, cfg.judge.model, cfg.judge.games = "replay", str(review), 1
    ensure_topics(cfg)
    with Publisher(cfg) as pub:
        for b, _, _ in cases:
            pub.send(b)
        pub.flush()
    pool = JudgePool(cfg)
    deadline = _t.monotonic() + 30
    while pool.counts["battles"] < len(cases) and _t.monotonic() < deadline:
        pool.poll_once()
    stats = pool.stats()
    pool.close()
    verdicts = {v.battle_id: v for v in read_all(cfg, "verdicts", Verdict)}
    assert len(verdicts) == 80
    for b, (wa, wb), _ in cases:
        v = verdicts[b.id]
        assert (v.score_a, v.score_b) == (wa, wb)
        assert v.winner == ("model_a" if wa > wb else "model_b" if wb > wa else "tie")
    info = next(iter(verdicts.values())).judge
    assert (info.backend, info.model, info.template_id, info.games) == ("replay", "1+2+3", "recorded", 1)  # reviewer ids as recorded
    assert len(info.template_hash) == 64 and info.judge_id.endswith(":1-game")
    assert stats["invalid"] == 0 and stats["health"]["single_game_rate"] == 1.0
    assert {v.id for v in verdicts.values()} == {pool.judge(b).id for b, _, _ in cases}  # idempotent ids


def _mt_bench_recordings(tmp_path):
    """A FastChat MT-bench layout: model_answer/<model>.jsonl and model_judgment/gpt-4_pair.jsonl, in the
    record shapes FastChat's gen_judgment.py writes (values written here for the test)."""
    ans, judg = tmp_path / "model_answer", tmp_path / "model_judgment"
    ans.mkdir(), judg.mkdir()
    turns = {"alpha": ["Paris.", "About 2.1 million people."], "beta": ["It is Lyon.", "Lyon has 500k."]}
    for m, t in turns.items():
        (ans / f"{m}.jsonl").write_text(json.dumps({"question_id": 81, "model_id": m, "answer_id": f"x-{m}",
                                                    "choices": [{"index": 0, "turns": t}]}) + "\n")
    recs = [
        {"question_id": 81, "model_1": "alpha", "model_2": "beta", "g1_winner": "model_1", "g2_winner": "model_1",
         "judge": ["gpt-4", "pair-v2"], "g1_user_prompt": "...", "g1_judgment": "A is correct. [[A]]",
         "g2_user_prompt": "...", "g2_judgment": "B is correct. [[B]]", "turn": 1, "tstamp": 0},
        {"question_id": 81, "model_1": "alpha", "model_2": "beta", "g1_winner": "model_1", "g2_winner": "model_1",
         "judge": ["gpt-4", "pair-v2-multi-turn"], "g1_user_prompt": "...", "g1_judgment": "[[A]]",
         "g2_user_prompt": "...", "g2_judgment": "First assistant better. [[A]]", "turn": 2, "tstamp": 0},
    ]
    (judg / "gpt-4_pair.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return judg / "gpt-4_pair.jsonl", turns


def test_replay_mt_bench_pairwise_judgments_play_both_games(tmp_path):
    from consumers.judging.replay import RecordedJudgments, ReplayJudge

    path, turns = _mt_bench_recordings(tmp_path)
    rec = RecordedJudgments(str(path))  # answers found in ../model_answer
    assert len(rec.games) == 4 and rec.kinds == {"scores": 0, "labels": 4} and rec.single_order() == 0

    def battle(n_turns):
        users = [Message(role="user", content="Capital of France?"), Message(role="user", content="Population?")]
        return Battle(instruction_id="mt-81", messages=users[:n_turns],
                      a=Contestant(response_id="r1", model="beta", answers=turns["beta"][:n_turns]),
                      b=Contestant(response_id="r2", model="alpha", answers=turns["alpha"][:n_turns]))

    one_turn, two_turns = battle(1), battle(2)
    g1 = ReplayJudge(rec).games([one_turn])[0]
    assert [g.preference for g in g1] == ["B>A", "A>B"]  # alpha (side b) shown second, then first: wins both
    assert fastchat(g1) == ("model_b", None, None, 1.0)
    assert position_flip(g1) is False
    g2 = ReplayJudge(rec).games([two_turns])[0]  # turn 2 is keyed by the whole conversation
    assert fastchat(g2)[0] == "tie" and position_flip(g2) is True  # the recorded judge flipped with position


def test_replay_config_errors_are_one_line(cfg, tmp_path):
    from arena_flywheel.errors import ConfigError as UsageError
    from consumers.judge import JudgePool

    path, _ = _mt_bench_recordings(tmp_path)
    cfg.judge.backend, cfg.judge.model = "replay", str(path)
    with pytest.raises(UsageError, match="labels, not scores.*fastchat"):
        JudgePool(cfg)  # policy score-sum on label recordings
    cfg.judge.model = str(tmp_path / "missing.jsonl")
    with pytest.raises(UsageError, match="not found"):
        JudgePool(cfg)
    cfg.judge.model, cfg.judge.recorded_answers = str(path), str(tmp_path / "nowhere")
    with pytest.raises(UsageError, match="recorded_answers"):
        JudgePool(cfg)
    (tmp_path / "other.jsonl").write_text('{"question_id": 1, "text": "an answer, not a judgment"}\n')
    cfg.judge.model, cfg.judge.recorded_answers = str(tmp_path / "other.jsonl"), None
    with pytest.raises(UsageError, match="no recorded judgments"):
        JudgePool(cfg)
    review = shared_data("vicuna_eval_2023/review/vicuna-7b_20230322-fp16/review_bard_vicuna-7b.jsonl")
    cfg.judge.model = str(review)  # one order only, with the default two games: every verdict would be invalid
    with pytest.raises(UsageError, match="set judge.games = 1"):
        JudgePool(cfg)  # (last: skips where ../shared/data is absent)


def test_replayed_vicuna_eval_orders_models_as_the_human_arena():
    """All 1,040 GPT-4 reviews replayed as battles (one game each, score-sum), fitted into a leaderboard,
    and compared with the human Chatbot Arena leaderboard of 2024-03-29: the judge chain end to end on
    real data (measured: Spearman 1.0, every pair separable, agreement with confidence 100%)."""
    from arena_flywheel.config import Config
    from arena_flywheel.consistency import compute, load_board
    from consumers.judging.replay import RecordedJudgments, ReplayJudge
    from arena_flywheel.ratings import BradleyTerry

    root = shared_data("vicuna_eval_2023")
    human = load_board(shared_data("reference_leaderboards/lmsys_arena_elo_results_20240329_leaderboard.csv"))
    judge = ReplayJudge(RecordedJudgments(str(root / "review")), games=1)
    rows = []
    for f in sorted((root / "review").rglob("*.jsonl")):
        cases = _vicuna_battles(f, root / "answer")
        for (b, want, _), g in zip(cases, judge.games([b for b, _, _ in cases])):
            w, sa, sb, _m = score_sum(g)
            assert (sa, sb) == want
            rows.append((b.a.model, b.b.model, w))
    assert len(rows) == 1040
    board = {r.model: {"score": r.rating, "lower": r.lower, "upper": r.upper, "samples": None}
             for r in BradleyTerry.from_config(Config().ratings).leaderboard_of_battles(rows)}
    names = {"gpt-3.5-turbo:20230327": "gpt-3.5-turbo-0314", "vicuna-13b:20230322-clean-lang": "vicuna-13b",
             "vicuna-7b:20230322-fp16": "vicuna-7b", "alpaca-13b:v1": "alpaca-13b", "llama-13b:v1": "llama-13b"}
    c = compute(board, human, names)
    assert c["spearman"] > 0.99 and c["agreement_with_confidence"] == 1.0 and c["separability"] >= 0.9


def test_reference_guided_template_for_math_battles_with_a_reference(cfg):
    """MT-bench style: battles with a reference in a reference category are judged with the reference-guided
    template, the rest with the template; each verdict names the template that judged it."""
    from arena_flywheel.errors import ConfigError as UsageError
    from consumers.judge import JudgePool

    cfg.judge.backend, cfg.judge.model, cfg.judge.base_url = "openai", "m", "http://127.0.0.1:9/v1"
    cfg.judge.reference_template = "reference-guided-dual-score"
    pool = JudgePool(cfg)
    try:
        backend = _Scripted(["9 2", "2 9", "7 7", "7 7", "8 3", "3 8"])
        pool.model_judge.backend = backend
        math = _battle("42", "41", "42").model_copy(update={"category": "math"})
        essay = _battle("A poem", "Another poem", None).model_copy(update={"category": "writing"})
        writing_with_ref = _battle("x", "y", "x").model_copy(update={"category": "writing"})
        verdicts = pool.judge_many([math, essay, writing_with_ref])
    finally:
        pool.close()
    prompts = [r.messages[0]["content"] for r in backend.requests]
    assert "Reference Answer" in prompts[0] and "Reference Answer" in prompts[1]
    assert not any("Reference Answer" in p for p in prompts[2:])  # no reference / not a reference category
    assert [v.judge.template_id for v in verdicts] == ["reference-guided-dual-score", "wizardarena-dual-score",
                                                       "wizardarena-dual-score"]
    assert verdicts[0].winner == "model_a" and verdicts[0].judge.judge_id != verdicts[1].judge.judge_id
    cfg.judge.reference_template = "reference-guided-pairwise-abc"  # labels with a score template
    with pytest.raises(UsageError, match="reference-guided-dual-score"):
        JudgePool(cfg)
    cfg.judge.reference_template = "wizardarena-dual-score"  # shows no reference
    with pytest.raises(UsageError, match="must show"):
        JudgePool(cfg)


def test_score_sum_combine_mean_or_sum_and_the_pool_honours_judge_combine(cfg):
    from consumers.judge import JudgePool
    from consumers.judging.policies import policy_for

    g = _games((8, 6), (7, 7))
    assert score_sum(g, combine="mean") == score_sum(g) == ("model_a", 7.5, 6.5, 1.0)  # one game's 1-10 scale
    assert score_sum(g, combine="sum") == ("model_a", 15, 13, 2.0)  # 2-20 over two games
    assert score_sum(g, tie_margin=1.5, combine="mean")[0] == "tie"  # the margin is on the combined scale
    assert score_sum(g, tie_margin=1.5, combine="sum")[0] == "model_a"
    with pytest.raises(ValueError, match="combine"):
        score_sum(g, combine="max")
    cfg.judge.combine = "sum"
    assert policy_for(cfg.judge)(g, 0.0) == ("model_a", 15, 13, 2.0)
    pool = JudgePool(cfg)
    try:
        v = pool.judge(_battle("42", "The answer is 42", "42"))  # reference judge: 10 and 9 in each game
    finally:
        pool.close()
    assert (v.score_a, v.score_b, v.margin, v.winner) == (20.0, 18.0, 2.0, "model_a")
    cfg.judge.policy = "fastchat"
    assert policy_for(cfg.judge) is fastchat


def test_retries_of_unparseable_greedy_output_sample_with_a_new_seed(tiny_model):
    """Greedy decoding gives the same text every time, so a retry at temperature 0 could never parse; the
    retries sample (temperature > 0) with a different seed per attempt, through a real transformers backend."""
    from consumers.backends.transformers_backend import TransformersBackend
    from consumers.judging.model import RETRY_TEMPERATURE, ask, retry_temperature

    backend = TransformersBackend(str(tiny_model), device="cpu")
    seen = []
    real = backend.generate

    def spy(reqs):
        seen.append([(r.temperature, r.seed) for r in reqs])
        return real(reqs)

    backend.generate = spy
    try:
        texts = []
        out = ask(backend, {"g1": "Score these two answers.", "g2": "Another game."},
                  lambda t: texts.append(t) and None, retries=2, max_new_tokens=6, temperature=0.0)
    finally:
        backend.close()
    assert [len(s) for s in seen] == [2, 2, 2] and all(a.attempts == 3 and a.value is None for a in out.values())
    assert seen[0] == [(0.0, 1), (0.0, 1)]  # the first attempt as configured (greedy)
    assert seen[1] == [(RETRY_TEMPERATURE, 2)] * 2 and seen[2] == [(RETRY_TEMPERATURE, 3)] * 2
    assert RETRY_TEMPERATURE > 0 and len(set(texts)) > 2  # sampled retries say something else
    assert retry_temperature(0.3, 2) == 0.3 and retry_temperature(0.0, 1) == 0.0


def test_verdicts_carry_answer_lengths_so_the_stream_measures_the_longer_answer_rate(cfg):
    """Issue 22 (2): the stream worker sees only verdicts; they now carry both sides' answer lengths (all
    turns), so its health (JudgeHealth.add(v) without lengths, as streams/app.py calls it) has the rate."""
    from arena_flywheel.events import Verdict, decode
    from consumers.judge import JudgePool
    from consumers.judging.health import JudgeHealth

    pool = JudgePool(cfg)  # the reference judge
    try:
        short_right = _battle("42", "It is 6 times 7, which makes 41 in total.", "42")
        long_right = _battle("The product of six and seven is 42.", "40", "42")
        verdicts = pool.judge_many([short_right, long_right])
    finally:
        pool.close()
    assert [(v.length_a, v.length_b) for v in verdicts] == [(2, len("It is 6 times 7, which makes 41 in total.")),
                                                            (len("The product of six and seven is 42."), 2)]
    assert [v.winner for v in verdicts] == ["model_a", "model_a"]
    stream_health = JudgeHealth()
    for v in verdicts:
        stream_health.add(decode(v.encode(), Verdict))  # as the worker decodes it from the topic
    assert stream_health.rates()["longer_answer_win_rate"] == 0.5
