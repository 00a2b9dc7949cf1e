"""The SQL ledger: every event of every topic, durably, in one table per event kind.

`LedgerStore(url)` is the storage API (SQLite file by default, PostgreSQL by URL; the same code).
Each table has the event id as primary key, a few indexed query columns and `payload`, the full wire
JSON (`event.to_wire()`), so any event can be rebuilt exactly and new query columns can be added later
by reading payloads. Writes are `INSERT .. ON CONFLICT (id) DO NOTHING`: redelivering an event is
harmless, which is what makes the at-least-once ledger consumer (consumers/ledger.py) correct.

The store is core: the ledger consumer writes it, and the commands, the trainer and the demo read it.

The failure table keeps every Failure record; `failures()` returns the latest per
(instruction, target, target checkpoint), which is what the compacted `failures` topic converges to.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import JSON, Column, Field, SQLModel

from .errors import InputError
from .events import (
    BY_KIND,
    Battle,
    Checkpoint,
    DeadLetter,
    Event,
    Failure,
    Instruction,
    Response,
    Verdict,
)

log = logging.getLogger(__name__)

# A private MetaData: the ledger's tables must not mix with any other SQLModel tables in the process.
_metadata = sa.MetaData()


class _Base(SQLModel):
    metadata = _metadata


def _payload() -> Any:
    # JSONB on PostgreSQL (queryable, compact); plain JSON text on SQLite.
    return Field(sa_column=Column("payload", JSON().with_variant(JSONB(), "postgresql"),
                                  nullable=False))


class InstructionRow(_Base, table=True):
    __tablename__ = "instruction"
    id: str = Field(primary_key=True)
    created_at: float = Field(index=True)
    ingested_at: float
    split: str = Field(index=True)
    source: str = Field(index=True)
    category: str | None = Field(default=None, index=True)
    turns: int
    payload: dict = _payload()


class ResponseRow(_Base, table=True):
    __tablename__ = "response"
    id: str = Field(primary_key=True)
    created_at: float = Field(index=True)
    ingested_at: float
    instruction_id: str = Field(index=True)
    split: str = Field(index=True)
    model: str = Field(index=True)
    checkpoint: str = Field(index=True)
    competitor: str = Field(index=True)
    payload: dict = _payload()


class BattleRow(_Base, table=True):
    __tablename__ = "battle"
    id: str = Field(primary_key=True)
    created_at: float = Field(index=True)
    ingested_at: float
    instruction_id: str = Field(index=True)
    split: str = Field(index=True)
    competitor_a: str = Field(index=True)
    competitor_b: str = Field(index=True)
    plan: str
    payload: dict = _payload()


class VerdictRow(_Base, table=True):
    __tablename__ = "verdict"
    id: str = Field(primary_key=True)
    created_at: float = Field(index=True)
    ingested_at: float
    battle_id: str = Field(index=True)
    instruction_id: str = Field(index=True)
    split: str = Field(index=True)
    competitor_a: str = Field(index=True)
    competitor_b: str = Field(index=True)
    winner: str = Field(index=True)
    margin: float
    policy: str
    payload: dict = _payload()


class FailureRow(_Base, table=True):
    __tablename__ = "failure"
    id: str = Field(primary_key=True)
    created_at: float = Field(index=True)
    ingested_at: float
    instruction_id: str = Field(index=True)
    split: str = Field(index=True)
    target: str = Field(index=True)
    target_checkpoint: str = Field(index=True)
    winner_model: str
    margin: float = Field(index=True)
    losses: int
    payload: dict = _payload()


class CheckpointRow(_Base, table=True):
    __tablename__ = "checkpoint"
    id: str = Field(primary_key=True)
    created_at: float = Field(index=True)
    ingested_at: float
    model: str = Field(index=True)
    checkpoint: str = Field(index=True)
    iteration: int = Field(index=True)
    stage: str
    payload: dict = _payload()


class DeadLetterRow(_Base, table=True):
    __tablename__ = "deadletter"
    id: str = Field(primary_key=True)
    created_at: float = Field(index=True)
    ingested_at: float
    source: str = Field(index=True)
    stage: str = Field(index=True)
    reason: str
    payload: dict = _payload()


# kind -> (event class, row class, query columns taken from the event)
_KINDS: dict[str, tuple[type[Event], type[SQLModel], Callable[[Any], dict[str, Any]]]] = {
    "instruction": (Instruction, InstructionRow, lambda e: dict(
        split=e.split, source=e.source, category=e.category, turns=len(e.user_turns))),
    "response": (Response, ResponseRow, lambda e: dict(
        instruction_id=e.instruction_id, split=e.split, model=e.model, checkpoint=e.checkpoint,
        competitor=e.competitor)),
    "battle": (Battle, BattleRow, lambda e: dict(
        instruction_id=e.instruction_id, split=e.split, competitor_a=e.a.competitor, competitor_b=e.b.competitor,
        plan=e.plan)),
    "verdict": (Verdict, VerdictRow, lambda e: dict(
        battle_id=e.battle_id, instruction_id=e.instruction_id, split=e.split, competitor_a=e.competitor_a,
        competitor_b=e.competitor_b, winner=e.winner, margin=e.margin, policy=e.policy)),
    "failure": (Failure, FailureRow, lambda e: dict(
        instruction_id=e.instruction_id, split=e.split, target=e.target, target_checkpoint=e.target_checkpoint,
        winner_model=e.winner_model, margin=e.margin, losses=e.losses)),
    "checkpoint": (Checkpoint, CheckpointRow, lambda e: dict(
        model=e.model, checkpoint=e.checkpoint, iteration=e.iteration, stage=e.stage)),
    "deadletter": (DeadLetter, DeadLetterRow, lambda e: dict(source=e.source, stage=e.stage, reason=e.reason)),
}
KINDS: tuple[str, ...] = tuple(_KINDS)
assert set(KINDS) == set(BY_KIND), "every event kind of events.py needs a ledger table"

# Plural spellings the CLI accepts (`--what verdicts`).
_ALIASES = {k + "s": k for k in KINDS} | {"dead-letters": "deadletter", "dead_letters": "deadletter"}


def kind_of(name: str) -> str:
    """'verdicts', 'verdict', 'Verdict' -> 'verdict'; ValueError for anything else."""
    n = name.strip().lower()
    n = _ALIASES.get(n, n)
    if n not in _KINDS:
        raise ValueError(f"unknown event kind {name!r}; one of {', '.join(k + 's' for k in KINDS)}")
    return n


def has_column(kind: str, column: str) -> bool:
    """Whether the table of event kind `kind` has a query column `column` (e.g. 'split')."""
    return column in _KINDS[kind_of(kind)][1].__table__.c


def _event_kind(event: Event) -> str:
    return event.SCHEMA.split(".")[-1]


def _sqlite_pragmas(dbapi_conn, _record):
    cur = dbapi_conn.cursor()
    # WAL lets readers (watch, export, the demo) read while the ledger writes, across processes;
    # busy_timeout makes a second writer wait instead of failing with "database is locked".
    cur.execute("PRAGMA busy_timeout=30000")
    # WAL is a property of the file: set once. Switching needs an exclusive lock, and SQLite answers
    # "locked" at once (no busy wait) when another connection is creating the tables right then, so retry.
    for attempt in range(50):
        try:
            if cur.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                cur.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 49:
                raise
            time.sleep(0.1)
    cur.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; a power cut replays from Kafka offsets
    cur.close()


def sqlite_path(url: str) -> Path | None:
    """The file behind a sqlite URL (None for other databases and in-memory SQLite)."""
    u = sa.engine.make_url(url)
    if u.get_backend_name() != "sqlite" or u.database in (None, "", ":memory:"):
        return None
    return Path(u.database)


class LedgerStore:
    """Tables of every event kind at `url`; thread-safe (one pooled connection per thread)."""

    def __init__(self, url: str, *, create: bool = True):
        self.url = url
        self.dialect = sa.engine.make_url(url).get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"{url}: the ledger supports sqlite:/// and postgresql+psycopg:// URLs")
        path = sqlite_path(url)
        if path is not None:
            if not create and not path.exists():
                raise FileNotFoundError(f"{url}: no such ledger")
            path.parent.mkdir(parents=True, exist_ok=True)
        self.engine = sa.create_engine(url, future=True, pool_pre_ping=self.dialect == "postgresql")
        if self.dialect == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        if create:
            self._create_tables()

    def _create_tables(self) -> None:
        # Several processes may open a new ledger at once (the ledger, a reader, the demo): create_all
        # checks, then creates, so a concurrent creator can win the race in between. Re-checking is enough.
        for attempt in range(5):
            try:
                _metadata.create_all(self.engine)  # checkfirst: existing tables are left alone
                return
            except (sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.IntegrityError) as exc:
                if "exist" not in str(exc).lower() or attempt == 4:
                    raise
                time.sleep(0.05 * (attempt + 1))

    # --------------------------------------------------------------------- writing
    def _insert(self, table: sa.Table):
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(table).on_conflict_do_nothing(index_elements=["id"])

    def rows_for(self, events: Iterable[Event]) -> dict[str, list[dict[str, Any]]]:
        """Table rows grouped by kind, deduplicated by id (first occurrence kept)."""
        now = time.time()
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for ev in events:
            kind = _event_kind(ev)
            bucket = out.setdefault(kind, {})
            if ev.id in bucket:
                continue
            cols = _KINDS[kind][2](ev)
            bucket[ev.id] = dict(id=ev.id, created_at=ev.created_at, ingested_at=now, payload=ev.to_wire(), **cols)
        return {k: list(v.values()) for k, v in out.items()}

    def write(self, events: Iterable[Event]) -> int:
        """Store events in one transaction; returns how many were new (duplicates are ignored)."""
        grouped = self.rows_for(events)
        if not grouped:
            return 0
        inserted = 0
        with self.engine.begin() as conn:
            for kind, rows in grouped.items():
                table = _KINDS[kind][1].__table__
                # executemany with RETURNING: SQLAlchemy batches it into multi-row INSERTs from one cached
                # compiled statement ("insertmanyvalues"); the ids returned are exactly the rows inserted
                # (conflicting ones are skipped), on SQLite >= 3.35 and PostgreSQL alike.
                res = conn.execute(self._insert(table).returning(table.c.id), rows)
                inserted += len(res.all())
        return inserted

    def battle_counts(self, split: str | None = None) -> list[tuple[str, str, str, int]]:
        """(competitor_a, competitor_b, winner, n): the verdicts counted by the database, for fits."""
        t = VerdictRow.__table__
        n = sa.func.count().label("n")
        q = sa.select(t.c.competitor_a, t.c.competitor_b, t.c.winner, n).group_by(
            t.c.competitor_a, t.c.competitor_b, t.c.winner)
        if split is not None:
            q = q.where(t.c.split == split)
        with self.engine.connect() as conn:
            return [(a, b, w, int(k)) for a, b, w, k in conn.execute(q)]

    def reachable(self) -> bool:
        """Whether the database answers at all (tells a refused row from a database that is down)."""
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            return True
        except sa.exc.SQLAlchemyError:
            return False

    # --------------------------------------------------------------------- reading
    def count(self, kind: str) -> int:
        table = _KINDS[kind_of(kind)][1].__table__
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())

    def counts(self) -> dict[str, int]:
        tables = [_KINDS[k][1].__table__ for k in KINDS]
        q = sa.union_all(*(sa.select(sa.literal(k).label("kind"), sa.func.count().label("n")).select_from(t)
                           for k, t in zip(KINDS, tables)))
        with self.engine.connect() as conn:  # one round trip, one consistent snapshot
            return {k: int(n) for k, n in conn.execute(q)}

    def _select(self, kind: str, filters: dict[str, Any]):
        table = _KINDS[kind][1].__table__
        q = sa.select(table.c.payload)
        for name, value in filters.items():
            if value is None:
                continue
            if name not in table.c or name == "payload":
                raise ValueError(f"{kind} has no column {name!r}; filter on one of "
                                 f"{', '.join(c for c in table.c.keys() if c != 'payload')}")
            col = table.c[name]
            q = q.where(col.in_(list(value)) if isinstance(value, (list, tuple, set, frozenset)) else col == value)
        return table, q

    def payloads(self, kind: str, **filters) -> list[dict[str, Any]]:
        """Wire dicts (with `schema`), oldest first; filters as in `events()`."""
        kind = kind_of(kind)
        table, q = self._select(kind, filters)
        with self.engine.connect() as conn:
            rows = conn.execute(q.order_by(table.c.created_at, table.c.id)).scalars().all()
        return [json.loads(p) if isinstance(p, (str, bytes)) else p for p in rows]

    def events(self, kind: str, **filters) -> list[Event]:
        """Typed events of `kind` ('verdict' or 'verdicts'), oldest first (created_at, then id).

        Filters are equality on the indexed columns (a list/tuple means IN), e.g.
        events("verdict", split="eval"), events("response", model=["a", "b"]). None means no filter.
        """
        kind = kind_of(kind)
        cls = _KINDS[kind][0]
        out = []
        for p in self.payloads(kind, **filters):
            p = dict(p)
            p.pop("schema", None)
            out.append(cls.model_validate(p))
        return out

    def failures(self, target: str | None = None, checkpoint: str | None = None,
                 split: str | None = None) -> list[Failure]:
        """The latest Failure per (instruction, target, target checkpoint), oldest first.

        Every Failure update is its own record (its id covers the verdicts it summarises); the latest
        one (created_at, then losses) carries the best winning answer seen so far. Checkpoints are kept
        apart because each checkpoint's failure holds that checkpoint's own answer.
        """
        t = FailureRow.__table__
        rank = sa.func.row_number().over(
            partition_by=(t.c.instruction_id, t.c.target, t.c.target_checkpoint),
            order_by=(t.c.created_at.desc(), t.c.losses.desc(), t.c.id.desc())).label("rk")
        inner = sa.select(t.c.payload, t.c.created_at, t.c.id, rank)
        for col, value in (("target", target), ("target_checkpoint", checkpoint), ("split", split)):
            if value is not None:
                inner = inner.where(t.c[col] == value)
        sub = inner.subquery()
        q = sa.select(sub.c.payload).where(sub.c.rk == 1).order_by(sub.c.created_at, sub.c.id)
        with self.engine.connect() as conn:
            rows = conn.execute(q).scalars().all()
        out = []
        for p in rows:
            p = dict(json.loads(p) if isinstance(p, (str, bytes)) else p)
            p.pop("schema", None)
            out.append(Failure.model_validate(p))
        return out

    def battles(self, split: str | None = None) -> list[tuple[str, str, str]]:
        """(competitor_a, competitor_b, winner) of every verdict (of `split`): what leaderboards are fit on."""
        t = VerdictRow.__table__
        q = sa.select(t.c.competitor_a, t.c.competitor_b, t.c.winner).order_by(t.c.created_at, t.c.id)
        if split is not None:
            q = q.where(t.c.split == split)
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(q)]

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_ledger(url: str) -> LedgerStore:
    """An existing ledger, for readers: a missing SQLite file is an InputError (connecting would create an
    empty one and every reader would show nothing)."""
    try:
        return LedgerStore(url, create=False)
    except FileNotFoundError:
        raise InputError(f"{url}: no such ledger; run `arena ledger` (or `arena demo`) first, or set "
                         f"ARENA_DB_URL / --db to the ledger you mean") from None
    except ValueError as exc:
        raise InputError(str(exc)) from None
