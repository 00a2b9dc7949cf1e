"""`arena ledger`: sink every event into SQL (SQLite or PostgreSQL) until Ctrl-C or --max-idle."""
from __future__ import annotations

import sys

from arena_flywheel.broker import kafka_for
from arena_flywheel.config import Config
from consumers.ledger import Ledger, group_id

from ..stopping import stop_on_signals



def add_arguments(p) -> None:
    p.add_argument("--db", metavar="URL", help="database URL (default: db.url / $ARENA_DB_URL)")
    p.add_argument("--max-idle", type=float, default=None, metavar="S",
                   help="stop after S seconds with no new record (scripts, CI)")


def run(args, cfg: Config) -> int:
    if not cfg.kafka.bootstrap_servers:
        print("arena ledger: no KAFKA_BOOTSTRAP_SERVERS; starting an embedded broker (its topics live only "
              "while this runs)", file=sys.stderr)
    with stop_on_signals() as stop, kafka_for(cfg) as (kcfg, _embedded):
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
