"""`arena dashboard`: the web dashboard from the SQL ledger, after the stream has stopped."""
from __future__ import annotations

import asyncio
import sys

from arena_flywheel.config import Config
from arena_flywheel.errors import UsageError
from arena_flywheel.ratings import BradleyTerry
from streams.ledger_view import LedgerDashboard, serve


def add_arguments(p) -> None:
    p.add_argument("--db", metavar="URL", help="ledger URL (default: db.url / $ARENA_DB_URL)")
    p.add_argument("--split", default="eval", choices=("eval", "train"),
                   help="split shown first (the page has a selector; default eval)")
    p.add_argument("--port", type=int, default=6067, help="port to serve on (default 6067; the worker's is 6066)")
    p.add_argument("--host", default="127.0.0.1", metavar="ADDR",
                   help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 exposes the "
                        "ledger to the network: put it behind a proxy with authentication)")


def run(args, cfg: Config) -> int:
    if not 0 < args.port < 65536:
        raise UsageError("--port must be 1..65535, e.g. --port 6067")
    url = cfg.db.url  # --db is applied by arena_cli/main.py
    view = LedgerDashboard(url, BradleyTerry.from_config(cfg.ratings))  # InputError for a missing ledger
    where = f"http://{'[' + args.host + ']' if ':' in args.host else args.host}:{args.port}/"

    def started() -> None:
        print(f"arena dashboard: ledger {view.name} at {where} (Ctrl-C to stop)", file=sys.stderr, flush=True)

    try:
        asyncio.run(serve(view, args.host, args.port, args.split, on_start=started))
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc}); "
                         f"pick another with --port or --host") from None
    return 0
