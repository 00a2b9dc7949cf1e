"""`arena watch`: the live terminal leaderboard, from the ledger or a stream worker's /leaderboard."""
from __future__ import annotations

import json
import time

from rich.console import Console
from rich.live import Live

from arena_flywheel.config import Config
from arena_flywheel.errors import ArenaError, UsageError

from ..watch import Snapshot, from_ledger, from_url, render



def add_arguments(p) -> None:
    p.add_argument("--url", help="Faust worker web address, e.g. http://127.0.0.1:6066 (default: read the ledger)")
    p.add_argument("--split", default="eval", choices=("eval", "train"), help="verdicts to rate (ledger source)")
    p.add_argument("--db", metavar="URL", help="ledger URL (default: db.url / $ARENA_DB_URL)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    p.add_argument("--once", action="store_true", help="print the table once and exit")
    p.add_argument("--json", action="store_true", help="with --once: print the snapshot as JSON")


def run(args, cfg: Config) -> int:
    if args.interval <= 0:
        raise UsageError("--interval must be positive, e.g. --interval 1")

    def snap(first: bool = False) -> Snapshot:
        try:
            return from_url(args.url) if args.url else from_ledger(cfg, args.split)
        except ArenaError as exc:  # e.g. no such ledger (a mistyped URL): said once, in its own words
            if args.once or first:
                raise
            return Snapshot(rows=[], source=f"unavailable: {exc}")
        except Exception as exc:  # noqa: BLE001 - a watcher keeps watching through a restart
            if args.once:
                where = args.url or cfg.db.url
                raise UsageError(f"cannot read the leaderboard from {where}: {type(exc).__name__}: {exc}") from None
            return Snapshot(rows=[], source=f"unavailable: {exc}")

    console = Console()
    if args.once:
        s = snap(first=True)
        if args.json:
            print(json.dumps(s.__dict__, indent=2, default=str))
        else:
            console.print(render(s))
        return 0
    first = snap(first=True)
    start = {r["model"]: r["rating"] for r in first.rows}
    prev = (first.verdicts, time.monotonic())
    try:
        with Live(render(first, start), console=console, refresh_per_second=4, screen=False) as live:
            while True:
                time.sleep(args.interval)
                s = snap()
                now = time.monotonic()
                rate = max(0.0, (s.verdicts - prev[0]) / max(now - prev[1], 1e-6))
                prev = (s.verdicts, now)
                for r in s.rows:
                    start.setdefault(r["model"], r["rating"])
                live.update(render(s, start, rate))
    except KeyboardInterrupt:
        pass
    return 0
