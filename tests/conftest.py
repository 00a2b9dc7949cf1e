"""Shared fixtures: a real embedded Tansu broker for the session, an isolated config per test."""
from __future__ import annotations

import itertools
import os
import time
import uuid
from pathlib import Path

import pytest

from arena_flywheel.broker import EmbeddedBroker
from arena_flywheel.config import load_config
from arena_flywheel.kafka import ensure_topics

ROOT = Path(__file__).resolve().parent.parent
CARRIED_DATA = ROOT / "tests" / "data"  # small real-data subsets carried by the repository (tests/data/README.md)
SHARED_DATA = ROOT.parent / "shared" / "data"  # the full sets beside a development checkout
_counter = itertools.count()


def shared_data(rel: str) -> Path:
    """Path to a real evaluation data file: tests/data first (so a fresh clone runs every test), then
    ../shared/data; skips the test cleanly when neither has it."""
    for base in (CARRIED_DATA, SHARED_DATA):
        if (base / rel).exists():
            return base / rel
    pytest.skip(f"{rel} is neither in tests/data nor in ../shared/data")


@pytest.fixture(scope="session")
def broker():
    """One real Kafka-protocol broker for the whole run (or $TEST_KAFKA_BOOTSTRAP for Apache Kafka)."""
    external = os.environ.get("TEST_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    with EmbeddedBroker() as b:
        yield b.bootstrap


@pytest.fixture
def cfg(broker, tmp_path, monkeypatch):
    """A config on the session broker with this test's own topic prefix and SQLite file."""
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.chdir(tmp_path)
    c = load_config(env={}, overrides={
        "kafka.bootstrap_servers": broker,
        "kafka.topic_prefix": f"t{os.getpid()}x{next(_counter)}.",
        "kafka.partitions": 2,
        "db.url": f"sqlite:///{tmp_path / 'ledger.db'}",
        "data_dir": str(tmp_path / "arena-data"),
    })
    ensure_topics(c)
    return c


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """Path of a tiny real Llama with a locally trained ChatML tokenizer (built once per session)."""
    from arena_flywheel.tinymodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture
def pg_url():
    """A fresh database on the test PostgreSQL server ($TEST_POSTGRES_URL, started by ./test), dropped after."""
    url = os.environ.get("TEST_POSTGRES_URL")
    if not url:
        pytest.skip("TEST_POSTGRES_URL not set: run ./test (scripts/test-services.sh starts PostgreSQL)")
    pytest.importorskip("psycopg", reason="the postgres extra (psycopg[binary]) is not installed")
    import sqlalchemy as sa

    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    name = f"arena_{uuid.uuid4().hex[:12]}"
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    base, _, _ = url.rpartition("/")
    yield f"{base}/{name}"
    with admin.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def wait_until(cond, timeout: float = 60.0, every=None, pause: float = 0.05) -> bool:
    """Poll `cond()` (running `every()` first each time, e.g. a consumer's poll) until it is true or the time
    is up; returns its last value. Tests wait on conditions, not fixed sleeps."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if every is not None:
            every()
        if cond():
            return True
        time.sleep(pause)
    return bool(cond())
