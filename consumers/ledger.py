"""The SQL ledger: every event of every topic, durably, in one table per event kind.

`LedgerStore(url)` is the storage API (SQLite file by default, PostgreSQL by URL; the same code).
Each table has the event id as primary key, a few indexed query columns and `payload`, the full wire
JSON (`event.to_wire()`), so any event can be rebuilt exactly and new query columns can be added later
by reading payloads. Writes are `INSERT .. ON CONFLICT (id) DO NOTHING`: redelivering an event is
harmless, which is what makes the at-least-once consumer below correct.

`Ledger(cfg)` is the consumer: one kafka-python group `<prefix>ledger` over every topic of
kafka.TOPICS. A polled batch is decoded and written in one transaction, then offsets are committed
(at-least-once: a crash between the DB commit and the offset commit only redelivers rows already
stored). An undecodable record goes to the dead-letter topic with the reason, and is recorded here too.

The failure table keeps every Failure record; `failures()` returns the latest per
(instruction, target, target checkpoint), which is what the compacted `failures` topic converges to.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import sqlite3
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import JSON, Column, Field, SQLModel

from arena_flywheel.config import Config
from arena_flywheel.events import (BY_KIND, BadEvent, Battle, Checkpoint, DeadLetter, Event, Failure, Instruction,
                                   Response, Verdict, decode)

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

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ------------------------------------------------------------------------- the consumer
def group_id(cfg: Config) -> str:
    return f"{cfg.kafka.topic_prefix}ledger"


class Ledger:
    """Consume every topic into the LedgerStore at cfg.db.url (at-least-once, idempotent on id)."""

    def __init__(self, cfg: Config, store: LedgerStore | None = None, *, max_records: int = 2000,
                 group: str | None = None):
        from arena_flywheel.kafka import TOPICS

        self.cfg = cfg
        self.group = group or group_id(cfg)
        self.topics = [cfg.topic(t.name) for t in TOPICS]
        self.dead_topic = cfg.topic("deadletter")
        self.store = store
        self._own_store = store is None
        self.max_records = max_records
        self.consumer = None
        self.publisher = None
        self.written = 0        # rows newly inserted
        self.records = 0        # records consumed (duplicates included)
        self.bad_records = 0    # undecodable records, dead-lettered
        self.last_record_at: float | None = None

    def start(self) -> "Ledger":
        if self.consumer is not None:
            return self
        from arena_flywheel.kafka import Publisher, make_consumer

        if self.store is None:
            self.store = LedgerStore(self.cfg.db.url)
        self.publisher = Publisher(self.cfg)
        self.consumer = make_consumer(self.cfg, self.topics, self.group)
        return self

    def close(self) -> None:
        if self.consumer is not None:
            try:
                self.consumer.close(autocommit=False)  # offsets are committed only after DB writes
            except Exception:  # noqa: BLE001 - closing anyway
                log.debug("ledger consumer close failed", exc_info=True)
            self.consumer = None
        if self.publisher is not None:
            self.publisher.close()
            self.publisher = None
        if self._own_store and self.store is not None:
            self.store.close()
            self.store = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def poll_once(self, timeout_ms: int = 200) -> int:
        """One poll: decode, write in one transaction, flush dead letters, commit. Returns rows written."""
        self.start()
        batches = self.consumer.poll(timeout_ms=timeout_ms, max_records=self.max_records)
        if not batches:
            return 0
        events: list[Event] = []
        bad = 0
        for tp, records in batches.items():
            for rec in records:
                self.records += 1
                try:
                    events.append(decode(rec.value))
                except BadEvent as exc:
                    bad += 1
                    source = f"{tp.topic}[{tp.partition}]@{rec.offset}"
                    dl = DeadLetter(source=source, reason=exc.reason, raw=DeadLetter.raw_text(rec.value),
                                    stage="ledger")
                    events.append(dl)  # recorded here even if the dead-letter topic is lost
                    if tp.topic != self.dead_topic:  # a broken dead letter is recorded, not re-sent
                        self.publisher.send(dl)
                    log.warning("ledger: bad record %s: %s", source, exc.reason)
        written = self.store.write(events)
        if bad:
            self.publisher.flush()
        self.bad_records += bad
        self.written += written
        self.last_record_at = time.monotonic()
        try:
            self.consumer.commit()
        except Exception as exc:  # noqa: BLE001 - e.g. a rebalance: the batch is redelivered, and ignored
            log.warning("ledger: offset commit failed (%s); the batch will be redelivered and deduplicated", exc)
        return written

    def run(self, stop_event: threading.Event | None = None, poll_timeout_ms: int = 200,
            max_idle_s: float | None = None) -> None:
        """Sink until stopped, or until no record has arrived for `max_idle_s` seconds (scripts, CI)."""
        from arena_flywheel.kafka import IdleTimer

        stop_event = stop_event or threading.Event()
        self.start()
        idle = IdleTimer(max_idle_s)
        try:
            while not stop_event.is_set():
                before = self.records
                self.poll_once(poll_timeout_ms)
                if idle.expired(self.consumer, self.records != before):
                    break
        finally:
            self.close()

    def drain(self, idle_s: float = 1.0, timeout_s: float = 60.0) -> int:
        """Consume until no record has arrived for `idle_s` after the group got its partitions.
        Returns rows written. Raises TimeoutError if records keep coming for `timeout_s`.
        """
        self.start()
        start = time.monotonic()
        written = 0
        quiet_since: float | None = None
        while True:
            before = self.records
            written += self.poll_once(timeout_ms=min(200, int(idle_s * 1000)))
            now = time.monotonic()
            if not self.consumer.assignment():
                quiet_since = None  # still joining the group: silence means nothing yet
            elif self.records != before or quiet_since is None:
                quiet_since = now
            elif now - quiet_since >= idle_s:
                return written
            if now - start > timeout_s:
                raise TimeoutError(f"ledger drain did not go idle within {timeout_s:.0f}s "
                                   f"({self.records} records so far)")


# ------------------------------------------------------------------------- CLI: arena ledger
def add_arguments(p) -> None:
    p.add_argument("--db", metavar="URL", help="database URL (default: db.url / $ARENA_DB_URL)")
    p.add_argument("--max-idle", type=float, default=None, metavar="S",
                   help="stop after S seconds with no new record (scripts, CI)")


def run(args, cfg: Config) -> int:
    from arena_flywheel.broker import kafka_for

    if args.db:
        cfg = cfg.model_copy(deep=True)
        cfg.db.url = args.db
    if not cfg.kafka.bootstrap_servers:
        print("arena ledger: no KAFKA_BOOTSTRAP_SERVERS; starting an embedded broker (its topics live only "
              "while this runs)", file=sys.stderr)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with kafka_for(cfg) as (kcfg, _embedded):
        ledger = Ledger(kcfg)
        print(f"arena ledger: {', '.join(ledger.topics)} -> {cfg.db.url} (group {group_id(kcfg)}); Ctrl-C stops",
              file=sys.stderr)
        try:
            ledger.run(stop, max_idle_s=args.max_idle)
        except KeyboardInterrupt:
            ledger.close()
        print(f"arena ledger: stopped; {ledger.records} records read, {ledger.written} rows new, "
              f"{ledger.bad_records} dead-lettered", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------- CLI: arena export
def _export_arguments(p) -> None:
    p.add_argument("--what", required=True, metavar="KIND",
                   help="instructions|responses|battles|verdicts|failures|checkpoints|deadletters")
    p.add_argument("--format", default="jsonl", choices=("jsonl", "csv"))
    p.add_argument("--out", metavar="FILE", help="write here instead of stdout")
    p.add_argument("--split", choices=("train", "eval"), help="only this split (kinds that have one)")
    p.add_argument("--latest", action="store_true", help="failures: only the latest per instruction and target")
    p.add_argument("--db", metavar="URL", help="database URL (default: db.url / $ARENA_DB_URL)")


def _csv_cell(v: Any) -> Any:
    return json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v


def write_export(payloads: list[dict[str, Any]], fmt: str, out) -> None:
    if fmt == "jsonl":
        for p in payloads:
            out.write(json.dumps(p, ensure_ascii=False) + "\n")
        return
    cols: dict[str, None] = {}  # top-level fields in order of first appearance; nested ones as JSON
    for p in payloads:
        cols.update(dict.fromkeys(p))
    w = csv.DictWriter(out, fieldnames=list(cols), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for p in payloads:
        w.writerow({k: _csv_cell(v) for k, v in p.items()})


def _export_run(args, cfg: Config) -> int:
    from arena_flywheel.cli import UsageError

    url = args.db or cfg.db.url
    try:
        kind = kind_of(args.what)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        store = LedgerStore(url, create=False)
    except FileNotFoundError:
        raise UsageError(f"{url}: no such ledger; feed something first (arena feed FILE) or pass --db URL") from None
    try:
        if kind == "failure" and args.latest:
            payloads = [f.to_wire() for f in store.failures(split=args.split)]
        else:
            has_split = "split" in _KINDS[kind][1].__table__.c
            if args.split and not has_split:
                raise UsageError(f"{kind} events have no split; drop --split")
            try:
                payloads = store.payloads(kind, split=args.split if has_split else None)
            except sa.exc.OperationalError as exc:
                raise UsageError(f"{url}: cannot read the ledger ({exc.orig})") from None
    finally:
        store.close()
    if args.out:
        with open(args.out, "w", encoding="utf-8", newline="") as f:
            write_export(payloads, args.format, f)
        print(f"arena export: {len(payloads)} {kind} events -> {args.out}", file=sys.stderr)
    else:
        buf = io.StringIO()
        write_export(payloads, args.format, buf)
        sys.stdout.write(buf.getvalue())
    return 0


def _command():
    from arena_flywheel.cli import Command

    return Command(_export_arguments, _export_run)


export = _command()
