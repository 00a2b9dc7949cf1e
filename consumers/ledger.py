"""The ledger consumer: every topic into the SQL store (arena_flywheel.store), at-least-once.

One kafka-python group `<prefix>ledger` over every topic of kafka.TOPICS. A polled batch is decoded and
written in one transaction, then offsets are committed (a crash between the DB commit and the offset
commit only redelivers rows already stored: writes ignore ids that exist). An undecodable record goes
to the dead-letter topic with its source and reason, and is recorded in the store too (even when the
dead-letter topic is lost); a broken record of the dead-letter topic itself is recorded, not re-sent.
"""
from __future__ import annotations

import logging
import threading
import time

import sqlalchemy as sa

from arena_flywheel.config import Config
from arena_flywheel.consume import Batch, ConsumerLoop, Service, run_loops
from arena_flywheel.kafka import TOPICS
from arena_flywheel.store import LedgerStore


log = logging.getLogger(__name__)


def _reason(exc: Exception) -> str:
    orig = getattr(exc, "orig", None) or exc
    return f"{type(orig).__name__}: {str(orig).splitlines()[0][:300]}"


def group_id(cfg: Config) -> str:
    return f"{cfg.kafka.topic_prefix}ledger"


class Ledger(Service):
    """Consume every topic into the LedgerStore at cfg.db.url (at-least-once, idempotent on id)."""

    def __init__(self, cfg: Config, store: LedgerStore | None = None, *, max_records: int = 2000,
                 group: str | None = None):
        self.cfg = cfg
        self.group = group or group_id(cfg)
        self.topics = [cfg.topic(t.name) for t in TOPICS]
        self.store = store
        self._own_store = store is None
        self.loop = ConsumerLoop(cfg, self.topics, self.group, self.handle, stage="ledger",
                                 max_records=max_records)
        self.written = 0        # rows newly inserted
        self.last_record_at: float | None = None

    @property
    def consumer(self):  # the kafka-python consumer while running, None once closed
        return self.loop.consumer

    @property
    def records(self) -> int:  # records consumed (duplicates included)
        return self.loop.stats.records

    @property
    def bad_records(self) -> int:  # undecodable records, dead-lettered
        return self.loop.stats.bad_records

    def start(self) -> "Ledger":
        if self.store is None:
            self.store = LedgerStore(self.cfg.db.url)
        self.loop.start()
        return self

    def close(self) -> None:
        self.loop.close()
        if self._own_store and self.store is not None:
            self.store.close()
            self.store = None

    def handle(self, batch: Batch) -> None:
        try:
            self.written += self.store.write(batch.events + batch.dead)
        except sa.exc.SQLAlchemyError as exc:
            # One row the database refuses (PostgreSQL: an index entry over its size limit, text it cannot
            # store) must not stop the ledger on every start: store the batch row by row, dead-letter the
            # rows it refuses. A database that is down is not a bad row: that error stops the ledger,
            # nothing is committed, and the batch is read again on the next start.
            if not self.store.reachable():
                raise
            log.warning("ledger: the database refused a batch (%s); storing it row by row", _reason(exc))
            self._write_each(batch)
        self.last_record_at = time.monotonic()

    def _write_each(self, batch: Batch) -> None:
        for event, item in [(i.event, i) for i in batch.items] + [(d, None) for d in batch.dead]:
            try:
                self.written += self.store.write([event])
            except sa.exc.SQLAlchemyError as exc:
                if not self.store.reachable():
                    raise
                source = item.source if item is not None else event.source
                raw = item.record.value if item is not None else event.raw
                dl = self.loop.dead_letter(source, f"the ledger database refused it: {_reason(exc)}", raw)
                self.written += self.store.write([dl])

    def poll_once(self, timeout_ms: int = 200) -> int:
        """One poll: decode, write in one transaction, flush dead letters, commit. Returns rows written."""
        self.start()
        before = self.written
        self.loop.poll_once(timeout_ms)
        return self.written - before

    def run(self, stop_event: threading.Event | None = None, poll_timeout_ms: int = 200,
            max_idle_s: float | None = None) -> None:
        """Sink until stopped, or until no record has arrived for `max_idle_s` seconds (scripts, CI)."""
        self.start()
        self.loop.poll_timeout_ms = poll_timeout_ms
        run_loops([self.loop], stop_event, max_idle_s, close=self.close)

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
            if not self.loop.assigned():
                quiet_since = None  # still joining the group: silence means nothing yet
            elif self.records != before or quiet_since is None:
                quiet_since = now
            elif now - quiet_since >= idle_s:
                return written
            if now - start > timeout_s:
                raise TimeoutError(f"ledger drain did not go idle within {timeout_s:.0f}s "
                                   f"({self.records} records so far)")
