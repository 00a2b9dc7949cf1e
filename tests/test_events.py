"""Hostile and malformed input (issue 17) against the event contract (arena_flywheel/events.py): decode raises
only BadEvent, with a one-line reason, within cfg.limits; the text rule is the same for events built in code
and decoded ones; the events refuse self-battles and scores out of range; dead letters stay small. One test
runs the consumer loop on the real embedded broker with poison records between good ones."""
from __future__ import annotations

import hashlib
import json
import math
import random
import time

import pytest
from pydantic import ValidationError

from arena_flywheel.config import LimitsConfig
from arena_flywheel.consume import Batch, ConsumerLoop
from arena_flywheel.events import (BadEvent, Battle, Checkpoint, Contestant, DeadLetter, Failure, Game, Instruction,
                                   JudgeInfo, Message, Response, Verdict, clean_text, decode, stable_hash)
from arena_flywheel.kafka import Publisher, read_topic
from streams.reducer import RatingsRules, apply_verdicts

JUDGE = JudgeInfo(backend="openai", model="gpt-4", template_id="wizardarena-1", template_hash="abc123",
                  sampling={"temperature": 0.0})
MB = 1024 * 1024


def instruction(text: str = "Explain how a hash map handles collisions.") -> Instruction:
    return Instruction(messages=[Message(role="user", content=text)], split="eval", source="test")


def verdict(a: str = "alpha", b: str = "beta@c1", **kw) -> Verdict:
    ma, _, ca = a.partition("@")
    mb, _, cb = b.partition("@")
    fields = dict(battle_id="bat-5fe453e5de25923e4c21", instruction_id=instruction().id, split="eval",
                  competitor_a=a, competitor_b=b, model_a=ma, model_b=mb, checkpoint_a=ca or "base",
                  checkpoint_b=cb or "base",
                  games=[Game(order="ab", raw="9 2\nAssistant 1 is right.", score_a=9.0, score_b=2.0),
                         Game(order="ba", raw="3 8\nAssistant 2 is right.", score_a=8.0, score_b=3.0)],
                  score_a=17.0, score_b=5.0, winner="model_a", margin=12.0, judge=JUDGE)
    fields.update(kw)
    return Verdict(**fields)


def wire(event, **changes) -> dict:
    d = event.to_wire()
    d.pop("id")
    d.update(changes)
    return d


def refused(raw, expect=None, limits=None) -> str:
    with pytest.raises(BadEvent) as info:
        decode(raw, expect, limits)
    reason = info.value.reason
    assert reason and "\n" not in reason and len(reason) <= 1000
    return reason


# ------------------------------------------------------------------------------------------------ decode

def test_hostile_values_are_bad_events_with_a_clear_reason():
    good = verdict().encode()
    huge_int = good[:-1] + b',"n":' + b"9" * 5000 + b"}"
    cases = {
        None: "refused: an empty (null) record",
        b"null": "expected a JSON object, got null",
        b"[1, 2, 3]": "expected a JSON object, got array",
        b"17": "expected a JSON object, got number",
        b'"text"': "expected a JSON object, got string",
        b'{"pad": "' + b"x" * (10 * MB) + b'"}': "refused: a record of 10,485,771 bytes (limit 4,194,304)",
        b"[" * 200 + b"]" * 200: "refused: nested deeper than 32 levels",
        b'{"a":' * 200 + b"1" + b"}" * 200: "refused: nested deeper than 32 levels",
        huge_int: "refused: an integer of 5000 digits (limit 64)",
        json.dumps(wire(verdict()) | {"score_a": float("nan")}).encode(): "refused: NaN is not a JSON number",
        good.replace(b'"score_a":17.0', b'"score_a":Infinity'): "refused: Infinity is not a JSON number",
        good.replace(b'"score_a":17.0', b'"score_a":1e999'): "refused: a number out of range (1e999)",
        b'{"schema": "arena.verdict/1", "x": "\xff\xfe"}': "invalid UTF-8 at byte 36",
        good[:40]: "invalid JSON: ",
        b'{"schema": 5}': "missing or malformed 'schema' field",
        b'{"schema": "arena.nothing/1"}': "unknown schema 'arena.nothing'",
        b'{"schema": "arena.verdict/2"}': "unsupported version '2' of arena.verdict",
        json.dumps(wire(verdict(), battle_id=5)).encode(): "arena.verdict: field battle_id: Input should be a valid string",
        json.dumps(wire(verdict(), games={"order": "ab"})).encode(): "arena.verdict: field games: Input should be a valid list",
        json.dumps(wire(verdict(), created_at={"not": "a number"})).encode(): "arena.verdict: field created_at:",
    }
    for raw, reason in cases.items():
        assert refused(raw, Verdict).startswith(reason), (raw[:60] if raw else raw, reason)
    assert refused(12345) == "refused: a record of type int, not bytes"
    assert refused(instruction().encode(), Verdict) == "expected arena.verdict, got arena.instruction"


def test_limits_come_from_the_config():
    v = verdict(games=[Game(order="ab", raw="x" * 3000, score_a=9, score_b=2)])
    raw = v.encode()
    assert decode(raw, Verdict) == v
    small = LimitsConfig(max_record_bytes=2048)
    assert refused(raw, Verdict, small).startswith("refused: a record of 3,")
    assert refused(raw, Verdict, LimitsConfig(max_text_chars=2000)) == \
        "arena.verdict: field games.0.raw: a text of 3,000 characters (limit 2,000)"
    deep = json.dumps(wire(v, judge={**JUDGE.model_dump(), "sampling": {"a": [[[[[1]]]]]}})).encode()
    assert decode(deep, Verdict).judge.sampling == {"a": [[[[[1]]]]]}
    assert refused(deep, Verdict, LimitsConfig(max_depth=5)) == "refused: nested deeper than 5 levels"
    big = json.dumps(wire(v, judge={**JUDGE.model_dump(), "sampling": {"seed": 10 ** 30}})).encode()
    assert decode(big, Verdict).judge.sampling["seed"] == 10 ** 30
    assert refused(big, Verdict, LimitsConfig(max_int_digits=20)) == "refused: an integer of 31 digits (limit 20)"

    class Cfg:  # a Config: decode takes its .limits
        limits = small
    assert refused(raw, Verdict, Cfg()).startswith("refused: a record of 3,")


# ------------------------------------------------------------------------------------------------ validation

def test_a_competitor_never_battles_itself():
    with pytest.raises(ValidationError, match="against itself"):
        verdict("alpha", "alpha")
    assert refused(json.dumps(wire(verdict(), competitor_b="alpha", model_b="alpha", checkpoint_b="base")).encode(),
                   Verdict) == "arena.verdict: a verdict on 'alpha' against itself"
    ins = instruction()
    a = Contestant(response_id="res-1", model="alpha", answers=["1"])
    with pytest.raises(ValidationError, match="against itself"):
        Battle(instruction_id=ins.id, messages=ins.messages, a=a, b=a.model_copy(update={"response_id": "res-2"}))
    ok = Battle(instruction_id=ins.id, messages=ins.messages, a=a,
                b=Contestant(response_id="res-2", model="alpha", checkpoint="it1-sft", answers=["2"]))
    assert decode(ok.encode(), Battle) == ok  # checkpoints of one model are distinct competitors
    self_battle = wire(ok)
    self_battle["b"] = dict(self_battle["a"], response_id="res-2")
    assert refused(json.dumps(self_battle).encode(), Battle) == "arena.battle: a battle of 'alpha' against itself"
    base = dict(instruction_id=ins.id, messages=ins.messages, target="tgt", target_checkpoint="it1",
                target_answers=["no"], winner_answers=["yes"], margin=3.0)
    assert Failure(**base, winner_model="tgt").winner_model == "tgt"  # tgt (base) beat tgt@it1
    with pytest.raises(ValidationError, match="against itself"):
        Failure(**base, winner_model="tgt@it1")


@pytest.mark.parametrize("change, reason", [
    ({"score_a": -1.0}, "field score_a: Input should be greater than or equal to 0"),
    ({"score_b": 101.0}, "field score_b: Input should be less than or equal to 100"),
    ({"margin": -0.5}, "field margin: Input should be greater than or equal to 0"),
    ({"margin": 1e6}, "field margin: Input should be less than or equal to 100"),
    ({"games": [{"order": "ab", "score_a": 9.0, "score_b": 11e3}]}, "field games.0.score_b: Input should be less"),
])
def test_scores_and_margins_in_range(change, reason):
    assert reason in refused(json.dumps(wire(verdict(), **change)).encode(), Verdict)


def test_non_finite_scores_are_refused_in_code_too():
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValidationError):
            verdict(score_a=bad)
        with pytest.raises(ValidationError):
            verdict(margin=bad)
        with pytest.raises(ValidationError):
            Game(order="ab", score_a=bad)
    assert verdict(score_a=None, score_b=None, margin=0.0).score_a is None  # label judges give no scores
    assert verdict(score_a=0.0, score_b=100.0, margin=100.0).margin == 100.0


# ------------------------------------------------------------------------------------------------ the text rule

NOISY = "Sort\x00 these\x07 numbers:\t3 1 2\r\n\x1b[31mnow\x7f\x0b\x0c\x1f\ud800 é 中 🙂"
CLEAN = "Sort these numbers:\t3 1 2\r\n[31mnow é 中 🙂"


def test_the_text_rule():
    assert clean_text(NOISY) == CLEAN
    assert clean_text(CLEAN) == CLEAN
    assert clean_text("\x00") == "" and clean_text("\x80\u2028") == "\x80\u2028"  # C1 and separators stay
    long = "Line one\tok\r\n" + "é 中 🙂 text " * 20  # long texts are checked another way: same rule
    for bad in ["\x00", "\x01", "\x08", "\x0b", "\x0c", "\x0e", "\x1b", "\x1f", "\x7f", "\ud800", "\udfff"]:
        r = Response(instruction_id="ins-1", model="m", answers=[long + bad + long, bad], sampling={"s": long + bad})
        assert r.answers == [long + long, ""] and r.sampling == {"s": long}
    assert Response(instruction_id="ins-1", model="m", answers=[long + "\x80"]).answers == [long + "\x80"]


@pytest.mark.parametrize("ascii_only", [False, True])
def test_control_characters_are_removed_alike_in_code_and_on_the_wire(ascii_only):
    built = Instruction(messages=[Message(role="system", content="Be\x00 brief."), Message(role="user", content=NOISY)],
                        split="eval", source="feed\x00", tags=["a\x01b"], reference="1\x002")
    assert [m.content for m in built.messages] == ["Be brief.", CLEAN]
    assert (built.source, built.tags, built.reference) == ("feed", ["ab"], "12")
    raw = json.dumps({"schema": "arena.instruction/1", "split": "eval", "source": "feed\x00", "tags": ["a\x01b"],
                      "reference": "1\x002", "messages": [{"role": "system", "content": "Be\x00 brief."},
                                                          {"role": "user", "content": NOISY}]},
                     ensure_ascii=ascii_only).encode("utf-8", "surrogatepass" if not ascii_only else "strict")
    if not ascii_only:  # a lone surrogate cannot be sent as UTF-8 at all: the wire form without it
        raw = raw.replace("\ud800".encode("utf-8", "surrogatepass"), b"")
    got = decode(raw, Instruction)
    assert got.id == built.id and got.messages == built.messages
    assert decode(built.encode(), Instruction) == built
    assert b"\\u0000" not in built.encode() and b"\x00" not in built.encode()


def test_nested_texts_of_every_event_are_cleaned():
    v = verdict(policy="score\x00-sum",
                games=[Game(order="ab", raw="9\x00 2", score_a=9, score_b=2, preference="A\x1b>B", error=None)],
                judge=JudgeInfo(backend="openai\x00", sampling={"stop\x00": ["\x00</s>"], "n": 1}))
    assert (v.policy, v.games[0].raw, v.games[0].preference) == ("score-sum", "9 2", "A>B")
    assert (v.judge.backend, v.judge.sampling) == ("openai", {"stop": ["</s>"], "n": 1})
    assert decode(json.dumps(wire(v) | {"policy": "score\x00-sum"}).encode(), Verdict).id == v.id
    r = Response(instruction_id="ins-1", model="m\x00", answers=["a\x00", "b\x7f"], sampling={"k": "v\x08"})
    assert (r.model, r.answers, r.sampling) == ("m", ["a", "b"], {"k": "v"})
    c = Checkpoint(model="m", checkpoint="c\x001", path="/p", metrics={"loss\x00": 1.0})
    assert (c.checkpoint, c.metrics) == ("c1", {"loss": 1.0})
    ct = Contestant(response_id="r\x00", model="m", answers=["x\x00y"])
    assert (ct.response_id, ct.answers) == ("r", ["xy"])


def test_an_id_computed_over_uncleaned_text_does_not_match():
    msgs = [{"role": "user", "content": "What is 2 + 2?\x00"}]
    stale = "ins-" + stable_hash([dict(m) for m in msgs])
    assert Instruction(messages=msgs).id != stale
    reason = refused(json.dumps({"schema": "arena.instruction/1", "id": stale, "messages": msgs}).encode(),
                     Instruction)
    assert reason.startswith(f"arena.instruction: id '{stale}' does not match its content")


def test_a_user_turn_of_control_characters_only_is_empty():
    with pytest.raises(ValidationError, match="must not be empty"):
        instruction("\x00\x01\x7f")
    assert "user messages must not be empty" in refused(
        json.dumps({"schema": "arena.instruction/1", "messages": [{"role": "user", "content": "\x00 \x07"}]}).encode())


# ------------------------------------------------------------------------------------------------ dead letters

def test_a_dead_letter_keeps_a_bounded_excerpt_and_the_size():
    huge = b'{"pad": "' + "é".encode() * (5 * MB) + b'"}'  # 10 MB of two-byte characters
    dl = DeadLetter.of("arena.verdicts[0]@7", "refused: too big", huge, "stream.ratings")
    assert dl.raw_bytes == len(huge) and len(dl.encode()) < 6000
    assert len(dl.raw.encode()) <= 4096 and dl.raw.startswith('{"pad": "éé') and "\\x" not in dl.raw  # cut whole
    small = DeadLetter.of("s", "r", huge, limits=LimitsConfig(dead_letter_excerpt_bytes=64))
    assert len(small.raw.encode()) <= 64
    odd = DeadLetter.of("s", "bad\nreason " + "x" * 5000, b'{"a": "\x00\xff\x1b"}')
    assert odd.raw == '{"a": "\\x00\\xff\\x1b"}' and odd.raw_bytes == 12  # escaped, not lost or stripped
    assert "\n" not in odd.reason and len(odd.reason) <= 1000
    assert DeadLetter.of("s", "r", None).raw_bytes is None
    legacy = json.dumps({"schema": "arena.deadletter/1", "source": "f:1", "reason": "r", "raw": "x"}).encode()
    assert decode(legacy, DeadLetter).raw_bytes is None  # records older than raw_bytes still decode


def test_the_reducer_dead_letters_poison_verdicts_and_applies_the_rest():
    rules = RatingsRules(targets=frozenset(), failure_margin=2.0, limits=LimitsConfig())
    good = [verdict(battle_id=f"bat-{i}").encode() for i in range(3)]
    self_verdict = json.dumps(wire(verdict(), competitor_b="alpha", model_b="alpha")).encode()
    batch = [(1, good[0]), (2, None), (3, b"[" * 500), (4, good[1][:-1] + b',"n":' + b"7" * 5000 + b"}"),
             (5, self_verdict), (6, b'{"x":"' + b"y" * (5 * MB) + b'"}'), (7, good[1]), (8, good[2])]
    red = apply_verdicts(0, None, set(), {}, {}, batch, rules)
    assert [off for off, _ in red.dead] == [2, 3, 4, 5, 6]
    assert len(red.accepted) == 3 and red.state["offset"] == 8 and red.state["applied"] == 3


# ------------------------------------------------------------------------------------------------ on the broker

def test_consumer_loop_dead_letters_poison_records_and_handles_every_good_one(cfg):
    topic = cfg.topic("instructions.train")
    good = [Instruction(messages=[Message(role="user", content=f"Add {i} and {i + 1}.")], source="test")
            for i in range(4)]
    huge_int = good[0].encode()[:-1] + b',"n":' + b"9" * 5000 + b"}"
    poison = [None, b'{"pad":"' + b"x" * (5 * MB) + b'"}', huge_int]
    with Publisher(cfg) as pub:
        for ins, bad in zip(good, poison + [None]):
            pub.send(ins, topic=topic)
            if ins is not good[-1]:
                pub.send_raw(topic, ins.id.encode(), bad)  # same key: same partition, after a good one
        pub.flush()
    got: list[Batch] = []
    loop = ConsumerLoop(cfg, [topic], "events-poison", got.append, expect=Instruction, stage="test-poison")
    deadline = time.monotonic() + 60
    with loop:
        while sum(len(b.items) + len(b.dead) for b in got) < 7 and time.monotonic() < deadline:
            loop.poll_once()
    assert sorted(i.event.id for b in got for i in b.items) == sorted(i.id for i in good)
    dead = {d.raw_bytes: d for b in got for d in b.dead}
    assert sorted(dead, key=lambda n: n or 0) == [None, len(huge_int), len(poison[1])]
    assert dead[None].reason == "refused: an empty (null) record" and dead[None].raw == ""
    assert dead[len(poison[1])].reason == f"refused: a record of {len(poison[1]):,} bytes (limit 4,194,304)"
    assert dead[len(poison[1])].raw.startswith('{"pad":"xxx') and len(dead[len(poison[1])].raw) <= 4096
    assert dead[len(huge_int)].reason == "refused: an integer of 5000 digits (limit 64)"
    assert dead[len(huge_int)].raw == huge_int[:4096].decode()
    assert all(d.source.startswith(f"{topic}[") and "]@" in d.source for d in dead.values())
    assert loop.stats.bad_records == 3 and loop.stats.dead_letters == 3
    letters = [e for e in read_topic(cfg, "deadletter", DeadLetter) if e.stage == "test-poison"]
    assert sorted(d.source for d in letters) == sorted(d.source for d in dead.values())


@pytest.mark.parametrize("parts", [("bat-1", "reference::t:", "score-sum"), ('a "quoted" \\ back', "tab\there", "\x00\x1f"),
                                   ("naïve ☃ 中文 🎉", "", "\u2028\u2029"), ("only one",), ("s", 1, 2.5, None),
                                   (["list"], {"b": 1, "a": 2})])
def test_stable_hash_is_the_hash_of_the_sorted_compact_json(parts):
    """Ids are hashes of json.dumps(parts, sort_keys, ensure_ascii=False, compact); the string-only fast path
    must give the same text (an id that changed would make every stored id a mismatch)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    assert stable_hash(*parts) == hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]
    assert stable_hash(*parts, length=64) == hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _standard_loads(raw, **limits):
    """safejson.loads as it was before its fast path: the standard parser decides everything."""
    from arena_flywheel import safejson
    saved = safejson._may_need_hooks
    safejson._may_need_hooks = lambda data, digits: True
    try:
        return ("ok", safejson.loads(raw, **limits))
    except safejson.JSONLimitError as exc:
        return ("refused", str(exc))
    finally:
        safejson._may_need_hooks = saved


def test_the_fast_json_path_gives_what_the_standard_parser_gives():
    """safejson.loads parses with pydantic_core when the text needs no number hooks; for every text (good,
    hostile, random) it must return the same value or refuse with the same reason as the standard parser."""
    from arena_flywheel import safejson
    from tests.fuzz_records import hostile_values

    rng = random.Random(7)
    good = [verdict().encode(), json.dumps(wire(verdict(), score_a=1e308, created_at=1.5e-300)).encode(), b'{"a":"\\ud800 lone","b":[1,2.5e-300]}',
            '{"a":"\\udc00","n":-0}'.encode(), b'{"a":1e999}', b'{"a":-1E+400}', b'{"a":' + b"9" * 64 + b"}",
            b'{"a":' + b"9" * 65 + b"}", b'{"a":"' + b"1" * 80 + b'"}', b'{"a":"e000 0e000"}', b'{"k":1,"k":2}',
            '{"t":"naïve ☃ \u2028"}'.encode(), b" [1] ", b"", b"{", b'{"a":NaN}', b'{"a":"\xff"}', b'\xef\xbb\xbf{}',
            b'{"a":"x\x00"}', b'{"a":01}', b"[" * 40 + b"]" * 40, b'"' + b"[" * 40 + b'"']
    hostile = [v for _, v in hostile_values(rng, lambda i: verdict(), 300, max_record_bytes=4096)]
    noise = [bytes(rng.randrange(256) for _ in range(rng.randint(0, 40))) for _ in range(300)]
    mutated = []
    for _ in range(300):  # a good record with a few bytes changed
        b = bytearray(verdict().encode())
        for _ in range(rng.randint(1, 3)):
            b[rng.randrange(len(b))] = rng.choice(b'0123456789eE+-.,:"{}[]\\ \x00\xff')
        mutated.append(bytes(b))
    fast = 0
    for raw in good + hostile + noise + mutated:
        for form in ([raw] + ([raw.decode("utf-8")] if _utf8(raw) else [])) if raw is not None else [None]:
            try:
                got = ("ok", safejson.loads(form, max_bytes=4096))
            except safejson.JSONLimitError as exc:
                got = ("refused", str(exc))
            assert got == _standard_loads(form, max_bytes=4096), form
            fast += got[0] == "ok" and not safejson._may_need_hooks(form if isinstance(form, bytes) else form.encode(), 64)
    assert fast >= 5  # the fast path was taken


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False
