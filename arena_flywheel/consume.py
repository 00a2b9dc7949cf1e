"""The one Kafka consumer loop every group consumer runs (generation pools, judge pools, ledger, trainer).

A `ConsumerLoop` owns everything that is the same for all of them:

- joining the group (with the Tansu workaround: see `join`),
- polling a batch, decoding each record into the expected event type,
- dead-lettering what does not decode within `cfg.limits`, with source `topic[partition]@offset`, the
  decoder's reason and a bounded excerpt of the raw bytes (`DeadLetter.of`), so a poison record of any size
  or shape becomes a small dead letter and the loop goes on,
- handing the decoded batch to the service (`handle(batch)`: the only part a service writes),
- flushing the publisher (the broker has acked everything the batch produced) before a guarded commit:
  a failed flush seeks back so the batch is read again, a failed commit (a rebalance) is logged and the
  records come again to the new owner; ids are deterministic, so redelivery is deduplicated downstream,
- the idle stop (`--max-idle`), pause/resume (poll keeps the group membership), close.

Delivery is at-least-once; see docs/kafka.md.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .config import Config
from .events import BadEvent, DeadLetter, Event, decode
from .kafka import IdleTimer, Publisher, make_consumer

log = logging.getLogger(__name__)


def source_of(record: Any) -> str:
    """Where a record came from, as dead letters and logs name it."""
    return f"{record.topic}[{record.partition}]@{record.offset}"


@dataclass
class Item:
    """One decoded record of a batch."""
    event: Event
    record: Any

    @property
    def source(self) -> str:
        return source_of(self.record)


@dataclass
class Batch:
    """What one poll brought: decoded items in record order, and the dead letters made of the rest."""
    items: list[Item] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    records: list[Any] = field(default_factory=list)

    @property
    def events(self) -> list[Event]:
        return [i.event for i in self.items]


class Service:
    """start() / close() and `with service:` for everything that holds clients (loops, pools, the ledger)."""

    def start(self):
        return self

    def close(self) -> None:
        pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


def close_consumer(consumer) -> None:
    """Close a kafka-python consumer without committing: offsets are committed only after a batch's effects."""
    if consumer is None:
        return
    try:
        consumer.close(autocommit=False)
    except Exception:  # noqa: BLE001 - closing anyway
        log.debug("consumer close failed", exc_info=True)


@dataclass
class LoopStats:
    records: int = 0          # records polled (redeliveries included)
    batches: int = 0
    bad_records: int = 0      # records that did not decode (dead-lettered)
    dead_letters: int = 0     # every dead letter this loop or its handler published
    commit_failures: int = 0
    publish_failures: int = 0  # batches read again because the publisher's flush failed


class ConsumerLoop(Service):
    """A kafka-python group consumer over `topics`, run batch by batch through `handle(batch)`.

    `expect` is the event class records must decode to (None: any event). `handle` may publish with
    `self.publisher` (shared, flushed before every commit) and may raise: the batch is then neither
    committed nor lost (the exception propagates and the service stops, or restarts and reads it again).
    """

    def __init__(self, cfg: Config, topics: list[str], group: str | None, handle: Callable[[Batch], Any], *,
                 expect: type[Event] | None = None, stage: str, publisher: Publisher | None = None,
                 max_records: int = 500, poll_timeout_ms: int = 200, auto_offset_reset: str = "earliest"):
        self.cfg = cfg
        self.topics = list(topics)
        self.group = group
        self.handle = handle
        self.expect = expect
        self.stage = stage
        self.max_records = max_records
        self.poll_timeout_ms = poll_timeout_ms
        self.auto_offset_reset = auto_offset_reset
        self.stats = LoopStats()
        self.publisher = publisher
        self._own_publisher = publisher is None
        self.consumer = None
        self._dead_topic = cfg.topic("deadletter")
        self._paused = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "ConsumerLoop":
        if self.consumer is not None:
            return self
        self.ensure_publisher()
        self.consumer = make_consumer(self.cfg, self.topics, self.group, auto_offset_reset=self.auto_offset_reset)
        return self

    def close(self) -> None:
        close_consumer(self.consumer)
        self.consumer = None
        if self._own_publisher and self.publisher is not None:
            self.publisher.close()
            self.publisher = None

    def ensure_publisher(self) -> Publisher:
        """The publisher the batch's events go through (made, and owned, on first use when none was given)."""
        if self.publisher is None:
            self.publisher = Publisher(self.cfg)
        return self.publisher

    def assigned(self) -> bool:
        return bool(self.consumer is not None and self.consumer.assignment())

    def join(self) -> None:
        """Finish joining the group before polling.

        kafka-python drops a JoinGroup/SyncGroup result that completes between two polls and joins again,
        and Tansu holds a JoinGroup reply for about half the session timeout, so short polls on a joining
        consumer can rejoin forever. The coordinator's own ensure_active_group with a long timeout avoids
        that without a long, possibly idle, poll; with a client that lacks it the next poll joins."""
        self.start()
        if self.assigned():
            return
        ensure = getattr(getattr(self.consumer, "_coordinator", None), "ensure_active_group", None)
        if callable(ensure):
            try:
                ensure(timeout_ms=self.cfg.kafka.session_timeout_ms + 5000)
            except Exception as exc:  # noqa: BLE001 - the next poll reports real errors
                log.debug("%s: group join did not finish: %s", self.stage, exc)

    def regroup(self, group: str | None) -> None:
        """Continue under another consumer group (a generation pool's eval split after a hot-plug: every
        checkpoint answers the whole split). The next poll joins it."""
        close_consumer(self.consumer)  # its batches are committed already
        self.consumer = None
        self.group = group

    def pause(self) -> None:
        """Stop fetching; `poll_once` still polls (heartbeats, rebalances) so the membership is kept."""
        self._paused = True
        if self.consumer is not None and self.consumer.assignment():
            self.consumer.pause(*self.consumer.assignment())

    def resume(self) -> None:
        self._paused = False
        if self.consumer is not None and self.consumer.paused():
            self.consumer.resume(*self.consumer.paused())

    # ------------------------------------------------------------------ one batch
    def poll_once(self, timeout_ms: int | None = None) -> int:
        """Poll, decode, handle, flush, commit. Returns the number of records polled."""
        self.start()
        if not self.consumer.assignment():
            self.join()
        if self._paused and self.consumer.assignment():  # partitions assigned by a rebalance stay paused
            self.consumer.pause(*self.consumer.assignment())
        polled = self.consumer.poll(timeout_ms=self.poll_timeout_ms if timeout_ms is None else timeout_ms,
                                    max_records=self.max_records)
        records = [r for recs in polled.values() for r in recs]
        if not records:
            return 0
        self.stats.records += len(records)
        self.stats.batches += 1
        batch = self.decode(records)
        self.handle(batch)
        self.finish(records)
        return len(records)

    def decode(self, records: Iterable[Any]) -> Batch:
        batch = Batch(records=list(records))
        for rec in batch.records:
            try:
                batch.items.append(Item(decode(rec.value, self.expect, self.cfg.limits), rec))
            except BadEvent as exc:
                self.stats.bad_records += 1
                dl = self.dead_letter(source_of(rec), exc.reason, rec.value, resend=rec.topic != self._dead_topic)
                batch.dead.append(dl)
                log.warning("%s: bad record %s: %s", self.stage, source_of(rec), exc.reason)
        return batch

    def dead_letter(self, source: str, reason: str, raw: bytes | str | None, *, resend: bool = True) -> DeadLetter:
        """Publish a DeadLetter (flushed with the batch, before the commit). A broken record of the dead-letter
        topic itself is not sent again (it would loop); the DeadLetter is still returned to the caller. It keeps
        at most cfg.limits.dead_letter_excerpt_bytes of `raw` (and its size), so it always fits a request."""
        dl = DeadLetter.of(source, reason, raw, self.stage, self.cfg.limits)
        if resend:
            self.publisher.send(dl)
            self.stats.dead_letters += 1
        return dl

    def finish(self, records: list[Any]) -> bool:
        """Flush what the batch produced, then commit its offsets. False when the batch will come again."""
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        firsts: dict = {}
        nexts: dict = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            firsts[tp] = min(firsts.get(tp, r.offset), r.offset)
            nexts[tp] = max(nexts.get(tp, 0), r.offset + 1)
        try:
            self.publisher.flush()
        except Exception as exc:  # noqa: BLE001 - not acked: read the batch again (same ids downstream)
            self.stats.publish_failures += 1
            log.error("%s: publishing failed (%s); the batch will be read again", self.stage, exc)
            for tp, off in firsts.items():
                self.consumer.seek(tp, off)
            return False
        try:
            self.consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in nexts.items()})
        except Exception as exc:  # noqa: BLE001 - e.g. a rebalance: the new owner reads it again (deduplicated)
            self.stats.commit_failures += 1
            log.warning("%s: offset commit failed (%s: %s); records will be redelivered", self.stage,
                        type(exc).__name__, exc)
            return False
        return True

    # ------------------------------------------------------------------ the loop
    def run(self, stop_event: threading.Event | None = None, max_idle_s: float | None = None,
            tick: Callable[[], Any] | None = None) -> LoopStats:
        """Poll until `stop_event` is set or (with max_idle_s) nothing arrived for that long once the group
        gave partitions. `tick()` runs after every poll (a service's periodic work). Closes at the end."""
        return run_loops([self], stop_event, max_idle_s, tick=tick)[0]


def join_all(loops: list[ConsumerLoop]) -> None:
    """Join several groups at once (each join can take seconds on Tansu)."""
    waiting = [lp for lp in loops if not lp.assigned()]
    if len(waiting) == 1:
        waiting[0].join()
        return
    threads = [threading.Thread(target=lp.join, daemon=True) for lp in waiting]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def run_loops(loops: list[ConsumerLoop], stop_event: threading.Event | None = None,
              max_idle_s: float | None = None, *, tick: Callable[[], Any] | None = None,
              close: Callable[[], Any] | None = None) -> list[LoopStats]:
    """Serve several consumers from one thread, in turn (a generation pool's eval and train groups).

    Idle time counts once every loop has partitions, or, for a replica the group gives none (more replicas
    than partitions), after a grace of three session timeouts."""
    stop_event = stop_event or threading.Event()
    grace = 3 * loops[0].cfg.kafka.session_timeout_ms / 1000 if loops else 0.0
    idle = IdleTimer(max_idle_s, grace_s=grace)
    try:
        for lp in loops:
            lp.start()
        join_all(loops)
        share = max(1, loops[0].poll_timeout_ms // max(1, len(loops))) if loops else 200
        while not stop_event.is_set():
            progressed = False
            for lp in loops:
                progressed |= lp.poll_once(share) > 0
            if tick is not None:
                progressed |= bool(tick())
            if idle.expired(all(lp.assigned() for lp in loops), progressed):
                break
        return [lp.stats for lp in loops]
    finally:
        for lp in loops:
            lp.close()
        if close is not None:
            close()
