"""The SQL ledger on a real PostgreSQL server (started by scripts/test-services.sh, which exports
TEST_POSTGRES_URL): every event kind round-trips, duplicates are ignored, failures() keeps the latest record,
export works. Each test gets its own database so tests cannot see each other's rows."""
from __future__ import annotations

import json
import os
import uuid

import pytest

PG_URL = os.environ.get("TEST_POSTGRES_URL")
pytestmark = pytest.mark.skipif(
    not PG_URL, reason="TEST_POSTGRES_URL not set: run ./test (scripts/test-services.sh starts PostgreSQL) "
                       "or point it at a PostgreSQL server")


@pytest.fixture
def pg_url():
    pytest.importorskip("psycopg", reason="the postgres extra (psycopg[binary]) is not installed")
    import sqlalchemy as sa
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    name = f"arena_{uuid.uuid4().hex[:12]}"
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    base, _, _ = PG_URL.rpartition("/")
    yield f"{base}/{name}"
    with admin.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


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
