"""Fuzz tests per consumer on the real embedded broker: a few hundred random and adversarial records (null,
nested, huge numbers, oversized, invalid UTF-8, wrong types, self-battles, NaN, truncated, id mismatches)
mixed into good ones, with good ones carrying control characters too. Afterwards every good record was
handled exactly once, every bad one is a dead letter with its source, and no service stopped."""
from __future__ import annotations

import json
import random
import threading

import pytest

from arena_flywheel.config import CompetitorConfig
from arena_flywheel.events import (
    Battle,
    Contestant,
    DeadLetter,
    Failure,
    Instruction,
    JudgeInfo,
    Message,
    Response,
    Verdict,
)
from arena_flywheel.kafka import Publisher, read_topic
from arena_flywheel.store import LedgerStore
from consumers.generate import GenerationPool
from consumers.judge import JudgePool
from consumers.ledger import Ledger
from tests.conftest import wait_until
from tests.fuzz_records import hostile_values, mix, self_battle
from trainer.service import TrainerService

pytestmark = pytest.mark.slow

JUDGE = JudgeInfo(backend="reference", template_id="reference-v1", template_hash="h")
N_BAD = 120
N_GOOD = 60
LIMIT = 64 * 1024  # max_record_bytes in these tests: oversized records stay cheap to make


def _fast(cfg):
    cfg.kafka.session_timeout_ms = 1000
    cfg.kafka.heartbeat_interval_ms = 300
    cfg.limits.max_record_bytes = LIMIT
    return cfg


def instruction(i: int) -> Instruction:
    # every fifth one carries control characters: cleaned by the event rule, then a good record
    noise = "\x00\x07\x1b" if i % 5 == 0 else ""
    return Instruction(messages=[Message(role="user", content=f"What is {i} plus {i + 1}?{noise}")], split="train",
                       source="fuzz", reference=str(2 * i + 1))


def battle(i: int) -> Battle:
    ins = instruction(i)
    return Battle(instruction_id=ins.id, split="train", messages=ins.messages, reference=ins.reference,
                  a=Contestant(response_id=f"ra{i}", model="ace", answers=[str(2 * i + 1)]),
                  b=Contestant(response_id=f"rb{i}", model="target", checkpoint="it1-sft", answers=[f"{i}?"]))


def verdict(i: int, split: str = "eval") -> Verdict:
    b = battle(i)
    return Verdict(battle_id=b.id, instruction_id=b.instruction_id, split=split, competitor_a="ace",
                   competitor_b="target@it1-sft", model_a="ace", model_b="target", checkpoint_b="it1-sft",
                   score_a=19.0, score_b=4.0, winner="model_a" if i % 3 else "model_b", margin=15.0, judge=JUDGE)


def failure(i: int) -> Failure:
    ins = instruction(i)
    return Failure(instruction_id=ins.id, target="target", target_checkpoint="base", messages=ins.messages,
                   target_answers=[f"{i}?"], winner_model="ace", winner_answers=[str(2 * i + 1)], margin=3.0 + i % 3,
                   battle_ids=[f"bat{i}"], verdict_ids=[f"ver{i}"], judge=JUDGE)


def _send(cfg, topic: str, values: list[bytes | None]) -> None:
    with Publisher(cfg) as pub:
        for k, v in enumerate(values):
            pub.send_raw(cfg.topic(topic), f"k{k % 7}".encode(), v)
        pub.flush()


def _bad_set(rng, good, expect_other, extra=()):
    bad = hostile_values(rng, good, N_BAD, max_record_bytes=LIMIT, wrong_type=expect_other)
    return bad + [(label, v) for label, v in extra]


def _dead(cfg, stage_prefix: str) -> list[DeadLetter]:
    return [d for d in read_topic(cfg, "deadletter", DeadLetter, timeout_s=30) if d.stage.startswith(stage_prefix)]


def test_ledger_sqlite(cfg):
    _ledger_fuzz(_fast(cfg), seed=1)


def test_ledger_postgresql(cfg, pg_url):
    cfg = _fast(cfg)
    cfg.db.url = pg_url
    _ledger_fuzz(cfg, seed=2)


def _ledger_fuzz(cfg, seed: int):
    rng = random.Random(seed)
    good = [instruction(i) for i in range(N_GOOD)] + [verdict(i) for i in range(N_GOOD)]
    bad = _bad_set(rng, instruction, None, extra=[("self-battle", self_battle(verdict(900 + k))) for k in range(5)])
    _send(cfg, "instructions.train", mix(rng, [e.encode() for e in good], bad))
    with Ledger(cfg) as ledger:
        ledger.drain(idle_s=1.5, timeout_s=180)
        assert ledger.bad_records == len(bad)
    with LedgerStore(cfg.db.url) as store:
        stored = {e.id for kind in ("instruction", "verdict") for e in store.events(kind)}
        assert stored == {e.id for e in good}  # each good one once (ids are primary keys), nothing else
        assert all("\x00" not in i.messages[0].content for i in store.events("instruction"))
        dead = [d for d in store.events("deadletter") if d.stage == "ledger"]
    assert len(dead) == len(bad)
    assert all(d.source.startswith(cfg.topic("instructions.train") + "[") for d in dead)
    assert max(len(d.raw.encode()) for d in dead) <= cfg.limits.dead_letter_excerpt_bytes * 4


def test_judge_pool(cfg):
    cfg = _fast(cfg)
    rng = random.Random(3)
    good = [battle(i) for i in range(N_GOOD)]
    bad = _bad_set(rng, battle, verdict(0), extra=[("self-battle", self_battle(battle(900 + k))) for k in range(5)])
    _send(cfg, "battles", mix(rng, [b.encode() for b in good], bad))
    pool = JudgePool(cfg)
    try:
        assert wait_until(lambda: pool.counts["battles"] + pool.counts["dead_letters"] >= len(good) + len(bad),
                      every=pool.poll_once)
    finally:
        pool.close()
    verdicts = read_topic(cfg, "verdicts", Verdict, timeout_s=30)
    assert sorted(v.battle_id for v in verdicts) == sorted(b.id for b in good)
    assert len(_dead(cfg, "judge")) == len(bad)


def test_generation_pool(cfg, tmp_path):
    cfg = _fast(cfg)
    rng = random.Random(4)
    good = [instruction(i) for i in range(N_GOOD)]
    answers = tmp_path / "outputs.json"  # a replay competitor (AlpacaEval outputs): a real backend, no model
    answers.write_text(json.dumps([{"instruction": i.messages[0].content, "output": f"{k}"}
                                   for k, i in enumerate(good)]))
    comp = CompetitorConfig(name="replayer", backend="replay", model=str(answers), splits=["train"], batch_size=16)
    bad = _bad_set(rng, instruction, verdict(0))
    _send(cfg, "instructions.train", mix(rng, [i.encode() for i in good], bad))
    stop = threading.Event()
    pool = GenerationPool(cfg, comp, log_every_s=0, poll_timeout_ms=50)
    t = threading.Thread(target=pool.run, args=(stop,), daemon=True)
    t.start()
    try:
        assert wait_until(lambda: pool.stats()["instructions"] + pool.stats()["bad_records"] + pool.stats()["errors"]
                      >= len(good) + len(bad))
        assert t.is_alive()
    finally:
        stop.set()
        t.join(30)
    responses = read_topic(cfg, "responses", Response, timeout_s=30)
    s = pool.stats()
    assert s["bad_records"] == len(bad)
    assert len({r.instruction_id for r in responses}) + s["errors"] == len(good)
    assert len(_dead(cfg, "generate:replayer")) == len(bad) + s["errors"]


def test_trainer_service(cfg):
    cfg = _fast(cfg)
    cfg.trainer.batch_size = 10_000  # collect only: no round closes (training is tested elsewhere)
    rng = random.Random(5)
    good = [failure(i) for i in range(N_GOOD)]
    bad = _bad_set(rng, failure, verdict(0))
    _send(cfg, "failures", mix(rng, [f.encode() for f in good], bad))
    with TrainerService(cfg) as svc:
        assert wait_until(lambda: svc.poll_once() == 0 and svc.loop.stats.records >= len(good) + len(bad))
        assert svc.bad_records == len(bad)
        assert {f.id for f in svc.state("target").failures.values()} == {f.id for f in good}
    assert len(_dead(cfg, "trainer")) == len(bad)


def test_stream_ratings_agent(cfg, tmp_path):
    from tests.test_stream import Worker, write_config

    cfg = _fast(cfg)
    rng = random.Random(6)
    good = [verdict(i) for i in range(N_GOOD)]
    bad = _bad_set(rng, verdict, failure(0), extra=[("self-battle", self_battle(verdict(900 + k))) for k in range(5)])
    config = write_config(cfg, tmp_path / "arena.toml", battle_plan="round-robin")
    config.write_text(config.read_text() + f"\n[limits]\nmax_record_bytes = {LIMIT}\n")
    w = Worker(config, tmp_path / "worker.log").start()
    try:
        _send(cfg, "verdicts", mix(rng, [v.encode() for v in good], bad))
        ok = wait_until(lambda: (s := w.leaderboard()) and s.get("verdicts") == len(good) and s.get("lag") == 0,
                    timeout=180)
        assert ok, (w.leaderboard(), w.log.read_text()[-3000:])
        assert w.proc.poll() is None, w.log.read_text()[-3000:]
        assert wait_until(lambda: len(_dead(cfg, "stream.ratings")) >= len(bad), timeout=60)
        assert len(_dead(cfg, "stream.ratings")) == len(bad)
    finally:
        w.stop()


def test_feed(cfg, tmp_path):
    """arena feed's reading and sending: a JSONL file of good prompts with a few hundred hostile lines mixed in
    (random bytes, nesting, huge integers, oversized lines, invalid UTF-8, null, lists, NaN, prompts that are
    empty after control characters are removed)."""
    from producers.feed import feed_records, iter_records

    cfg = _fast(cfg)
    rng = random.Random(7)
    good = [json.dumps({"prompt": f"Name {i} animals that live in the sea.\x07"}).encode() for i in range(N_GOOD)]
    kinds = [
        lambda: b"#" + bytes(rng.choice(b"abc{}[]:,\"\\\xff\x00 ") for _ in range(rng.randint(1, 200))),
        lambda: b"[" * rng.randint(40, 3000),
        lambda: b'{"prompt": "x", "n": ' + b"7" * rng.randint(70, 6000) + b"}",
        lambda: b'{"prompt": "' + b"y" * (LIMIT + rng.randint(1, 5000)) + b'"}',
        lambda: b'{"prompt": "\xc3\x28 broken"}',
        lambda: b"null",
        lambda: json.dumps([rng.randint(0, 9)]).encode(),
        lambda: b'{"prompt": "z", "score": NaN}',
        lambda: json.dumps({"prompt": "\x00\x01\x02"}).encode(),
    ]
    bad = [("hostile", kinds[i % len(kinds)]().replace(b"\n", b" ").replace(b"\r", b" ")) for i in range(200)]
    path = tmp_path / "hostile.jsonl"
    path.write_bytes(b"\n".join(v for v in mix(rng, good, bad)) + b"\n")
    with Publisher(cfg) as pub:
        stats = feed_records(cfg, iter_records(str(path), cfg.limits), pub, split="train", source="fuzz")
        pub.flush()
    assert (stats.sent, stats.rejected) == (N_GOOD, len(bad))
    sent = read_topic(cfg, "instructions.train", Instruction, timeout_s=30)
    assert sorted(i.messages[0].content for i in sent) == sorted(
        f"Name {i} animals that live in the sea." for i in range(N_GOOD))
    dead = [d for d in read_topic(cfg, "deadletter", DeadLetter, timeout_s=30) if d.source.startswith("hostile.jsonl")]
    assert len(dead) == len(bad) and max(len(d.raw.encode()) for d in dead) <= 4 * cfg.limits.dead_letter_excerpt_bytes
