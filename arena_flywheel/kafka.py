"""Kafka plumbing shared by every service: topic specs, idempotent topic creation, clients.

Producers and sync consumers use kafka-python (the design card's client); Faust brings aiokafka.
Client settings are chosen to be quick on the embedded Tansu broker and correct on Apache Kafka
(docs/kafka.md explains each).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Iterable

from .config import Config
from .errors import BrokerError
from .events import BadEvent, Checkpoint, DeadLetter, Event, Instruction, decode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    name: str  # without prefix
    key: str
    compacted: bool = False
    single_partition: bool = False  # global state, e.g. checkpoints must be seen in order
    doc: str = ""


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec("instructions.train", "instruction id", doc="Instruction events, split=train"),
    TopicSpec("instructions.eval", "instruction id", doc="Instruction events, split=eval"),
    TopicSpec("responses", "instruction id", doc="Response events"),
    TopicSpec("battles", "instruction id", doc="Battle events"),
    TopicSpec("verdicts", "instruction id", doc="Verdict events"),
    TopicSpec("failures", "instruction id", compacted=True, doc="Failure events; latest per instruction wins"),
    TopicSpec("checkpoints", "model name", single_partition=True, doc="Checkpoint events, in order"),
    TopicSpec("deadletter", "source", doc="DeadLetter events: anything that could not be processed"),
)


def topic_for(cfg: Config, event: Event) -> str:
    name = event.topic_name() if isinstance(event, Instruction) else event.TOPIC
    return cfg.topic(name)


def client_kwargs(cfg: Config) -> dict:
    """Connection and security settings common to kafka-python clients."""
    k = cfg.kafka
    if not k.bootstrap_servers:
        raise BrokerError("no Kafka bootstrap servers: set KAFKA_BOOTSTRAP_SERVERS (or kafka.bootstrap_servers), "
                          "or start one with arena_flywheel.broker.kafka_for(cfg)")
    kw: dict = {"bootstrap_servers": k.bootstrap_servers.split(","), "security_protocol": k.security_protocol}
    if k.sasl_mechanism:
        kw["sasl_mechanism"] = k.sasl_mechanism
        kw["sasl_plain_username"] = k.sasl_username
        kw["sasl_plain_password"] = os.environ.get(k.sasl_password_env, "")
    for src, dst in (("ssl_cafile", "ssl_cafile"), ("ssl_certfile", "ssl_certfile"), ("ssl_keyfile", "ssl_keyfile")):
        if getattr(k, src):
            kw[dst] = getattr(k, src)
    return kw


def ensure_topics(cfg: Config, specs: Iterable[TopicSpec] = TOPICS) -> list[str]:
    """Create the topics that do not exist yet; existing ones are left alone. Returns created names."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(**client_kwargs(cfg), client_id="arena-admin")
    try:
        existing = set(admin.list_topics())
        new = []
        for s in specs:
            name = cfg.topic(s.name)
            if name in existing:
                continue
            configs = {"cleanup.policy": "compact" if s.compacted else "delete"}
            if not s.compacted:
                configs["retention.ms"] = "-1"  # the stream is the record; the ledger is the durable copy
            parts = 1 if s.single_partition else cfg.kafka.partitions
            new.append(NewTopic(name, parts, cfg.kafka.replication_factor, topic_configs=configs))
        created = []
        for t in new:  # one by one: a concurrent creator makes only its own topic fail
            try:
                admin.create_topics([t])
                created.append(t.name)
            except TopicAlreadyExistsError:
                pass
        return created
    finally:
        admin.close()


class Publisher:
    """Sends events to their topics with their keys; `flush()` waits for the broker's acks.

    acks=all and retries: at-least-once. Idempotent producers are off because Tansu 0.6 rejects
    them; consumers are idempotent on event id instead (docs/kafka.md).
    """

    def __init__(self, cfg: Config, **overrides):
        from kafka import KafkaProducer

        self.cfg = cfg
        kw = dict(client_kwargs(cfg), acks="all", linger_ms=5, retries=10, client_id="arena-producer",
                  max_request_size=16 * 1024 * 1024)
        kw.update(overrides)
        self.producer = KafkaProducer(**kw)

    def send(self, event: Event, topic: str | None = None):
        return self.producer.send(topic or topic_for(self.cfg, event), key=event.kafka_key().encode("utf-8"),
                                  value=event.encode())

    def send_raw(self, topic: str, key: bytes | None, value: bytes):
        return self.producer.send(topic, key=key, value=value)

    def dead_letter(self, source: str, reason: str, raw: bytes | str | None, stage: str = ""):
        """Send a DeadLetter of `raw`: at most cfg.limits.dead_letter_excerpt_bytes of it, plus its size, so a
        record too large for the producer's request limit is still dead-lettered."""
        return self.send(DeadLetter.of(source, reason, raw, stage, self.cfg.limits))

    def flush(self, timeout: float | None = 60):
        self.producer.flush(timeout=timeout)

    def close(self):
        try:
            self.producer.flush(timeout=30)
        finally:
            self.producer.close(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class IdleTimer:
    """`--max-idle S` for a group consumer's loop: S seconds with nothing new, counted once the group has
    given the consumer partitions (joining a group on Tansu takes seconds and is not idleness), or, for a
    consumer the group gives none (more replicas than partitions), once `grace_s` has passed."""

    def __init__(self, max_idle_s: float | None, grace_s: float = 0.0):
        self.max_idle_s = max_idle_s
        self.start = self.since = time.monotonic()
        self.grace_s = grace_s

    def expired(self, assigned: bool, progressed: bool) -> bool:
        now = time.monotonic()
        waiting = not assigned and (not self.grace_s or now - self.start < self.grace_s)
        if progressed or waiting:
            self.since = now
            return False
        return self.max_idle_s is not None and now - self.since > self.max_idle_s


def make_consumer(cfg: Config, topics: list[str] | None, group_id: str | None, *,
                  auto_offset_reset: str = "earliest", **overrides):
    """A kafka-python consumer with settings that join groups quickly on Tansu and are safe on Kafka.

    Auto-commit is off: services commit after their side effects are durable (at-least-once).
    """
    from kafka import KafkaConsumer

    k = cfg.kafka
    kw = dict(
        client_kwargs(cfg),
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset=auto_offset_reset,
        session_timeout_ms=k.session_timeout_ms,
        heartbeat_interval_ms=k.heartbeat_interval_ms,
        fetch_max_wait_ms=k.fetch_max_wait_ms,
        max_poll_interval_ms=k.max_poll_interval_ms,
        request_timeout_ms=max(30_000, k.session_timeout_ms + 5_000),
        client_id=f"arena-{group_id or 'reader'}",
    )
    kw.update(overrides)
    consumer = KafkaConsumer(**kw)
    if topics:
        consumer.subscribe(topics)
    return consumer


def read_topic(cfg: Config, name: str, expect: type[Event] | None = None, timeout_s: float = 10.0) -> list[Event]:
    """Every event on topic `name` (unprefixed) from the beginning to its current end, all partitions,
    no group (nothing committed), in partition order. Records that do not decode (within cfg.limits) are
    skipped: the service that consumes the topic dead-letters them."""
    from kafka import TopicPartition

    topic = cfg.topic(name)
    c = make_consumer(cfg, None, None)
    try:
        parts = None
        deadline = time.monotonic() + timeout_s
        while not parts and time.monotonic() < deadline:
            parts = c.partitions_for_topic(topic)
            if not parts:
                time.sleep(0.1)
        tps = [TopicPartition(topic, p) for p in sorted(parts or [])]
        if not tps:
            return []
        c.assign(tps)
        c.seek_to_beginning(*tps)
        end = c.end_offsets(tps)
        out: list[Event] = []
        while any(c.position(tp) < end[tp] for tp in tps) and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=200).values():
                for r in recs:
                    try:
                        out.append(decode(r.value, expect, cfg.limits))
                    except BadEvent:
                        continue
        return out
    finally:
        c.close(autocommit=False)


def read_checkpoints(cfg: Config, timeout_s: float = 10.0) -> list[Checkpoint]:
    """Every Checkpoint event on the checkpoints topic (one partition), in order."""
    return read_topic(cfg, "checkpoints", Checkpoint, timeout_s)
