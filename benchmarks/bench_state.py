"""Memory of one stream worker over a long run: RSS and table size after 10k, 100k (and 1M) verdicts.

    python benchmarks/bench_state.py [--steps 10000,100000,1000000] [--partitions 2]

Starts the embedded Tansu broker (or uses $KAFKA_BOOTSTRAP_SERVERS) and a real worker process
(`python -m arena_cli stream`), with a fresh topic prefix and `arena.targets = ["tgt"]`. Every verdict is a
train battle of the target against one of nine opponents (a new instruction every 4 verdicts), so the
worker keeps processed ids, counts and loss records for the target's losses; a third of them are losses
by >= the failure margin (Failures are counted but not sent: the bench sends no responses). After each
step the worker has applied every verdict so far, and the bench prints its RSS (/proc), the number of
table keys by kind and their JSON size (`/stats?sizes=1`). Goal: flat (within 20%) from 100k to 1M.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from arena_flywheel.broker import free_port  # noqa: E402
from arena_flywheel.kafka import Publisher  # noqa: E402
# the same verdicts, worker and broker set-up as bench_stream
from bench_stream import (bench_setup, get, make_verdict, shut_down, start_stream, wait_applied,  # noqa: E402
                          worker_config)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="10000,100000,1000000", help="cumulative verdict counts to report at")
    ap.add_argument("--partitions", type=int, default=2)
    args = ap.parse_args()
    steps = [int(s) for s in args.steps.split(",")]

    broker, cfg, tmp = bench_setup("state", args.partitions)
    port = free_port()
    worker = start_stream(worker_config(cfg, tmp, "refresh_s = 2.0\nbootstrap_rounds = 20"), port,
                          tmp / "worker.log")
    rng = random.Random(0)
    try:
        pub = Publisher(cfg, linger_ms=20, batch_size=256 * 1024)
        print(f"broker {cfg.kafka.bootstrap_servers} ({'embedded Tansu' if broker else 'external'}), "
              f"{args.partitions} partitions, target in every battle (train), 1/3 losses by >= the failure margin")
        print(f"{'verdicts':>10} {'RSS MB':>8} {'table MB':>9} {'ids held':>9}  keys by kind   (s to apply)")
        sent = 0
        for step in steps:
            t0 = time.monotonic()
            while sent < step:
                pub.send(make_verdict(sent, "state", rng))
                sent += 1
            pub.flush()
            wait_applied(port, step, 3600)
            s = get(port, "/stats?sizes=1", timeout=30)  # a walk over the tables
            t = s.get("tables", {})
            print(f"{step:>10,} {rss_mb(worker.pid):>8.1f} {t.get('json_bytes', 0) / 1e6:>9.2f} "
                  f"{t.get('ids_in_memory', 0):>9,}  {t.get('keys')}   ({time.monotonic() - t0:.0f})", flush=True)
        pub.close()
        return 0
    finally:
        shut_down(worker, broker)


if __name__ == "__main__":
    sys.exit(main())
