"""The Faust worker: the pairing agent (responses -> battles) and the ratings agent (verdicts -> pairwise
counts, loss records, failures), with the live leaderboard of the whole arena at GET /leaderboard.

`arena stream [--web-port N] [--without-web]` runs it in the foreground; run several for more throughput.
Delivery is at-least-once; the exactly-once *effect* comes from per-partition state records that carry
the last applied offset, plus a bounded window of processed verdict ids (docs/streams.md). The ratings
agent reads its verdict partitions with its own consumer, positioned from those records, in whole fetched
batches (through Faust's per-message path it applied 2.2-2.6x fewer verdicts/s; docs/streams.md). Every worker
publishes its partitions' counts to the snapshots topic and serves the merge of all partitions
(streams/view.py).
"""
from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import socket
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.tables import recovery as faust_recovery
from faust.transport.drivers import aiokafka as faust_aiokafka

from arena_flywheel.config import Config
from arena_flywheel.events import BadEvent, Checkpoint, DeadLetter, Instruction, Response, decode
from arena_flywheel.kafka import ensure_topics
from arena_flywheel.ratings import BradleyTerry, PairCounts
from consumers.judging.health import JudgeHealth

from . import state as S
from . import view as V
from .dashboard import DashboardState, drop_builtin_routes, install_dashboard
from .reducer import RatingsRules, apply_verdicts

log = logging.getLogger(__name__)

BATCH = 500          # verdicts per ratings batch at most: one state record per partition per batch
LATENCY_WINDOW = 500  # /stats reports p50/p99 over the last this many verdicts
HEARTBEAT_S = 30.0   # an unchanged partition's snapshot is re-published this often (bounds its age)


@dataclass
class _Partition:
    """What the ratings agent keeps in memory for a partition it owns, rebuilt from the table whenever
    the partition record object there is not the one it was built with (recovery, reassignment)."""
    state: dict | None
    seen: set[str]                # processed ids in the window (id records + the record's "recent")
    ids: S.Retention              # id records b:<p>:<offset>, oldest first
    losses: S.Retention           # loss records l:<p>:<instruction>, least recently written first
    homes: S.LossHomes = field(default_factory=S.LossHomes)  # the changelog record of each loss record
    expired: list[str] = field(default_factory=list)  # changelog keys to delete with the next batch


# Faust passes fetch_max_wait_ms=1500 to aiokafka unconditionally; on a quiet topic every fetch then
# parks 1.5 s in the broker. The consumer is built before start(), so we lower the attribute on the
# instance it returns (the Fetcher reads it at start). Apps without `_arena_fetch_max_wait_ms` keep 1500.
_orig_create_worker_consumer = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer


def _create_worker_consumer(self, transport):
    consumer = _orig_create_worker_consumer(self, transport)
    wait = getattr(self.app, "_arena_fetch_max_wait_ms", None)
    if wait is not None:
        consumer._fetch_max_wait_ms = int(wait)
    return consumer


if not getattr(faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer, "_arena", False):
    _create_worker_consumer._arena = True
    faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer


# Faust's recovery ends (Recovery.on_recovery_completed; _resume_streams for an app without tables) by
# resuming the stream partitions, awaiting perform_seek, then flow_control.resume(), which *clears* every
# agent's queue. Changelog recovery has already started the fetcher and resumed the flow, so records fetched
# during the seek were queued, then dropped by the clear after the consumer's position had passed them:
# a restarted worker skipped 20-160 verdicts per partition of its first fetch in 4 of 6 runs of
# benchmarks/bench_stream.py (tests/test_stream.py makes the interleaving certain). Stopping the consumer's
# flow first delivers nothing until the seek is done; both methods resume the flow when they finish, and
# when they return early for a newer rebalance, that rebalance's recovery resumes it. (Verdicts no longer go
# through Faust's consumer, but instructions and responses do.) When the recovery was of the current
# generation, the app's `_arena_recovered` hook then starts the ratings agent on the recovered tables.
def _stop_flow_first(method):
    async def wrapper(self, generation_id: int = 0, *args, **kwargs):
        self.app.consumer.stop_flow()
        out = await method(self, generation_id, *args, **kwargs)
        hook = getattr(self.app, "_arena_recovered", None)
        if hook is not None and self.app.consumer_generation_id == generation_id:
            hook()
        return out
    wrapper._arena = True
    return wrapper


for _name in ("on_recovery_completed", "_resume_streams"):
    if not getattr(getattr(faust_recovery.Recovery, _name), "_arena", False):
        setattr(faust_recovery.Recovery, _name, _stop_flow_first(getattr(faust_recovery.Recovery, _name)))


class Stream:
    """A Faust app built from a Config, with its topics, tables and agents."""

    def __init__(self, cfg: Config, *, web_port: int = 6066, web: bool = True, datadir: str | None = None,
                 web_bind: str = "127.0.0.1"):
        self.cfg = cfg
        k = cfg.kafka
        if not k.bootstrap_servers:
            raise RuntimeError("no Kafka bootstrap servers (use arena_flywheel.broker.kafka_for(cfg))")
        self.app_id = f"{k.topic_prefix}stream"
        store = "memory://"
        try:  # rocksdb keeps big tables off the heap; memory is enough for the arena's small state
            import rocksdict  # noqa: F401
            store = "rocksdb://"
        except ImportError:
            pass
        datadir = Path(datadir or Path(cfg.data_dir) / "faust" / self.app_id)
        datadir.parent.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
        self.app = faust.App(
            self.app_id,
            broker=[f"kafka://{h}" for h in k.bootstrap_servers.split(",")],
            store=store,
            topic_partitions=k.partitions,
            topic_replication_factor=k.replication_factor,
            broker_session_timeout=max(6.0, k.session_timeout_ms / 1000),
            broker_heartbeat_interval=max(1.0, k.heartbeat_interval_ms / 1000),
            broker_max_poll_interval=k.max_poll_interval_ms / 1000,
            # Tansu reports a wrong latest offset when the last batch holds several records, and
            # table recovery reads up to that offset: one record per batch keeps it right.
            producer_max_batch_size=1,
            producer_linger=0.0,
            broker_commit_interval=0.5,
            consumer_auto_offset_reset="earliest",
            web_enabled=web, web_bind=web_bind, web_host="127.0.0.1" if web_bind in ("0.0.0.0", "::") else web_bind,
            web_port=web_port,
            datadir=str(datadir),
            table_cleanup_interval=3600.0,
            # A standby copy of another worker's partitions would land in the same table data and be
            # served as this worker's; the global view (snapshots topic) replaces what standbys gave.
            table_standby_replicas=0,
        )
        self.app._arena_fetch_max_wait_ms = k.fetch_max_wait_ms
        raw = dict(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
        self.t_instructions = self.app.topic(cfg.topic("instructions.train"), cfg.topic("instructions.eval"),
                                             cfg.topic("responses"), **raw)
        self.t_battles = self.app.topic(cfg.topic("battles"), **raw)
        self.t_failures = self.app.topic(cfg.topic("failures"), **raw)
        self.t_dead = self.app.topic(cfg.topic("deadletter"), **raw)
        self.t_checkpoints = self.app.topic(cfg.topic("checkpoints"), **raw)
        self.t_snapshots = self.app.topic(cfg.topic(V.TOPIC.name), **raw)
        # One table per agent; every value is one changelog record (see docs/streams.md for why one
        # table with prefixed keys: all writes of a partition are then ordered in one changelog partition).
        self.pairing = self.app.Table("pairing", default=None, key_type=str, value_type=None)
        self.ratings = self.app.Table("ratings", default=None, key_type=str, value_type=None)
        self.snapshot: dict[str, Any] = {"rows": [], "counts": {}, "verdicts": 0, "generated_at": None}
        self.rules = RatingsRules.from_config(cfg)
        self.bt = BradleyTerry.from_config(cfg.ratings)
        self._warm = None
        self.stats = defaultdict(int)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.view = V.GlobalView()
        self._parts: dict[int, _Partition] = {}
        # The ratings agent (run_ratings) reads verdicts only while the tables of the current assignment are
        # recovered; a revocation stops it (after its batch in flight) and bumps the generation, a completed
        # recovery starts it again with every partition sought to its record's offset + 1.
        self._ratings_ready = False
        self._ratings_gen = 0
        self._ratings_lock = asyncio.Lock()
        self._verdicts: AIOKafkaConsumer | None = None
        self.app._arena_recovered = self._start_ratings
        # per partition: train instructions whose pairing records are kept (arena.pairing_records)
        self._pairing_kept: dict[int, S.Retention] = {}
        self._pairing_expired: dict[int, list[str]] = {}
        self._published: dict[int, tuple[int, float]] = {}  # partition -> (offset, time) last published
        self._snapshots_ready = False  # the snapshots topic exists
        self._fit_key: tuple | None = None  # the partitions' offsets the served fit was made from
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        # what the web page shows (this worker's partitions): see streams/dashboard.py
        self.dashboard = DashboardState()
        self.health = JudgeHealth()
        self._register()
        if web:  # only the routes registered here: the page, its API, /leaderboard and /stats
            drop_builtin_routes(self.app)
            install_dashboard(self.app, self.dashboard.to_dict)

    # -------------------------------------------------------------------------------- helpers
    async def _put(self, table, partition: int, key: str, value) -> None:
        """Write a table key to the changelog partition of the event that caused it. Faust would use the
        partition of its *current* event, which the ratings agent (not a Faust stream) does not have."""
        table.data[key] = value
        _own(table, key, partition)
        await self._changelog(table, partition, key, _json(value))

    async def _delete(self, table, partition: int, key: str) -> None:
        """Delete a table key; a tombstone in its changelog partition deletes it at recovery too."""
        table.data.pop(key, None)
        getattr(table.data, "_key_partition", {}).pop(key, None)
        await self._changelog(table, partition, key, None)

    @staticmethod
    async def _changelog(table, partition: int, key: str, raw: bytes | None) -> None:
        """Send a table key's value (its JSON, as the table's json serializer reads it back at recovery; None
        deletes it)."""
        # Straight into the Kafka producer, not Faust's send_soon buffer: Faust flushes that buffer before
        # committing offsets but gives up after 0.1 s without progress (Producer.flush_atmost), so on a
        # busy machine an offset was committed before the state it produced was sent, and a kill -9 then
        # lost the verdicts in between (seen in tests/test_scaleout.py). The producer's own flush, which
        # Faust awaits before every commit, covers what is sent here.
        await table.changelog_topic.send(key=key, value=raw, partition=partition,
                                         key_serializer=table.key_serializer, value_serializer="raw")

    async def _dead(self, event, reason: str, stage: str) -> None:
        m = event.message
        await self._dead_raw(f"{m.topic}[{m.partition}]@{m.offset}", reason, event.value, stage)

    async def _dead_raw(self, source: str, reason: str, raw: bytes | None, stage: str) -> None:
        # an excerpt of the raw value and its size (cfg.limits): a poison record of any size still sends
        dl = DeadLetter.of(source, reason, raw, stage, self.cfg.limits)
        await self.t_dead.send(key=dl.kafka_key().encode(), value=dl.encode())
        self.stats["dead_letters"] += 1
        log.warning("dead-lettered %s: %s", dl.source, reason)

    # -------------------------------------------------------------------------------- agents
    def _register(self) -> None:
        app, cfg = self.app, self.cfg
        targets = list(cfg.arena.targets)

        @app.agent(self.t_instructions, name="pairing")
        async def pairing(stream):
            async for event in stream.events():
                try:
                    ev = decode(event.value, limits=cfg.limits)
                    if not isinstance(ev, (Instruction, Response)):
                        raise BadEvent(f"expected arena.instruction or arena.response, got {ev.SCHEMA}")
                except BadEvent as exc:
                    await self._dead(event, exc.reason, "stream.pairing")
                    continue
                p = event.message.partition
                iid = ev.id if isinstance(ev, Instruction) else ev.instruction_id
                rec = self.pairing.data.get(f"r:{iid}") or {"responses": {}, "emitted": []}
                ins = self.pairing.data.get(f"i:{iid}")
                if isinstance(ev, Instruction):
                    if ins is not None:
                        continue
                    ins = S.instruction_record(ev)
                    await self._put(self.pairing, p, f"i:{iid}", ins)
                elif not S.add_response(rec, ev):
                    continue
                if ins is None:  # a response before its instruction: kept; battles come with the instruction
                    await self._put(self.pairing, p, f"r:{iid}", rec)
                    await self._keep_pairing(p, iid, ev.split)  # (or after it was dropped: then never)
                    continue
                battles = S.new_battles(ins, rec, iid, cfg.arena.plan_for(ins["split"]), targets,
                                        cfg.arena.sampled_k, cfg.arena.seed)
                # battles first, then the record that says they were sent: a crash in between re-sends
                # them (same ids) instead of losing them. In memory the record (with the answers a Failure
                # names) is there before the battles go out, so no verdict of them can be applied before it.
                self.pairing.data[f"r:{iid}"] = rec
                for b in battles:
                    await self.t_battles.send(key=b.kafka_key().encode(), value=b.encode())
                self.stats["battles"] += len(battles)
                await self._put(self.pairing, p, f"r:{iid}", rec)
                if battles:
                    await self._keep_pairing(p, iid, ins["split"])

        @app.task
        async def ratings():
            await self.run_ratings()

        @app.on_partitions_revoked.connect
        async def on_revoked(app, revoked, **kwargs):
            await self._stop_ratings()

        @app.agent(self.t_checkpoints, name="checkpoints")
        async def checkpoints(stream):
            # for the page's iteration marks only; the pools act on checkpoints, not this worker
            async for event in stream.events():
                try:
                    c = decode(event.value, expect=Checkpoint, limits=cfg.limits)
                except BadEvent as exc:
                    await self._dead(event, exc.reason, "stream.checkpoints")
                    continue
                self.dashboard.add_checkpoint(c.model, c.checkpoint, c.iteration, c.stage or None)

        @app.timer(interval=cfg.ratings.refresh_s)
        async def refresh():
            await self.publish_snapshots()
            self.refresh()

        @app.task
        async def snapshots():
            await self.read_snapshots()

        @app.page("/leaderboard")
        async def leaderboard_page(web, request):
            return web.json(self.snapshot)

        @app.page("/stats")
        async def stats_page(web, request):
            out = self.stats_view()
            if request.query.get("sizes"):  # a walk over the tables: for benchmarks, not for polling
                out["tables"] = self.table_sizes()
            return web.json(out)

        self.agents = (pairing, checkpoints)

    # -------------------------------------------------------------------------------- ratings agent
    def _start_ratings(self) -> None:
        """Faust recovered the tables of the current assignment (called by the recovery wrapper above)."""
        self._ratings_ready = True
        self._ratings_gen += 1
        # Everything alive now (the libraries' functions and classes, the app, the recovered tables) leaves
        # the cyclic collector's scans: its full collections over about 115,000 such objects paused the loop
        # 60-100 ms, which was the produce -> table-update p99 at 100 verdicts/s (loss records are held as
        # text for the same reason, S.loss_text). Objects are still freed by reference counting; only a
        # reference cycle alive now and dropped later is never collected (one such set per rebalance).
        gc.freeze()

    async def _stop_ratings(self) -> None:
        """Partitions are being revoked: apply nothing more until the next recovery, let the batch in flight
        finish and its writes reach the broker, so the next owner recovers them (Faust calls this before the
        worker rejoins the group, and the next owner reads the changelog only after that)."""
        self._ratings_ready = False
        self._ratings_gen += 1
        async with self._ratings_lock:
            pass
        await self.app.producer.flush()

    async def run_ratings(self) -> None:
        """The ratings agent: read this worker's verdict partitions and apply them in fetched batches.

        Verdicts do not go through Faust's consumer: its per-message path (four asyncio tasks per record in
        its fetcher, an Event, a queue, an ack) held the agent to 7.5-9k verdicts/s, where the same reducer
        handed whole fetches applied 19-20k/s (benchmarks/bench_stream.py). The partitions are those Faust gave this worker (they follow the tables: every
        topic of the arena has the same partitions); each is read from its partition record's offset + 1, so
        the record is the position and nothing is committed: a restart, a kill -9 or a new owner resumes
        exactly after the last batch whose record landed (docs/streams.md, "Exactly-once effect")."""
        topic = self.cfg.topic("verdicts")
        k = self.cfg.kafka
        consumer = self._verdicts = AIOKafkaConsumer(
            bootstrap_servers=k.bootstrap_servers, group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", fetch_max_wait_ms=k.fetch_max_wait_ms,
            client_id=f"{self.app_id}-ratings")
        await consumer.start()
        try:
            gen, tps = None, []
            while True:
                if not self._ratings_ready:
                    if tps:
                        consumer.pause(*tps)
                    await asyncio.sleep(0.02)
                    continue
                if gen != self._ratings_gen:  # (re)started: every partition from its record
                    gen = self._ratings_gen
                    tps = [TopicPartition(topic, p) for p in sorted(self.owned_partitions())]
                    consumer.assign(tps)
                    for tp in tps:
                        st = self.ratings.data.get(f"p:{tp.partition}")
                        if st is None:
                            await consumer.seek_to_beginning(tp)
                        else:
                            consumer.seek(tp, st["offset"] + 1)
                if not tps:
                    await asyncio.sleep(0.1)
                    continue
                fetched = await consumer.getmany(timeout_ms=200, max_records=BATCH * len(tps))
                async with self._ratings_lock:
                    if gen != self._ratings_gen:  # revoked while fetching: sought again from the records
                        continue
                    for tp, records in fetched.items():
                        for i in range(0, len(records), BATCH):
                            await self._apply(tp.partition, records[i:i + BATCH])
        finally:
            self._verdicts = None
            await consumer.stop()

    async def _apply(self, p: int, records) -> None:
        """Apply one partition's verdict records (aiokafka ConsumerRecords, in offset order; streams/reducer.py)
        and perform its writes in order: loss records and failures, then the partition record, then the
        batch's id record, then the deletions of records past retention. Order matters; see docs/streams.md."""
        part = self._partition(p)
        self._check_offsets(p, (part.state or {}).get("offset", -1), records)
        red = apply_verdicts(p, part.state, part.seen, self.ratings.data, self.pairing.data,
                             [(r.offset, r.value) for r in records], self.rules)
        if red.dead:
            by_offset = {r.offset: r for r in records}
            for off, reason in red.dead:
                r = by_offset[off]
                await self._dead_raw(f"{r.topic}[{r.partition}]@{off}", reason, r.value, "stream.ratings")
        expired: list[str] = []
        # 1) loss records (idempotent: keyed by verdict id inside), all of this batch's in one changelog
        #    record (more when they exceed S.LOSS_BATCH_BYTES): a record each cost a broker round trip each
        #    (Tansu notes: one record per producer batch), half the agent's time (docs/streams.md). In memory
        #    each stays under its own l: key.
        for home, texts, raw in S.loss_batches(p, red.state["offset"], red.loss_records):
            _own(self.ratings, home, p)
            await self._changelog(self.ratings, p, home, raw)
            self.ratings.data[home] = sorted(texts)  # the records themselves live under l:
            for lkey, text in texts.items():
                self._keep_loss(p, part, lkey, text, home)
        for f in red.failures:
            await self.t_failures.send(key=f.kafka_key().encode(), value=f.encode())
            self.dashboard.add_failure(f)
        self.stats["failures"] += len(red.failures)
        self.stats["failures_without_answers"] += red.missing_answers
        # 2) the partition record: offset + counts + this batch's ids, in one changelog record
        if red.restore:
            await self._put(self.ratings, p, *red.restore)
            expired += part.ids.add(red.restore[0], len(red.restore[1]))
        await self._put(self.ratings, p, f"p:{p}", red.state)
        part.state = red.state  # the cache follows the record object now in the table
        # 3) the batch's processed ids, one record, for duplicates that arrive later as new records
        if red.ids_record:
            await self._put(self.ratings, p, *red.ids_record)
            part.seen.update(red.ids)
            expired += part.ids.add(red.ids_record[0], len(red.ids))
        # 4) retention: the oldest id records beyond the window, loss-record homes that hold nothing current
        #    (and what an earlier rebuild left to delete)
        expired += part.expired
        part.expired = []
        for key in expired:
            if key.startswith("b:"):
                part.seen.difference_update(self.ratings.data.get(key) or ())
            if key in part.homes.home:  # an older version's l: record whose latest copy moved into an L: record
                await self._changelog(self.ratings, p, key, None)
            else:
                await self._delete(self.ratings, p, key)
        for v in red.accepted:
            self.health.add(v)
        self.stats["verdicts"] += len(red.ids)
        now = time.time()
        self.stats["last_update"] = now
        # produce -> table-update latency (created_at is stamped by the producer; same clock on one host)
        self.latencies.extend(now - v.created_at for v in red.accepted)

    @staticmethod
    def _check_offsets(p: int, applied: int, records: list) -> None:
        """Log a gap in the offsets the agent is handed. Verdicts are neither compacted nor written in
        transactions, so on Apache Kafka consecutive records have consecutive offsets and a gap means a
        record that was never applied (the watermark then skips it for good). Every gap seen so far came from
        Faust's recovery clearing the agents' queues (fixed above, _stop_flow_first, before verdicts left
        Faust's consumer); this stays as the alarm should another path drop records (docs/streams.md)."""
        nxt = applied + 1
        for r in records:
            if r.offset > nxt:
                log.warning("verdicts partition %d: offsets %d..%d were not handed to the agent (applied offset %d)",
                            p, nxt, r.offset - 1, applied)
            nxt = max(nxt, r.offset + 1)

    async def _keep_pairing(self, p: int, iid: str, split: str) -> None:
        """Enter a train instruction of partition p that has sent battles (or holds responses without an
        instruction) into the window, and drop the pairing records of the least recently entered beyond
        arena.pairing_records. Not in the window: instructions still waiting for the responses to pair (they
        are the generation backlog), and eval records (every new checkpoint pairs on them again)."""
        kept = self._pairing_kept.get(p)
        if kept is None:  # first use since start or (re)assignment: rebuild from the table, in its order
            kept = self._pairing_kept[p] = S.Retention(self.cfg.arena.pairing_records)
            owners = getattr(self.pairing.data, "_key_partition", {})
            expired = self._pairing_expired.setdefault(p, [])
            for key, rec in list(self.pairing.data.items()):
                if isinstance(key, str) and key.startswith("r:") and owners.get(key) == p \
                        and S.pairing_split(key, rec) == "train" \
                        and (rec.get("emitted") or f"i:{key[2:]}" not in self.pairing.data):
                    expired += kept.add(key[2:])
        expired = self._pairing_expired.pop(p, [])
        if split == "train":
            expired += kept.add(iid)
        for old in expired:
            for key in (f"i:{old}", f"r:{old}"):
                if key in self.pairing.data:
                    await self._delete(self.pairing, p, key)

    def _keep_loss(self, p: int, part: _Partition, lkey: str, text: str, home: str) -> None:
        """Hold loss record lkey in memory and enter it into the retention window."""
        self._hold_loss(p, part, lkey, text, home)
        self._retain_loss(part, lkey)

    def _hold_loss(self, p: int, part: _Partition, lkey: str, text: str, home: str) -> None:
        """Hold loss record lkey (its JSON text, S.loss_text; its latest copy in changelog record `home`) in
        memory, registered to partition p; a home it leaves holding nothing current goes to part.expired."""
        self.ratings.data[lkey] = text
        _own(self.ratings, lkey, p)
        part.expired += part.homes.place(lkey, home)

    def _retain_loss(self, part: _Partition, lkey: str) -> None:
        """Enter lkey into the partition's loss-record window; those it pushes out leave memory, and their
        homes that then hold nothing current go to part.expired."""
        for old in part.losses.add(lkey):
            self.ratings.data.pop(old, None)
            getattr(self.ratings.data, "_key_partition", {}).pop(old, None)
            part.expired += part.homes.drop(old)

    def _partition(self, p: int) -> _Partition:
        """The in-memory side of partition p, rebuilt from the table's id and loss records of p when the
        partition record there is another object than the cached one (recovered, reassigned, dropped)."""
        st = self.ratings.data.get(f"p:{p}")
        cached = self._parts.get(p)
        if cached is not None and cached.state is st:
            return cached
        r = self.cfg.ratings
        part = _Partition(st, set((st or {}).get("recent", [])), S.Retention(r.dedupe_window),
                          S.Retention(r.loss_records))
        data = self.ratings.data
        ids, homes, legacy = [], [], []
        b_prefix, l_prefix, L_prefix = f"b:{p}:", f"l:{p}:", f"L:{p}:"
        for k, v in list(data.items()):
            if not isinstance(k, str):
                continue
            if k.startswith(b_prefix):
                ids.append((int(k[len(b_prefix):]), k, v))
            elif k.startswith(L_prefix):
                homes.append((S.home_order(k), k, v))
            elif k.startswith(l_prefix):
                legacy.append(k)
        for _, k, v in sorted(ids):
            part.seen.update(v)
            part.expired += part.ids.add(k, len(v))
        for k in part.expired:  # a smaller window than the one these were written with
            part.seen.difference_update(data.get(k) or ())
        # loss records: batch records in write order (the latest copy of each wins). Recovered from the
        # changelog they hold the records; kept in a local store they name them (the l: keys are there too)
        expanded = set()
        for _, home, v in sorted(homes, key=lambda h: h[0]):
            if isinstance(v, dict):
                for lkey, rec in v.items():
                    self._hold_loss(p, part, lkey, S.loss_text(rec), home)
                expanded.update(v)
                data[home] = sorted(v)
            else:
                part.expired += [h for lkey in v if lkey in data for h in part.homes.place(lkey, home)]
        part.expired += [home for _, home, _ in homes if home not in part.homes.held]  # hold no latest copy
        for lkey in legacy:  # l: records an older version wrote to the changelog, each its own home
            if lkey in expanded:
                part.expired.append(lkey)  # superseded by a batch record: its changelog record goes
            elif lkey not in part.homes.home:
                part.homes.place(lkey, lkey)
                data[lkey] = S.loss_text(S.loss_record(data[lkey]))
        by_age = sorted(part.homes.home, key=lambda k: max((e.get("offset", -1) for e in S.loss_record(data[k]).values()),
                                                           default=-1))
        for lkey in by_age:
            self._retain_loss(part, lkey)
        self._parts[p] = part
        return part

    def table_sizes(self) -> dict[str, Any]:
        """Keys per kind (p: partition, b: id, l: loss, L: loss batch, i:/r: pairing records), their JSON bytes, and the
        processed ids held in memory."""
        keys: dict[str, int] = defaultdict(int)
        size = 0
        for table in (self.ratings, self.pairing):
            for k, v in list(table.data.items()):
                keys[str(k).split(":", 1)[0]] += 1
                size += len(k) + (len(v) if isinstance(v, str) else len(json.dumps(v, separators=(",", ":"))))
        return {"keys": dict(keys), "json_bytes": size, "ids_in_memory": sum(len(p.seen) for p in self._parts.values())}

    def stats_view(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.stats)
        lat = sorted(self.latencies)
        if lat:
            out["latency_ms"] = {"n": len(lat), "p50": 1000 * lat[len(lat) // 2],
                                 "p99": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))]}
        return out

    # -------------------------------------------------------------------------------- leaderboard
    def owned_partitions(self) -> set[int]:
        """Partitions the group gave this worker now (empty before the first assignment): those of its ratings
        table, which Faust assigns with the same partitions of every arena topic (all have kafka.partitions;
        the ratings agent reads these partitions of the verdicts topic)."""
        topic = self.ratings.changelog_topic.get_topic_name()
        try:
            return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic}
        except Exception:  # noqa: BLE001 - no assignment yet
            return set()

    def local_states(self) -> dict[int, dict]:
        """This worker's partition records, of the partitions it owns only (a revoked partition's record
        may still be in the table until recovery drops it)."""
        return {p: st for p in self.owned_partitions() if (st := self.ratings.data.get(f"p:{p}")) is not None}

    async def publish_snapshots(self) -> None:
        """Send the counts of each owned partition that moved (or every HEARTBEAT_S) to the snapshots topic,
        and forget the in-memory side of partitions this worker no longer owns."""
        if not self._snapshots_ready:
            return
        now = time.time()
        local = self.local_states()
        for p in list(self._parts):
            if p not in local:
                del self._parts[p]
        owned = self.owned_partitions()
        for p in list(self._pairing_kept):
            if p not in owned:  # given away: rebuilt from the table if it comes back
                del self._pairing_kept[p]
        for p, st in local.items():
            last = self._published.get(p)
            if last is not None and last[0] == st["offset"] and now - last[1] < HEARTBEAT_S:
                continue
            snap = V.snapshot_of(p, st, self.worker_id, now)
            await self.t_snapshots.send(key=str(p).encode(), value=V.encode(snap))
            self._published[p] = (st["offset"], now)
            self.view.add(snap)  # this worker's own view need not wait for the round trip

    def create_topics(self) -> None:
        """Create the snapshots topic; call it before the worker starts (`arena stream` does). The worker's one
        producer asks the broker for the metadata of every topic until it is sent to a topic it does not
        know; from then on aiokafka asks only for the topics it had to look up, so the first snapshot sent to
        a topic created while the worker ran dropped the battles and changelog topics from its metadata:
        their queued batches had no leader and were never sent, and the pairing agent and every commit
        waited on them for good (the stall of docs/recipes/replay-vicuna-eval.sh; docs/streams.md)."""
        ensure_topics(self.cfg, [V.TOPIC])
        self._snapshots_ready = True

    async def read_snapshots(self) -> None:
        """Follow the snapshots topic from its beginning (no group: every worker reads every partition's
        snapshots) into the global view. Compaction keeps the latest per partition on Apache Kafka."""
        topic = self.cfg.topic(V.TOPIC.name)
        if not self._snapshots_ready:  # never created here: see create_topics
            log.warning("no snapshots topic: Stream.create_topics() was not called before the worker started; "
                        "this worker serves its own partitions only")
            return
        consumer = AIOKafkaConsumer(bootstrap_servers=self.cfg.kafka.bootstrap_servers, group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="earliest",
                                    fetch_max_wait_ms=self.cfg.kafka.fetch_max_wait_ms)
        await consumer.start()
        try:
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            while True:
                for rec in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                    try:
                        self.view.add(V.parse(rec.value, self.cfg.limits))
                    except BadEvent as exc:
                        await self._dead_raw(f"{topic}[0]@{rec.offset}", exc.reason, rec.value, "stream.snapshots")
        finally:
            await consumer.stop()

    def refresh(self) -> dict[str, Any]:
        """Refit the leaderboard from the eval counts of every partition: this worker's own records and
        the latest snapshot other workers published of the rest (streams/view.py)."""
        now = time.time()
        owned = self.owned_partitions()
        chosen, freshness = self.view.merged(self.local_states(), self.worker_id, now)
        states = list(chosen.values())
        snap: dict[str, Any] = {"generated_at": now, "verdicts": sum(s["applied"] for s in states),
                                "invalid": sum(s["invalid"] for s in states),
                                "duplicates": sum(s["duplicates"] for s in states), "rows": [], "counts": {},
                                "partitions": sorted(chosen), "owned": sorted(owned), "worker": self.worker_id,
                                "freshness": freshness}
        merged = {split: S.merge_counts(states, split) for split in ("eval", "train")}
        for split, counts in merged.items():
            snap["counts"][split] = [[a, b, w, n] for a, b, w, n in S.iter_counts(counts)]
        # refit only when a partition moved: the fit (with its bootstrap) is the refresh's cost, and an idle
        # worker that refits every tick starves its own heartbeats on a busy machine
        fit_key = tuple((p, st["offset"]) for p, st in sorted(chosen.items()))
        if fit_key == self._fit_key:
            snap["rows"] = self.snapshot["rows"]
        else:
            counts = self.pair_counts(states, "eval")
            if counts is not None and counts.models:
                bt = self.bt.pinned(counts.models, set(self.cfg.arena.targets))  # as every board is pinned
                rows = bt.leaderboard(counts, ci="bootstrap", seed=0, warm=self._warm)
                self._warm = {row.model: row.rating for row in rows}
                snap["rows"] = [_row_dict(row) for row in rows]
            self._fit_key = fit_key
        snap["health"] = self.health.rates()
        snap["lag"] = self.verdict_lag()
        if snap["verdicts"] != self.snapshot.get("verdicts") or not self.dashboard.leaderboard:
            self.dashboard.set_leaderboard(snap["rows"])  # history grows only when ratings can have moved
        # the page's heat map and verdict count show the whole arena too, from the same merged counts
        self.dashboard.pairs = {split: _dashboard_pairs(c) for split, c in merged.items() if c}
        self.dashboard.verdicts = snap["verdicts"]
        self.dashboard.set_health(snap["health"])
        self.snapshot = snap
        return snap

    def verdict_lag(self) -> int | None:
        """Verdicts written to this worker's partitions but not applied yet (end offset - applied offset)."""
        try:
            consumer, owned = self._verdicts, self.owned_partitions()
            lag = 0
            for tp in consumer.assignment():
                if tp.partition in owned:
                    st = self.ratings.data.get(f"p:{tp.partition}") or S.empty_partition_state()
                    lag += max(0, consumer.highwater(tp) - (st["offset"] + 1))
            return lag
        except Exception:  # noqa: BLE001 - not started or rebalancing: no figure rather than a wrong one
            return None

    @staticmethod
    def pair_counts(states, split: str):
        counts = PairCounts()
        for a, b, w, n in S.iter_counts(S.merge_counts(states, split)):
            counts.add(a, b, w, n=n)
        return counts


def _json(value) -> bytes:
    """A table value as its changelog record: the JSON Faust's json codec writes and reads back at recovery,
    encoded with the standard library directly (40 us for a 500-id partition record, Faust's codec 65 us)."""
    return json.dumps(value, separators=(",", ":")).encode()


def _own(table, key: str, partition: int) -> None:
    """Faust's memory store drops, after each rebalance, the keys of partitions this worker no longer owns,
    but it knows the partition only of keys it recovered from the changelog; keys written here are
    registered the same way, so a revoked partition's records leave this worker."""
    owners = getattr(table.data, "_key_partition", None)
    if owners is not None:
        owners[key] = partition


def _dashboard_pairs(counts: dict[str, dict[str, int]]) -> dict[tuple[str, str], dict]:
    """Merged counts in the dashboard's pair form (streams/dashboard.py): valid verdicts only."""
    out: dict[tuple[str, str], dict] = {}
    for a, b, winner, n in S.iter_counts(counts):
        key = tuple(sorted((a, b)))
        p = out.setdefault(key, {"a": key[0], "b": key[1], "a_wins": 0, "ties": 0, "b_wins": 0})
        w = {"model_a": a, "model_b": b}.get(winner)
        p["ties" if w is None else "a_wins" if w == key[0] else "b_wins"] += n
    return out


def _row_dict(row) -> dict[str, Any]:
    import dataclasses

    if dataclasses.is_dataclass(row):
        return dataclasses.asdict(row)
    return row._asdict() if hasattr(row, "_asdict") else dict(vars(row))


def create_app(cfg: Config, **kw) -> Stream:
    return Stream(cfg, **kw)
