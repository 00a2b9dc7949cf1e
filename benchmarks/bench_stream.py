"""Verdicts through the Faust ratings agent: events/s and produce -> table-update latency, next to the raw
aiokafka consume rate of the same broker in the same run.

    python benchmarks/bench_stream.py [--verdicts 20000] [--partitions 2] [--paced 500] [--rate 100 1000]
                                      [--fetch-wait-ms 20]

Starts the embedded Tansu broker (or uses $KAFKA_BOOTSTRAP_SERVERS) and a real worker process
(`python -m arena_cli stream`), with a fresh topic prefix and `arena.targets = ["tgt"]`: every verdict is a
train battle of the target against one of nine opponents, a third of them lost by >= the failure margin,
so loss records and Failures are on (Failures are counted, not sent: the bench sends no responses). Phases:
1. raw: --verdicts encoded verdicts are produced, then read back by a plain AIOKafkaConsumer (all
   partitions assigned, no group, no processing): the broker + client ceiling.
2. throughput: the worker starts, applies one verdict and stops; the same number of new verdicts is
   produced; the worker restarts and drains them. events/s = verdicts after its first batch / (first
   batch applied -> all applied, from the worker's /stats).
3. latency: --paced verdicts sent one at a time at each --rate per second (default 100 and 1,000); the
   worker stamps now - verdict.created_at when its table is updated; p50/p99 from its /stats.
4. two workers: a second worker joins the group; once the partitions are split, --paced verdicts are sent
   and both workers' /leaderboard are polled: when each shows them all, how far apart, and whether the two
   boards hold the same counts and ratings (each worker serves the other's partitions from the snapshots
   topic, refreshed every ratings.refresh_s).
--fetch-wait-ms 1500 reproduces Faust's own (hard-coded) fetch wait for comparison.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from arena_flywheel.broker import EmbeddedBroker, free_port  # noqa: E402
from arena_flywheel.config import Config, load_config  # noqa: E402
from arena_flywheel.events import JudgeInfo, Verdict  # noqa: E402
from arena_flywheel.kafka import Publisher, TopicSpec, ensure_topics  # noqa: E402

OPPONENTS = [f"m{i}" for i in range(9)]
REFRESH_S = 1.0  # ratings.refresh_s, the default: how often a worker publishes its snapshots and refits
JUDGE = JudgeInfo(backend="reference", template_id="bench")


def make_verdict(i: int, tag: str, rng: random.Random) -> Verdict:
    o = rng.choice(OPPONENTS)
    a, b = ("tgt", o) if i % 2 else (o, "tgt")
    if rng.random() < 0.33:  # the target loses by 3 (>= the failure margin 2): a loss record, a Failure
        winner, margin = ("model_b" if a == "tgt" else "model_a"), 3.0
    else:
        winner, margin = rng.choice(["model_a", "model_b", "tie"]), 0.5
    return Verdict(battle_id=f"{tag}-{i}", instruction_id=f"{tag}-ins-{i // 4}", split="train", competitor_a=a,
                   competitor_b=b, model_a=a, model_b=b, winner=winner, margin=margin, judge=JUDGE)


def get(port: int, path: str, timeout: float = 2) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return json.loads(r.read())
    except OSError:
        return {}


def stats(port: int) -> dict:
    return get(port, "/stats")


def board(port: int) -> dict:
    return get(port, "/leaderboard")


def rounded(snap: dict) -> list:
    return [(r["model"], round(r["rating"], 2), round(r["lower"], 2), round(r["upper"], 2)) for r in snap.get("rows", [])]


def wait_applied(port: int, n: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stats(port).get("verdicts", 0) >= n:
            return time.monotonic()
        time.sleep(0.01)
    raise SystemExit(f"worker applied {stats(port).get('verdicts', 0)} of {n} verdicts in {timeout:.0f}s")


async def raw_consume(cfg, topic: str, n: int) -> float:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    c = AIOKafkaConsumer(bootstrap_servers=cfg.kafka.bootstrap_servers, enable_auto_commit=False,
                         auto_offset_reset="earliest", fetch_max_wait_ms=cfg.kafka.fetch_max_wait_ms)
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        t0, got = time.perf_counter(), 0
        while got < n:
            batch = await c.getmany(timeout_ms=1000, max_records=10_000)
            got += sum(len(v) for v in batch.values())
        return time.perf_counter() - t0
    finally:
        await c.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--verdicts", type=int, default=20_000)
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--paced", type=int, default=500)
    ap.add_argument("--rate", type=float, nargs="+", default=[100.0, 1000.0], help="paced rates, one phase each")
    ap.add_argument("--fetch-wait-ms", type=int, default=20)
    args = ap.parse_args()
    if args.paced < 500:  # streams/app.py LATENCY_WINDOW: fewer would mix the backlog's latencies in
        ap.error("--paced must be at least 500: the worker reports p50/p99 over its last 500 verdicts")

    broker, cfg, tmp = bench_setup("stream", args.partitions, fetch_max_wait_ms=args.fetch_wait_ms)
    rng = random.Random(0)
    worker = None
    try:
        # 1. raw consume rate of the same broker (a scratch topic with the same partitions)
        raw_topic = cfg.topic("bench-raw")
        ensure_topics(cfg, [TopicSpec("bench-raw", "instruction id")])
        pub = Publisher(cfg, linger_ms=20, batch_size=256 * 1024)
        payloads = [make_verdict(i, "raw", rng) for i in range(args.verdicts)]
        for v in payloads:
            pub.send(v, topic=raw_topic)
        pub.flush()
        raw_s = asyncio.run(raw_consume(cfg, raw_topic, args.verdicts))

        # 2. throughput through the ratings agent
        conf = worker_config(cfg, tmp, f"refresh_s = {REFRESH_S}")
        port = free_port()

        def start_worker():
            return start_stream(conf, port, tmp / "worker.log")

        worker = start_worker()
        pub.send(make_verdict(0, "warm", rng))
        pub.flush()
        wait_applied(port, 1, 120)  # joined, topics and tables created
        # The backlog is produced while the worker is stopped, so the measured rate is the agent's
        # (kafka-python's producer alone is slower than the agent on this broker).
        worker.terminate()
        worker.wait(30)
        for i in range(args.verdicts):
            pub.send(make_verdict(i, "burst", rng))
        pub.flush()
        worker = start_worker()
        t0 = wait_applied(port, 1, 120)  # first batch applied: recovery and the group join are over
        n0 = stats(port).get("verdicts", 0)
        t_done = wait_applied(port, args.verdicts, 600)
        agent_rate = (args.verdicts - n0) / max(t_done - t0, 1e-9)

        # 3. paced latency, one phase per rate (the worker's window holds the last 500 latencies)
        paced = Publisher(cfg, linger_ms=0)
        sent, lats = args.verdicts, []
        for rate in args.rate:
            t_start = time.perf_counter()
            for i in range(args.paced):
                # on a schedule, not sleep-per-send: the send and flush themselves take time at 1,000/s
                time.sleep(max(0.0, t_start + i / rate - time.perf_counter()))
                # created_at is stamped here; no flush per send (linger 0 sends at once, and a flush each
                # time capped the rate near 600/s): the producer's queueing counts in the latency
                paced.send(make_verdict(i, f"paced{rate:g}", rng))
            paced.flush()
            achieved = args.paced / (time.perf_counter() - t_start)
            sent += args.paced
            wait_applied(port, sent, 60)
            lats.append((rate, achieved, stats(port).get("latency_ms", {})))

        # 4. two workers: a second one joins; after the rebalance each applies its own partitions and serves
        #    the other's from the snapshots topic. Paced verdicts, then: when does each board show them all?
        second = start_stream(conf, port2 := free_port(), tmp / "worker2.log")
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # the group has split the partitions between the two
                a, b = board(port), board(port2)
                if a.get("owned") and b.get("owned") and not set(a["owned"]) & set(b["owned"]):
                    break
                time.sleep(0.2)
            else:
                raise SystemExit("the second worker never got partitions")
            for i in range(args.paced):
                paced.send(make_verdict(i, "two", rng))
                time.sleep(1.0 / args.rate[0])
            paced.flush()
            t_sent, sent = time.monotonic(), sent + args.paced
            seen: dict[int, float] = {}
            while len(seen) < 2 and time.monotonic() < t_sent + 120:
                for p_ in (port, port2):
                    if p_ not in seen and board(p_).get("verdicts", 0) >= sent:
                        seen[p_] = time.monotonic()
                time.sleep(0.02)
            a, b = board(port), board(port2)
            # the fits start warm from each worker's previous one: equal to 0.01 Elo, not to the last bit
            same = a.get("counts") == b.get("counts") and rounded(a) == rounded(b)
        finally:
            second.terminate()
            second.wait(30)
        paced.close()
        pub.close()

        print(f"broker {cfg.kafka.bootstrap_servers} ({'embedded Tansu' if broker else 'external'}), "
              f"{args.partitions} partitions, "
              f"{args.verdicts} verdicts, fetch wait {args.fetch_wait_ms} ms")
        print(f"raw aiokafka consume        : {args.verdicts / raw_s:10.0f} records/s  ({raw_s:.2f} s)")
        print(f"ratings agent (backlog)     : {agent_rate:10.0f} verdicts/s  ({args.verdicts - n0} verdicts after "
              f"the first batch, {t_done - t0:.2f} s)")
        print(f"ratings agent / raw consume : {agent_rate / (args.verdicts / raw_s):10.3f}")
        for rate, achieved, lat in lats:
            print(f"produce -> table update     : p50 {lat.get('p50', float('nan')):.1f} ms, "
                  f"p99 {lat.get('p99', float('nan')):.1f} ms over {lat.get('n', 0)} verdicts at {rate:g}/s "
                  f"(sent at {achieved:.0f}/s)")
        if len(seen) == 2:
            print(f"two workers                 : both boards show all {sent} verdicts {max(seen.values()) - t_sent:.2f} s "
                  f"after the last send, {abs(seen[port] - seen[port2]):.2f} s apart (refresh interval "
                  f"{REFRESH_S:g} s); same counts and ratings on both: {same}")
        else:
            print(f"two workers                 : only {len(seen)} of 2 boards showed all {sent} verdicts in 120 s")
        return 0
    finally:
        shut_down(worker, broker)


def bench_setup(name: str, partitions: int, **kafka) -> tuple[EmbeddedBroker | None, Config, Path]:
    """The embedded Tansu broker (or $KAFKA_BOOTSTRAP_SERVERS), a config with a fresh topic prefix and a data
    dir /tmp/bench-<name>-*, and its topics created."""
    broker = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        broker = EmbeddedBroker().start()
        bootstrap = broker.bootstrap
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    overrides = {"kafka.bootstrap_servers": bootstrap, "kafka.topic_prefix": f"{name}{os.getpid()}.",
                 "kafka.partitions": partitions, "data_dir": str(tmp)}
    cfg = load_config(env={}, overrides={**overrides, **{f"kafka.{k}": v for k, v in kafka.items()}})
    ensure_topics(cfg)
    return broker, cfg, tmp


def worker_config(cfg: Config, tmp: Path, ratings: str) -> Path:
    """The config file of the bench's stream worker: cfg's broker, prefix and partitions, target "tgt",
    `ratings` as the [ratings] table's lines."""
    k = cfg.kafka
    conf = tmp / "arena.toml"
    conf.write_text(f'data_dir = "{tmp}"\n[kafka]\nbootstrap_servers = "{k.bootstrap_servers}"\n'
                    f'topic_prefix = "{k.topic_prefix}"\npartitions = {k.partitions}\n'
                    f'fetch_max_wait_ms = {k.fetch_max_wait_ms}\n[arena]\ntargets = ["tgt"]\n'
                    f'[ratings]\n{ratings}\n[trainer]\nthreshold_schedule = [2.0]\n')
    return conf


def start_stream(conf: Path, port: int, log: Path) -> subprocess.Popen:
    """`arena stream` with the bench's config, its web page on `port`, its output appended to `log`."""
    return subprocess.Popen([sys.executable, "-m", "arena_cli", "--config", str(conf), "stream", "--web-port",
                             str(port)], cwd=ROOT, stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def shut_down(worker: subprocess.Popen | None, broker) -> None:
    """SIGTERM the worker (SIGKILL after 20 s), then stop the embedded broker if the bench started one."""
    if worker is not None:
        worker.terminate()
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()
    if broker is not None:
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
