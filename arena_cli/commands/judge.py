"""`arena judge`: run a judge pool (battles in, verdicts out) until Ctrl-C or --max-idle."""
from __future__ import annotations

import json

from arena_flywheel.config import Config
from arena_flywheel.errors import need_broker
from consumers.judge import JudgePool



def add_arguments(p) -> None:
    p.add_argument("--max-idle", type=float, default=None, help="stop after this many idle seconds")


def run(args, cfg: Config) -> int:
    need_broker(cfg, "arena judge")
    stats = JudgePool(cfg).run(max_idle_s=args.max_idle)
    print(json.dumps(stats, sort_keys=True), flush=True)
    return 0
