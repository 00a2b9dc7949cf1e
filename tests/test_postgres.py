"""The SQL ledger on a real PostgreSQL server (started by scripts/test-services.sh, which exports
TEST_POSTGRES_URL): every event kind round-trips, duplicates are ignored, failures() keeps the latest record,
export works. Each test gets its own database so tests cannot see each other's rows."""
from __future__ import annotations

import json
import os

import pytest

PG_URL = os.environ.get("TEST_POSTGRES_URL")
pytestmark = pytest.mark.skipif(
    not PG_URL, reason="TEST_POSTGRES_URL not set: run ./test (scripts/test-services.sh starts PostgreSQL) "
                       "or point it at a PostgreSQL server")


def test_every_event_kind_round_trips(pg_url):
    from arena_flywheel.store import LedgerStore
    from tests.test_ledger import sample_events

    events = sample_events(3)
    with LedgerStore(pg_url) as store:
        assert store.write(events) == len(events)
        counts = store.counts()
        by_kind: dict[str, list] = {}
        for e in events:
            by_kind.setdefault(e.kind if hasattr(e, "kind") else type(e).__name__.lower(), []).append(e)
        assert sum(counts.values()) == len(events)
        for kind, n in counts.items():
            got = store.events(kind)
            assert len(got) == n
            want = {e.id: e for e in events if e.id in {g.id for g in got}}
            assert {g.id: g.model_dump() for g in got} == {i: e.model_dump() for i, e in want.items()}


def test_duplicates_are_ignored(pg_url):
    from arena_flywheel.store import LedgerStore
    from tests.test_ledger import sample_events

    events = sample_events(2)
    with LedgerStore(pg_url) as store:
        assert store.write(events) == len(events)
        assert store.write(events + events[:3]) == 0  # redelivery after a crash writes nothing new
        assert sum(store.counts().values()) == len(events)


def test_failures_latest_wins(pg_url):
    from arena_flywheel.store import LedgerStore
    from tests.test_ledger import two_failures_of_one_instruction

    _, _, f1, f2 = two_failures_of_one_instruction()
    with LedgerStore(pg_url) as store:
        assert store.write([f2, f1]) == 2
        latest = store.failures(target="t")
        assert [(f.winner_model, f.losses) for f in latest] == [("b", 2)]


def test_export_cli(pg_url, tmp_path):
    from arena_cli.main import main
    from arena_flywheel.store import LedgerStore
    from tests.test_ledger import sample_events

    with LedgerStore(pg_url) as store:
        store.write(sample_events(2))
    out = tmp_path / "v.jsonl"
    assert main(["export", "--what", "verdicts", "--out", str(out), "--db", pg_url]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and {r["winner"] for r in rows} == {"model_a"}


@pytest.mark.slow
def test_a_row_the_database_refuses_is_dead_lettered_and_the_ledger_goes_on(pg_url, cfg):
    """PostgreSQL refuses an index entry over ~2.7 kB (a 20,000-character random category); the batch it is
    in used to fail whole, on every start. Now the other rows are stored and that one is a dead letter."""
    import random
    import string

    from arena_flywheel.events import Instruction
    from arena_flywheel.kafka import Publisher
    from arena_flywheel.store import LedgerStore
    from consumers.ledger import Ledger

    rng = random.Random(3)
    hostile = "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(20_000))
    good = [Instruction(messages=[{"role": "user", "content": f"What is {i} * 7?"}], source="fuzz")
            for i in range(4)]
    bad = Instruction(messages=[{"role": "user", "content": "What is 2 * 7?"}], source="fuzz", category=hostile)
    with Publisher(cfg) as pub:
        for e in [good[0], good[1], bad, good[2], good[3]]:
            pub.send(e)
    cfg = cfg.model_copy(deep=True)
    cfg.db.url = pg_url
    with Ledger(cfg) as ledger:
        ledger.drain(idle_s=1.0, timeout_s=60)
    with LedgerStore(pg_url) as store:
        assert sorted(i.id for i in store.events("instruction")) == sorted(g.id for g in good)
        dead = [d for d in store.events("deadletter") if "refused" in d.reason]
        assert len(dead) == 1 and dead[0].stage == "ledger"
        assert dead[0].source.startswith(cfg.topic("instructions.train") + "[") and "]@" in dead[0].source
