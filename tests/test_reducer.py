"""The ratings agent's reducer (streams/reducer.py) without Faust or a broker: counts, the exactly-once
rules (offset watermark, processed ids, id-record restore), dead letters, failures and retention."""
from __future__ import annotations

import copy
import json

import pytest

from arena_flywheel.config import load_config
from arena_flywheel.events import (Battle, Contestant, Instruction, JudgeInfo, Message, Response, Verdict,
                                   competitor_name)
from streams import state as S
from streams.reducer import RatingsRules, apply_verdicts, loss_key

P = 3  # the partition under test
RULES = RatingsRules(targets=frozenset({"target"}), failure_margin=2.0)
JUDGE = JudgeInfo(backend="openai", model="gpt-4o-2024-08-06", template_id="pairwise-v2",
                  template_hash="9c1e4b7a", sampling={"temperature": 0.0})


def instruction(text: str, split: str = "train") -> Instruction:
    return Instruction(messages=[Message(role="user", content=text)], split=split, source="wizardlm-evol",
                       category="coding")


def response(ins: Instruction, model: str, checkpoint: str = "base") -> Response:
    return Response(instruction_id=ins.id, split=ins.split, model=model, checkpoint=checkpoint,
                    answers=[f"[{model}@{checkpoint}] answer to: {ins.messages[0].content}"],
                    backend="vllm", output_tokens=120)


def verdict(ins: Instruction, a: Response, b: Response, winner: str, margin: float = 3.0) -> Verdict:
    battle = Battle(instruction_id=ins.id, split=ins.split, messages=ins.messages, plan="target-vs-all",
                    a=Contestant(response_id=a.id, model=a.model, checkpoint=a.checkpoint, answers=a.answers),
                    b=Contestant(response_id=b.id, model=b.model, checkpoint=b.checkpoint, answers=b.answers))
    hi = 8.0
    score_a, score_b = {"model_a": (hi, hi - margin), "model_b": (hi - margin, hi)}.get(winner, (hi, hi))
    return Verdict(battle_id=battle.id, instruction_id=ins.id, split=ins.split, competitor_a=a.competitor,
                   competitor_b=b.competitor, model_a=a.model, model_b=b.model, checkpoint_a=a.checkpoint,
                   checkpoint_b=b.checkpoint, score_a=score_a, score_b=score_b, winner=winner,
                   margin=margin if winner in ("model_a", "model_b") else 0.0, judge=JUDGE)


def rejudged(v: Verdict, margin: float | None = None) -> Verdict:
    """The same battle judged again under a revised template: another verdict id."""
    data = v.model_dump(exclude={"id"})
    data["judge"] = JUDGE.model_copy(update={"template_hash": "d04f2a61"})
    if margin is not None:
        data["margin"] = margin
    return Verdict(**data)


def pairing_of(ins: Instruction, *responses: Response) -> dict:
    """The pairing table's records of one instruction, as the pairing agent writes them."""
    rec = {"responses": {}, "emitted": []}
    for r in responses:
        S.add_response(rec, r)
    return {f"i:{ins.id}": S.instruction_record(ins), f"r:{ins.id}": rec}


def records_after(records: dict, red) -> dict:
    """The ratings table after the agent performed `red`'s writes (loss records held as their text, as the
    agent holds them)."""
    out = dict(records)
    out.update({k: S.loss_text(rec) for k, rec in red.loss_records.items()})
    if red.restore:
        out[red.restore[0]] = red.restore[1]
    out[f"p:{P}"] = red.state
    if red.ids_record:
        out[red.ids_record[0]] = red.ids_record[1]
    return out


TARGET = competitor_name("target", "it1-sft")
assert TARGET == "target@it1-sft"


@pytest.fixture
def arena():
    """Two eval instructions and one train instruction, answered by the target's it1-sft checkpoint and
    two opponents."""
    ev1, ev2 = instruction("Explain Python's GIL in two sentences.", "eval"), instruction("What is a monad?", "eval")
    tr = instruction("Write a Python function that merges two sorted lists.", "train")
    resp = {(ins.id, m): response(ins, m, ck) for ins in (ev1, ev2, tr)
            for m, ck in (("target", "it1-sft"), ("ace", "base"), ("sage", "base"))}
    return ev1, ev2, tr, resp


def test_counts_are_applied(arena):
    ev1, ev2, _, resp = arena
    r = lambda ins, m: resp[(ins.id, m)]  # noqa: E731
    vs = [verdict(ev1, r(ev1, "target"), r(ev1, "ace"), "model_a"),
          verdict(ev1, r(ev1, "ace"), r(ev1, "sage"), "tie"),
          verdict(ev2, r(ev2, "sage"), r(ev2, "target"), "model_a"),
          verdict(ev2, r(ev2, "ace"), r(ev2, "target"), "invalid")]
    rules = RULES
    red = apply_verdicts(P, None, set(), {}, {}, [(10 + i, v.encode()) for i, v in enumerate(vs)], rules)
    st = red.state
    assert (st["offset"], st["applied"], st["invalid"], st["duplicates"]) == (13, 4, 1, 0)
    assert st["counts"]["eval"] == {f"{TARGET}\tace": {"model_a": 1}, "ace\tsage": {"tie": 1},
                                    f"sage\t{TARGET}": {"model_a": 1}, f"ace\t{TARGET}": {"invalid": 1}}
    assert st["counts"]["train"] == {} and "elo" not in st
    assert red.ids == [v.id for v in vs] and [v.id for v in red.accepted] == red.ids
    assert st["recent"] == red.ids and red.ids_record == (f"b:{P}:13", red.ids)
    # a target's loss on eval is no Failure and keeps no loss record (the ledger has it)
    assert not red.failures and not red.dead and red.restore is None and red.missing_answers == 0
    assert red.loss_records == {}

    # the next batch builds on the record: counts add up; the first record is untouched
    before = copy.deepcopy(st)
    again = rejudged(vs[0])
    red2 = apply_verdicts(P, st, set(red.ids), records_after({}, red), {}, [(14, again.encode())], rules)
    assert st == before  # the reducer changes copies only
    assert red2.state["counts"]["eval"][f"{TARGET}\tace"] == {"model_a": 2}
    assert red2.state["applied"] == 5 and red2.ids == [again.id]


def test_redelivered_record_and_resent_id_are_duplicates(arena):
    ev1, ev2, _, resp = arena
    r = lambda ins, m: resp[(ins.id, m)]  # noqa: E731
    v1 = verdict(ev1, r(ev1, "target"), r(ev1, "ace"), "model_a")
    v2 = verdict(ev1, r(ev1, "sage"), r(ev1, "ace"), "model_b")
    v3 = verdict(ev2, r(ev2, "target"), r(ev2, "sage"), "tie")
    first = apply_verdicts(P, None, set(), {}, {}, [(10, v1.encode()), (11, v2.encode())], RULES)
    seen = set(first.ids)
    batch = [(11, v2.encode()),   # redelivered after a crash: at or below the applied offset
             (12, v1.encode()),   # the judge published v1 twice: same id, new record
             (13, v3.encode()),
             (14, v3.encode())]   # and a duplicate inside one batch
    red = apply_verdicts(P, first.state, seen, records_after({}, first), {}, batch, RULES)
    st = red.state
    assert st["duplicates"] == 3 and st["applied"] == 3 and st["offset"] == 14
    assert red.ids == [v3.id] and [v.id for v in red.accepted] == [v3.id]
    assert st["counts"]["eval"] == {f"{TARGET}\tace": {"model_a": 1}, "sage\tace": {"model_b": 1},
                                    f"{TARGET}\tsage": {"tie": 1}}


def test_undecodable_records_are_dead_letters_and_the_batch_goes_on(arena):
    ev1, _, tr, resp = arena
    v = verdict(ev1, resp[(ev1.id, "target")], resp[(ev1.id, "ace")], "model_b")
    batch = [(20, b'{"schema": "arena.verdict/1", "winner": "model_a"'), (21, tr.encode()), (22, v.encode()),
             (23, b"\xff\xfe")]
    red = apply_verdicts(P, None, set(), {}, {}, batch, RULES)
    assert [off for off, _ in red.dead] == [20, 21, 23]
    assert red.dead[0][1].startswith("invalid JSON") and red.dead[1][1] == "expected arena.verdict, got arena.instruction"
    assert red.dead[2][1].startswith("invalid UTF-8")
    assert red.ids == [v.id] and red.state["applied"] == 1 and red.state["offset"] == 23
    # the bad records are past the offset: redelivered, they are duplicates, not dead letters again
    again = apply_verdicts(P, red.state, set(red.ids), records_after({}, red), {}, batch, RULES)
    assert not again.dead and again.state["duplicates"] == 4


def test_a_target_train_loss_at_the_margin_is_a_failure_with_the_winners_answers(arena):
    _, _, tr, resp = arena
    tgt, ace, sage = (resp[(tr.id, m)] for m in ("target", "ace", "sage"))
    pairing = pairing_of(tr, tgt, ace, sage)
    lost = verdict(tr, tgt, ace, "model_b", margin=2.0)      # exactly the failure margin: selected
    lost_more = verdict(tr, sage, tgt, "model_a", margin=4.5)  # the target on side b, a bigger loss
    red = apply_verdicts(P, None, set(), {}, pairing, [(30, lost.encode()), (31, lost_more.encode())], RULES)
    assert len(red.failures) == 1 and red.missing_answers == 0
    f = red.failures[0]
    assert (f.instruction_id, f.split, f.target, f.target_checkpoint) == (tr.id, "train", "target", "it1-sft")
    assert f.target_answers == tgt.answers
    assert (f.winner_model, f.winner_answers, f.margin) == ("sage", sage.answers, 4.5)  # the best winner so far
    assert (f.score_target, f.score_winner) == (8.0 - 4.5, 8.0)
    assert f.verdict_ids == sorted([lost.id, lost_more.id]) and f.losses == 2
    assert f.battle_ids == sorted([lost.battle_id, lost_more.battle_id]) and f.judge == JUDGE
    assert f.messages == tr.messages
    rec = red.loss_records[loss_key(P, tr.id)]
    assert set(rec) == {f"{lost.id}:a", f"{lost_more.id}:b"} and all(e["selected"] for e in rec.values())
    assert [e["offset"] for e in rec.values()] == [30, 31]  # the record's age, for retention
    assert red.state["counts"]["train"] == {f"{TARGET}\tace": {"model_b": 1}, f"sage\t{TARGET}": {"model_a": 1}}

    # a later batch adds to the stored loss record and re-sends the Failure with all losses
    third = rejudged(lost, margin=3.0)
    red2 = apply_verdicts(P, red.state, set(red.ids), records_after({}, red), pairing, [(32, third.encode())],
                          RULES)
    assert len(red2.loss_records[loss_key(P, tr.id)]) == 3 and red2.failures[0].losses == 3


def test_no_failure_below_the_margin_on_eval_or_without_answers(arena):
    ev1, _, tr, resp = arena
    t_tr, a_tr = resp[(tr.id, "target")], resp[(tr.id, "ace")]
    t_ev, a_ev = resp[(ev1.id, "target")], resp[(ev1.id, "ace")]
    pairing = {**pairing_of(tr, t_tr, a_tr), **pairing_of(ev1, t_ev, a_ev)}
    close = verdict(tr, t_tr, a_tr, "model_b", margin=1.5)   # below the margin
    on_eval = verdict(ev1, t_ev, a_ev, "model_b", margin=6.0)  # eval battles never feed training
    won = verdict(tr, a_tr, t_tr, "model_b", margin=5.0)      # the target won: no loss at all
    red = apply_verdicts(P, None, set(), {}, pairing, [(40, close.encode()), (41, on_eval.encode()),
                                                       (42, won.encode())], RULES)
    assert not red.failures and red.missing_answers == 0
    assert red.loss_records == {}  # only losses that make Failures are kept
    # a selected loss whose answers the pairing table does not hold (yet) is counted, not sent
    big = rejudged(close, margin=2.5)
    red2 = apply_verdicts(P, None, set(), {}, {}, [(43, big.encode())], RULES)
    assert not red2.failures and red2.missing_answers == 1


def test_applying_the_same_batch_twice_changes_nothing(arena):
    ev1, _, tr, resp = arena
    tgt, ace, sage = (resp[(tr.id, m)] for m in ("target", "ace", "sage"))
    pairing = pairing_of(tr, tgt, ace, sage)
    batch = [(50, verdict(tr, tgt, ace, "model_b", margin=3.0).encode()), (51, b"not json"),
             (52, verdict(ev1, resp[(ev1.id, "ace")], resp[(ev1.id, "target")], "tie").encode()),
             (53, verdict(tr, sage, tgt, "model_a", margin=2.0).encode())]
    first = apply_verdicts(P, None, set(), {}, pairing, batch, RULES)
    assert first.failures and first.loss_records and first.ids
    records, seen = records_after({}, first), set(first.ids)
    snapshot = copy.deepcopy(records)
    redelivered, resent = batch, [(60 + i, raw) for i, (_, raw) in enumerate(batch)]
    for again, moved, dead in ((redelivered, set(), []), (resent, {"offset"}, [61])):
        red = apply_verdicts(P, first.state, seen, records, pairing, again, RULES)
        assert not red.loss_records and not red.failures and not red.accepted and not red.ids
        assert red.restore is None and red.ids_record is None
        assert {k for k in red.state if red.state[k] != first.state[k]} == {"duplicates"} | moved
        # a re-sent undecodable record is a new record, so it is dead-lettered again (nothing is counted)
        assert [off for off, _ in red.dead] == dead
        assert red.state["duplicates"] == first.state["duplicates"] + len(batch) - len(dead)
    assert records == snapshot  # the inputs are read, never written


def test_a_lost_id_record_is_restored_before_the_partition_record_moves_on(arena):
    ev1, ev2, _, resp = arena
    v1 = verdict(ev1, resp[(ev1.id, "target")], resp[(ev1.id, "ace")], "model_a")
    v2 = verdict(ev2, resp[(ev2.id, "sage")], resp[(ev2.id, "ace")], "model_b")
    first = apply_verdicts(P, None, set(), {}, {}, [(70, v1.encode())], RULES)
    crashed = records_after({}, first)
    del crashed[first.ids_record[0]]  # the partition record landed, its id record did not
    red = apply_verdicts(P, first.state, set(first.state["recent"]), crashed, {}, [(71, v2.encode())], RULES)
    assert red.restore == (f"b:{P}:70", [v1.id])
    assert red.ids_record == (f"b:{P}:71", [v2.id]) and red.state["recent"] == [v2.id]
    # with the id record in place there is nothing to restore
    ok = apply_verdicts(P, first.state, set(first.ids), records_after({}, first), {}, [(71, v2.encode())], RULES)
    assert ok.restore is None


def test_rules_from_config():
    cfg = load_config(env={}, overrides={"arena.targets": ["target"], "trainer.threshold_schedule": [3.0, 1.5, 2.0]})
    rules = RatingsRules.from_config(cfg)
    assert rules.targets == {"target"} and rules.failure_margin == 1.5


def test_retention_keeps_at_least_the_window_and_drops_the_oldest():
    ids = S.Retention(1000)
    assert ids.add("b:0:499", 500) == [] and ids.add("b:0:999", 500) == []
    assert ids.add("b:0:1299", 300) == []            # 1,300 held: dropping the oldest would leave 800 < 1,000
    assert ids.add("b:0:1999", 700) == ["b:0:499", "b:0:999"]  # 1,000 remain
    assert list(ids.keys) == ["b:0:1299", "b:0:1999"] and ids.total == 1000
    assert S.Retention(10).add("b:0:5000", 5000) == []  # the newest record is always kept
    losses = S.Retention(2)
    assert losses.add("l:0:x") == losses.add("l:0:y") == []
    assert losses.add("l:0:x") == []                 # written again: now the most recent
    assert losses.add("l:0:z") == ["l:0:y"] and list(losses.keys) == ["l:0:x", "l:0:z"]


def test_loss_homes_release_a_batch_record_once_it_holds_no_latest_copy():
    h = S.LossHomes()
    assert h.place("l:0:a", "L:0:5") == [] and h.place("l:0:b", "L:0:5") == []
    assert h.place("l:0:a", "L:0:9") == []  # L:0:5 still holds b's latest copy
    assert h.place("l:0:a", "L:0:9") == []  # rewritten in the same batch record: nothing moves
    assert h.drop("l:0:b") == ["L:0:5"]     # retention took b: L:0:5 holds nothing current
    assert h.place("l:0:c", "l:0:c") == []  # an older version's loss record is its own home
    assert h.place("l:0:c", "L:0:9") == ["l:0:c"]  # rewritten into a batch record: the old record goes
    assert h.drop("l:0:a") == []            # L:0:9 still holds c
    assert h.drop("l:0:c") == ["L:0:9"]
    assert h.drop("l:0:unknown") == [] and h.home == {} and h.held == {}


def test_a_batch_of_large_loss_records_goes_out_in_records_under_the_size_limit(monkeypatch):
    """The producer refuses a record over its max_request_size (1 MB by default): a batch's loss records are
    split into batch records of at most about S.LOSS_BATCH_BYTES of JSON, in a write order the rebuild reads."""
    monkeypatch.setattr(S, "LOSS_BATCH_BYTES", 1000)
    records = {f"l:3:ins-{i}": {f"ver-{i}:{k}:a": {"margin": 3.0, "pad": "x" * 100} for k in range(3)} for i in range(10)}
    out = S.loss_batches(3, 77, records)
    assert [home for home, _, _ in out][:3] == ["L:3:77", "L:3:77+1", "L:3:77+2"]
    assert all(len(raw) <= 1000 for _, _, raw in out) and len(out) == 5
    assert {k: S.loss_record(t) for _, texts, _ in out for k, t in texts.items()} == records  # each once, all of them
    assert all(json.loads(raw) == {k: json.loads(t) for k, t in texts.items()} for _, texts, raw in out)
    big = {"l:3:huge": {f"ver-{k}:a": {"pad": "y" * 500} for k in range(5)}}
    assert [home for home, _, _ in S.loss_batches(3, 80, big)] == ["L:3:80"]  # one record larger than the limit: alone
    homes = ["L:3:100", "L:3:99+2", "L:3:99", "L:3:100+1", "L:3:99+10"]
    assert sorted(homes, key=S.home_order) == ["L:3:99", "L:3:99+2", "L:3:99+10", "L:3:100", "L:3:100+1"]
