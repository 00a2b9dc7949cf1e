"""`arena judge`: run a judge pool (battles in, verdicts out) until Ctrl-C or --max-idle."""
from __future__ import annotations

import json

from arena_flywheel.config import Config
from arena_flywheel.errors import UsageError, need_broker
from consumers.judge import JudgePool

from ..progress import ServiceProgress, judge_line
from ..stopping import stop_on_signals



def add_arguments(p) -> None:
    p.add_argument("--max-idle", type=float, default=None, help="stop after this many idle seconds")
    p.add_argument("--stats-every", type=float, default=30.0, metavar="S",
                   help="when not on a terminal, log progress every S seconds (0: never; default 30)")


def run(args, cfg: Config) -> int:
    need_broker(cfg, "arena judge")
    if args.stats_every < 0:
        raise UsageError("--stats-every must be 0 (never) or a number of seconds, e.g. --stats-every 30")
    pool = JudgePool(cfg)
    # a live line on a terminal, log lines when piped
    with stop_on_signals() as stop, ServiceProgress(pool.stats, judge_line, every_s=args.stats_every):
        stats = pool.run(stop, max_idle_s=args.max_idle)
    print(json.dumps(stats, sort_keys=True), flush=True)
    return 0
