"""The SQL ledger on a real broker and real SQLite: every event kind round-trips, redelivery is harmless,
failures() keeps the latest record, bad records are dead-lettered with their reason."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading

import pytest

from arena_flywheel.events import (Battle, Checkpoint, Contestant, DeadLetter, Failure, Game, Instruction, JudgeInfo,
                                   Response, Verdict)
from arena_flywheel.events import decode
from arena_flywheel.kafka import Publisher, make_consumer
from arena_flywheel.store import KINDS, LedgerStore
from consumers.ledger import Ledger
from tests.publishing import publish

JUDGE = JudgeInfo(backend="reference", template_id="ref-1")


def sample_events(n: int = 3) -> list:
    """A small, complete arena history: n instructions, two responses each, a battle, a verdict, a failure."""
    out: list = []
    for i in range(n):
        ins = Instruction(messages=[{"role": "user", "content": f"What is {i} + {i}?"},
                                    {"role": "assistant", "content": "?"},
                                    {"role": "user", "content": "And times two?"}],
                          split="eval" if i % 2 else "train", source="test", reference=str(2 * i))
        ra = Response(instruction_id=ins.id, split=ins.split, model="alpha", answers=[str(2 * i), str(4 * i)])
        rb = Response(instruction_id=ins.id, split=ins.split, model="beta", checkpoint="c1", answers=["no", "no"])
        bat = Battle(instruction_id=ins.id, split=ins.split, messages=ins.messages,
                     a=Contestant(response_id=ra.id, model="alpha", answers=ra.answers),
                     b=Contestant(response_id=rb.id, model="beta", checkpoint="c1", answers=rb.answers),
                     plan="target-vs-all")
        ver = Verdict(battle_id=bat.id, instruction_id=ins.id, split=ins.split, competitor_a="alpha",
                      competitor_b="beta@c1", model_a="alpha", model_b="beta", checkpoint_b="c1",
                      games=[Game(order="ab", score_a=9, score_b=2), Game(order="ba", score_a=8, score_b=3)],
                      score_a=17, score_b=5, winner="model_a", margin=12, judge=JUDGE)
        fail = Failure(instruction_id=ins.id, split=ins.split, target="beta", target_checkpoint="c1",
                       messages=ins.messages, target_answers=rb.answers, winner_model="alpha",
                       winner_answers=ra.answers, margin=12, battle_ids=[bat.id], verdict_ids=[ver.id], judge=JUDGE)
        out += [ins, ra, rb, bat, ver, fail]
    out.append(Checkpoint(model="beta", checkpoint="c1", path="/tmp/beta-c1", iteration=1, stage="sft"))
    out.append(DeadLetter(source="file.jsonl:7", reason="invalid JSON", raw="{oops", stage="feed"))
    return out


def read_topic(cfg, name: str, n: int, timeout_s: float = 20) -> list:
    """The first n events of a topic, read without a group (end offsets are unreliable on Tansu)."""
    import time

    from kafka import TopicPartition

    c = make_consumer(cfg, None, None)
    topic = cfg.topic(name)
    deadline = time.monotonic() + timeout_s
    while not c.partitions_for_topic(topic) and time.monotonic() < deadline:
        time.sleep(0.1)
    c.assign([TopicPartition(topic, p) for p in c.partitions_for_topic(topic)])
    got: list = []
    while len(got) < n and time.monotonic() < deadline:
        for recs in c.poll(timeout_ms=200).values():
            got += [decode(r.value) for r in recs]
    c.close()
    return got


@pytest.mark.slow
def test_every_event_kind_round_trips_through_the_broker(cfg):
    events = sample_events(3)
    publish(cfg, events)
    with Ledger(cfg) as ledger:
        written = ledger.drain(idle_s=1.0, timeout_s=60)
    assert written == len(events)
    store = LedgerStore(cfg.db.url)
    assert store.counts() == {"instruction": 3, "response": 6, "battle": 3, "verdict": 3, "failure": 3,
                              "checkpoint": 1, "deadletter": 1}
    for kind in KINDS:
        want = sorted((e for e in events if e.SCHEMA.endswith("." + kind)), key=lambda e: e.id)
        got = sorted(store.events(kind), key=lambda e: e.id)
        assert [g.model_dump() for g in got] == [w.model_dump() for w in want], kind
    # filters on the indexed columns
    assert {v.split for v in store.events("verdicts", split="eval")} == {"eval"}
    assert len(store.events("verdict", split="eval")) == 1
    assert len(store.events("response", model="beta", checkpoint="c1")) == 3
    assert len(store.events("response", competitor=["alpha", "beta@c1"])) == 6
    with pytest.raises(ValueError, match="no column"):
        store.events("verdict", colour="red")
    store.close()


@pytest.mark.slow
def test_redelivery_is_idempotent(cfg):
    events = sample_events(2)
    publish(cfg, events)
    publish(cfg, events)  # the same events delivered twice (a producer retry, a replay)
    with Ledger(cfg) as ledger:
        written = ledger.drain(idle_s=1.0, timeout_s=60)
        assert ledger.records == 2 * len(events)
    assert written == len(events)
    store = LedgerStore(cfg.db.url)
    before = store.counts()
    assert sum(before.values()) == len(events)
    # a new consumer group replays the whole topic: nothing changes
    ledger2 = Ledger(cfg, group=cfg.kafka.topic_prefix + "replay")
    assert ledger2.drain(idle_s=1.0, timeout_s=60) == 0
    assert ledger2.records == 2 * len(events)
    ledger2.close()
    assert store.counts() == before
    # and the store itself ignores duplicates within and across calls
    assert store.write(events + events) == 0
    store.close()


@pytest.mark.slow
def test_offsets_are_committed_after_the_write(cfg):
    """A second Ledger in the same group starts after what the first one stored."""
    publish(cfg, sample_events(1))
    with Ledger(cfg) as first:
        first.drain(idle_s=1.0)
    publish(cfg, sample_events(2)[6:12])  # the second instruction's events only
    with Ledger(cfg) as second:
        second.drain(idle_s=1.0)
        assert second.records == 6
    assert LedgerStore(cfg.db.url).count("instruction") == 2


def two_failures_of_one_instruction():
    """An older and a newer Failure record of one instruction (the newer has two losses), and their base."""
    ins = Instruction(messages=[{"role": "user", "content": "Name a prime."}])
    base = dict(instruction_id=ins.id, target="t", messages=ins.messages, target_answers=["4"], judge=JUDGE)
    f1 = Failure(**base, winner_model="a", winner_answers=["9"], margin=2, verdict_ids=["v1"], losses=1,
                 created_at=100.0)
    f2 = Failure(**base, winner_model="b", winner_answers=["7"], margin=8, verdict_ids=["v1", "v2"], losses=2,
                 created_at=200.0)
    return ins, base, f1, f2


def test_failures_latest_wins(tmp_path):
    store = LedgerStore(f"sqlite:///{tmp_path / 'l.db'}")
    ins, base, f1, f2 = two_failures_of_one_instruction()
    other_ckpt = Failure(**{**base, "target_answers": ["6"]}, target_checkpoint="c1", winner_model="a",
                         winner_answers=["5"], margin=3, verdict_ids=["v9"], created_at=150.0)
    ins2 = Instruction(messages=[{"role": "user", "content": "Name an even prime."}])
    g1 = Failure(**{**base, "instruction_id": ins2.id}, winner_model="a", winner_answers=["2"], margin=4,
                 verdict_ids=["v3"], created_at=50.0)
    assert store.write([f2, g1, other_ckpt, f1]) == 4  # arrival order differs from creation order
    assert store.count("failure") == 4  # every record is kept
    latest = store.failures(target="t", checkpoint="base")
    assert [(f.instruction_id, f.winner_model, f.losses) for f in latest] == [(ins2.id, "a", 1), (ins.id, "b", 2)]
    assert {f.target_checkpoint for f in store.failures(target="t")} == {"base", "c1"}
    assert len(store.failures(target="t")) == 3
    assert [f.id for f in store.failures(checkpoint="c1")] == [other_ckpt.id]
    assert store.failures(target="nobody") == []
    store.close()


@pytest.mark.slow
def test_bad_records_are_dead_lettered_with_reason(cfg):
    good = sample_events(1)[0]
    with Publisher(cfg) as pub:
        pub.send_raw(cfg.topic("verdicts"), b"k", b"{not json")
        pub.send_raw(cfg.topic("responses"), b"k", b"\xff\xfe")
        pub.send_raw(cfg.topic("battles"), b"k", json.dumps({"schema": "arena.battle/1"}).encode())
        pub.send(good)
    with Ledger(cfg) as ledger:
        ledger.drain(idle_s=1.0)
        assert ledger.bad_records == 3
    store = LedgerStore(cfg.db.url)
    dls = store.events("deadletter")
    reasons = sorted(d.reason for d in dls)
    assert len(dls) == 3 and all(d.stage == "ledger" for d in dls)
    assert any(r.startswith("invalid JSON") for r in reasons)
    assert any(r.startswith("invalid UTF-8") for r in reasons)
    assert any("arena.battle: field" in r for r in reasons)
    assert {d.raw for d in dls} >= {"{not json", "\\xff\\xfe"}
    assert store.count("instruction") == 1
    # the dead letters are on the topic too, for whoever watches it
    on_topic = read_topic(cfg, "deadletter", 3)
    assert sorted(d.reason for d in on_topic) == reasons
    store.close()


@pytest.mark.slow
def test_run_stops_on_event(cfg):
    publish(cfg, sample_events(1))
    stop = threading.Event()
    ledger = Ledger(cfg)
    t = threading.Thread(target=ledger.run, args=(stop,), daemon=True)
    t.start()
    try:
        store = LedgerStore(cfg.db.url)  # opened while the ledger thread creates the same tables
        import time
        deadline = time.monotonic() + 30
        while store.count("verdict") < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive() and ledger.consumer is None
    assert store.count("verdict") == 1
    store.close()


@pytest.mark.slow
def test_run_stops_when_idle(cfg):
    """`arena ledger --max-idle S`: stores what arrives, then stops once S seconds pass with nothing new."""
    import time

    events = sample_events(1)
    publish(cfg, events)
    ledger = Ledger(cfg)
    t0 = time.monotonic()
    ledger.run(max_idle_s=3.0)  # no stop event: it must end by itself
    assert time.monotonic() - t0 < 30 and ledger.consumer is None
    store = LedgerStore(cfg.db.url)
    assert sum(store.counts().values()) == len(events)
    store.close()


def test_readers_see_rows_while_another_process_writes(tmp_path):
    """WAL: a reader in this process counts rows while a writer process inserts them."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    reader = LedgerStore(url)
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "from arena_flywheel.store import LedgerStore\n"
        "from arena_flywheel.events import Instruction\n"
        "s = LedgerStore(%r)\n"
        "for i in range(40):\n"
        "    s.write([Instruction(messages=[{'role': 'user', 'content': f'q{i}-{j}'}]) for j in range(25)])\n"
    ) % (str(__import__('pathlib').Path(__file__).resolve().parent.parent), url)
    proc = subprocess.Popen([sys.executable, "-c", code])
    seen = []
    while proc.poll() is None:
        seen.append(reader.count("instruction"))
    assert proc.wait() == 0
    assert reader.count("instruction") == 1000
    assert seen == sorted(seen)  # never a torn or shrinking view
    con = sqlite3.connect(tmp_path / "shared.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
    reader.close()


def test_export_cli(cfg, tmp_path, capsys):
    from arena_cli.main import main

    store = LedgerStore(cfg.db.url)
    store.write(sample_events(2))
    store.close()
    out = tmp_path / "v.csv"
    assert main(["export", "--what", "verdicts", "--format", "csv", "--out", str(out), "--db", cfg.db.url]) == 0
    import csv
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2 and {r["winner"] for r in rows} == {"model_a"}
    assert json.loads(rows[0]["games"])[0]["order"] == "ab"
    capsys.readouterr()
    assert main(["export", "--what", "instructions", "--split", "eval", "--db", cfg.db.url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["split"] == "eval"
    assert main(["export", "--what", "dragons", "--db", cfg.db.url]) == 2
    assert "unknown event kind" in capsys.readouterr().err
    assert main(["export", "--what", "checkpoints", "--split", "eval", "--db", cfg.db.url]) == 2
    missing = f"sqlite:///{tmp_path / 'absent.db'}"
    assert main(["export", "--what", "verdicts", "--db", missing]) == 2
    err = capsys.readouterr().err
    assert "no such ledger" in err and "Traceback" not in err
    assert not (tmp_path / "absent.db").exists()
