"""The Faust worker: the pairing agent (responses -> battles) and the ratings agent (verdicts -> Elo,
pairwise counts, loss records, failures), with the live leaderboard at GET /leaderboard.

`arena stream [--web-port N] [--without-web]` (or `python -m streams.app`) runs it in the foreground.
Delivery is at-least-once; the exactly-once *effect* comes from per-partition state records that carry
the last applied offset and recent verdict ids, plus a processed-id table (docs/streams.md).
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

from arena_flywheel.config import Config
from arena_flywheel.events import BadEvent, Checkpoint, DeadLetter, Instruction, Response, decode
from arena_flywheel.ratings import BradleyTerry, OnlineElo, PairCounts
from consumers.judging.health import JudgeHealth

from . import state as S
from .dashboard import DashboardState, drop_builtin_routes, install_dashboard
from .reducer import RatingsRules, apply_verdicts

log = logging.getLogger(__name__)

BATCH = 500          # verdicts per ratings batch: one state record per partition per batch
BATCH_WITHIN = 0.02  # seconds a batch may wait to fill; bounds the added latency
LATENCY_WINDOW = 500  # /stats reports p50/p99 over the last this many verdicts


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
        )
        self.app._arena_fetch_max_wait_ms = k.fetch_max_wait_ms
        raw = dict(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
        self.t_instructions = self.app.topic(cfg.topic("instructions.train"), cfg.topic("instructions.eval"),
                                             cfg.topic("responses"), **raw)
        self.t_verdicts = self.app.topic(cfg.topic("verdicts"), **raw)
        self.t_battles = self.app.topic(cfg.topic("battles"), **raw)
        self.t_failures = self.app.topic(cfg.topic("failures"), **raw)
        self.t_dead = self.app.topic(cfg.topic("deadletter"), **raw)
        self.t_checkpoints = self.app.topic(cfg.topic("checkpoints"), **raw)
        # One table per agent; every value is one changelog record (see docs/streams.md for why one
        # table with prefixed keys: all writes of a partition are then ordered in one changelog partition).
        self.pairing = self.app.Table("pairing", default=None, key_type=str, value_type=None)
        self.ratings = self.app.Table("ratings", default=None, key_type=str, value_type=None)
        self.snapshot: dict[str, Any] = {"rows": [], "elo": {}, "counts": {}, "verdicts": 0, "generated_at": None}
        self.rules = RatingsRules.from_config(cfg)
        self.bt = BradleyTerry.from_config(cfg.ratings)
        self._warm = None
        self.stats = defaultdict(int)
        self._seen: dict[int, tuple[dict, set[str]]] = {}
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        # what the web page shows (this worker's partitions): see streams/dashboard.py
        self.dashboard = DashboardState()
        self.health = JudgeHealth()
        self._register()
        if web:  # only the routes registered here: the page, its API, /leaderboard and /stats
            drop_builtin_routes(self.app)
            install_dashboard(self.app, self.dashboard.to_dict)

    # -------------------------------------------------------------------------------- helpers
    def _put(self, table, partition: int, key: str, value) -> None:
        """Write a table key to the changelog partition of the event that caused it. Faust would use the
        *current* event, which inside a take() batch may belong to another partition."""
        table.data[key] = value
        table.send_changelog(partition, key, value)

    async def _dead(self, event, reason: str, stage: str) -> None:
        m = event.message
        # an excerpt of the raw value and its size (cfg.limits): a poison record of any size still sends
        dl = DeadLetter.of(f"{m.topic}[{m.partition}]@{m.offset}", reason, event.value, stage, self.cfg.limits)
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
                    self._put(self.pairing, p, f"i:{iid}", ins)
                elif not S.add_response(rec, ev):
                    continue
                if ins is None:  # a response before its instruction: kept; battles come with the instruction
                    self._put(self.pairing, p, f"r:{iid}", rec)
                    continue
                battles = S.new_battles(ins, rec, iid, cfg.arena.plan_for(ins["split"]), targets,
                                        cfg.arena.sampled_k, cfg.arena.seed)
                # battles first, then the record that says they were sent: a crash in between re-sends
                # them (same ids) instead of losing them
                for b in battles:
                    await self.t_battles.send(key=b.kafka_key().encode(), value=b.encode())
                self.stats["battles"] += len(battles)
                self._put(self.pairing, p, f"r:{iid}", rec)

        @app.agent(self.t_verdicts, name="ratings")
        async def ratings(stream):
            async for events in stream.take_events(BATCH, within=BATCH_WITHIN):
                by_part: dict[int, list] = defaultdict(list)
                for event in events:
                    by_part[event.message.partition].append(event)
                for p, evs in by_part.items():
                    await self._apply(p, evs)

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
            self.refresh()

        @app.page("/leaderboard")
        async def leaderboard_page(web, request):
            return web.json(self.snapshot)

        @app.page("/stats")
        async def stats_page(web, request):
            return web.json(self.stats_view())

        self.agents = (pairing, ratings, checkpoints)

    async def _apply(self, p: int, events) -> None:
        """Apply one partition's verdicts (streams/reducer.py) and perform its writes in order: loss records
        and failures, then the partition record, then the batch's id record. Order matters; see
        docs/streams.md."""
        key = f"p:{p}"
        st = self.ratings.data.get(key)
        seen = self._seen_ids(p, st)
        red = apply_verdicts(p, st, seen, self.ratings.data, self.pairing.data,
                             [(e.message.offset, e.value) for e in events], self.rules)
        if red.dead:
            by_offset = {e.message.offset: e for e in events}
            for off, reason in red.dead:
                await self._dead(by_offset[off], reason, "stream.ratings")
        # 1) loss records (idempotent: keyed by verdict id inside) and failures
        for lkey, rec in red.loss_records.items():
            self._put(self.ratings, p, lkey, rec)
        for f in red.failures:
            await self.t_failures.send(key=f.kafka_key().encode(), value=f.encode())
            self.dashboard.add_failure(f)
        self.stats["failures"] += len(red.failures)
        self.stats["failures_without_answers"] += red.missing_answers
        # 2) the partition record: offset + counts + Elo + this batch's ids, in one changelog record
        if red.restore:
            self._put(self.ratings, p, *red.restore)
        self._put(self.ratings, p, key, red.state)
        # 3) the batch's processed ids, one record, for duplicates that arrive later as new records
        if red.ids_record:
            self._put(self.ratings, p, *red.ids_record)
        seen.update(red.ids)
        self._seen[p] = (red.state, seen)  # the cache follows the record object now in the table
        for v in red.accepted:
            self.health.add(v)
            # no id: the processed-id check already dropped redeliveries; the page keeps no second id set
            self.dashboard.add_verdict({"model_a": v.competitor_a, "model_b": v.competitor_b, "winner": v.winner},
                                       split=v.split)
        self.stats["verdicts"] += len(red.ids)
        now = time.time()
        self.stats["last_update"] = now
        # produce -> table-update latency (created_at is stamped by the producer; same clock on one host)
        self.latencies.extend(now - v.created_at for v in red.accepted)

    def _seen_ids(self, p: int, st: dict | None) -> set[str]:
        """Processed verdict ids of partition p, cached per process. The cache belongs to the partition
        record object it was built with: after a recovery or reassignment Faust puts a new object there,
        and the set is rebuilt from the table's id records."""
        cached = self._seen.get(p)
        if cached is not None and cached[0] is st:
            return cached[1]
        prefix = f"b:{p}:"
        seen: set[str] = set((st or {}).get("recent", []))
        for k, ids in list(self.ratings.data.items()):
            if isinstance(k, str) and k.startswith(prefix):
                seen.update(ids)
        self._seen[p] = (st, seen)
        return seen

    def stats_view(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.stats)
        lat = sorted(self.latencies)
        if lat:
            out["latency_ms"] = {"n": len(lat), "p50": 1000 * lat[len(lat) // 2],
                                 "p99": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))]}
        return out

    # -------------------------------------------------------------------------------- leaderboard
    def partition_states(self) -> list[dict]:
        return [v for k, v in list(self.ratings.data.items()) if isinstance(k, str) and k.startswith("p:")]

    def refresh(self) -> dict[str, Any]:
        """Refit the leaderboard from the eval counts of the partitions this worker holds."""
        states = self.partition_states()
        snap: dict[str, Any] = {"generated_at": time.time(), "verdicts": sum(s["applied"] for s in states),
                                "invalid": sum(s["invalid"] for s in states),
                                "duplicates": sum(s["duplicates"] for s in states), "rows": [], "elo": {},
                                "counts": {}, "partitions": sorted(int(k[2:]) for k in list(self.ratings.data)
                                                                   if isinstance(k, str) and k.startswith("p:"))}
        for split in ("eval", "train"):
            merged = S.merge_counts(states, split)
            snap["counts"][split] = [[a, b, w, n] for a, b, w, n in S.iter_counts(merged)]
        # Online Elo is kept per partition (sequential in offset order, so a replay reproduces it); the
        # served value averages the partitions' ratings. The BT leaderboard below is the headline.
        sums: dict[str, list[float]] = defaultdict(list)
        for s in states:
            d = s["elo"].get("eval")
            if d:
                for m, r in OnlineElo.from_dict(d).ratings.items():
                    sums[m].append(r)
        snap["elo"] = {m: sum(v) / len(v) for m, v in sorted(sums.items())}
        counts = self.pair_counts(states, "eval")
        if counts is not None and counts.models:
            bt = self.bt.pinned(counts.models, set(self.cfg.arena.targets))  # as every board is pinned
            rows = bt.leaderboard(counts, ci="bootstrap", seed=0, warm=self._warm)
            self._warm = {row.model: row.rating for row in rows}
            snap["rows"] = [_row_dict(row) for row in rows]
        snap["health"] = self.health.rates()
        snap["lag"] = self.verdict_lag()
        if snap["verdicts"] != self.snapshot.get("verdicts") or not self.dashboard.leaderboard:
            self.dashboard.set_leaderboard(snap["rows"])  # history grows only when ratings can have moved
        self.dashboard.set_health(snap["health"])
        self.snapshot = snap
        return snap

    def verdict_lag(self) -> int | None:
        """Verdicts written to this worker's partitions but not applied yet (end offset - applied offset)."""
        try:
            consumer = self.app.consumer
            topic = self.cfg.topic("verdicts")
            lag = 0
            for tp in consumer.assignment():
                if tp.topic == topic:
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


def _row_dict(row) -> dict[str, Any]:
    import dataclasses

    if dataclasses.is_dataclass(row):
        return dataclasses.asdict(row)
    return row._asdict() if hasattr(row, "_asdict") else dict(vars(row))


def create_app(cfg: Config, **kw) -> Stream:
    return Stream(cfg, **kw)
