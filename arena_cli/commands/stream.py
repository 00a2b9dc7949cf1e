"""`arena stream`: the Faust worker (pairing and ratings agents, the dashboard) in the foreground."""
from __future__ import annotations

import logging
import sys

import faust

from arena_flywheel.broker import kafka_for
from arena_flywheel.config import Config
from arena_flywheel.errors import UsageError
from streams.app import Stream

log = logging.getLogger(__name__)


def add_arguments(p) -> None:
    p.add_argument("--web-port", type=int, default=6066, help="port of the web server (/leaderboard), default 6066")
    p.add_argument("--without-web", action="store_true", help="run without the web server")
    p.add_argument("--web-bind", default="127.0.0.1", metavar="HOST",
                   help="address the dashboard listens on (default 127.0.0.1, this machine only; "
                        "0.0.0.0 exposes it to the network: put it behind a proxy with authentication)")


def run(args, cfg: Config) -> int:
    if not 0 < args.web_port < 65536:
        raise UsageError("--web-port must be 1..65535, e.g. --web-port 6066")
    for split in ("eval", "train"):
        if cfg.arena.plan_for(split) == "target-vs-all" and not cfg.arena.targets:
            log.warning("battle plan target-vs-all on %s with no arena.targets: the pairing agent makes no %s "
                        "battles", split, split)
    with kafka_for(cfg) as (cfg, embedded):
        if embedded:
            print(f"arena stream: embedded broker at {cfg.kafka.bootstrap_servers} (topics vanish on exit)",
                  file=sys.stderr)
        stream = Stream(cfg, web_port=args.web_port, web=not args.without_web, web_bind=args.web_bind)
        stream.create_topics()  # before the worker's producer starts: see Stream.create_topics
        worker = faust.Worker(stream.app, loglevel=logging.getLogger().getEffectiveLevel() or logging.WARNING,
                              quiet=True, redirect_stdouts=False, override_logging=False)
        try:
            worker.execute_from_commandline()
        except SystemExit as exc:
            return int(exc.code or 0)
    return 0
