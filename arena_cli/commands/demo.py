"""`arena demo`: the whole flywheel on this machine, no configuration needed (arena_cli/demo.py)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from arena_flywheel.config import Config
from arena_flywheel.errors import UsageError

from ..demo import FAST_PLAN, FULL_PLAN, Demo, DemoPlan, print_table

MIN_TIMEOUT_S = 30.0  # a phase (a generation round, a judge round, a training run) takes longer than this


def add_arguments(p):
    p.add_argument("--fast", action="store_true", help="a smaller run (used by the test suite)")
    p.add_argument("--iterations", type=int, default=None, help="flywheel iterations (default 3)")
    p.add_argument("--summary", metavar="PATH", help="write the JSON summary here (default: print it)")
    p.add_argument("--data-dir", metavar="DIR", help="where the ledger, checkpoints and report go "
                                                    "(default: data_dir of the config, ./arena-data)")
    p.add_argument("--zoo-cache", metavar="DIR", help="where the trained zoo is cached across runs "
                                                     "(default: $ARENA_ZOO_CACHE or ~/.cache/arena-flywheel/zoo)")
    p.add_argument("--stages", help="training stages per iteration, comma-separated (e.g. sft,dpo)")
    p.add_argument("--no-live", action="store_true", help="no live terminal table (plain progress lines)")
    p.add_argument("--timeout", type=float, default=900,
                   help=f"give up when a phase waits longer (seconds, at least {MIN_TIMEOUT_S:.0f}; default 900)")


def _plan(args) -> DemoPlan:
    plan = FAST_PLAN if args.fast else FULL_PLAN
    if not args.timeout >= MIN_TIMEOUT_S:  # also refuses nan
        raise UsageError(f"--timeout must be at least {MIN_TIMEOUT_S:.0f} seconds (a phase waits for a whole "
                         f"generation, judging or training round), e.g. --timeout 900; got {args.timeout:g}")
    over = {}
    if args.iterations is not None:
        if args.iterations < 1:
            raise UsageError("--iterations must be at least 1, e.g. --iterations 3")
        over["iterations"] = args.iterations
    if args.stages:
        stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
        bad = [s for s in stages if s not in ("sft", "dpo", "reward", "rl")]
        if bad or not stages:
            raise UsageError(f"--stages: unknown stage {bad[0] if bad else '(none)'}; known: sft, dpo, reward, rl, e.g. --stages sft,dpo")
        over["stages"] = stages
    return DemoPlan(**{**plan.__dict__, **over})


def run(args, cfg: Config) -> int:
    plan = _plan(args)
    data_dir = Path(args.data_dir or cfg.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if cfg.kafka.bootstrap_servers:
        raise UsageError("the demo runs on its own embedded broker: unset KAFKA_BOOTSTRAP_SERVERS "
                         "(or kafka.bootstrap_servers) to run it")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    demo = Demo(cfg, plan, data_dir, live=not args.no_live, timeout=args.timeout,
                zoo_cache=Path(args.zoo_cache) if args.zoo_cache else None)
    summary = demo.run()
    print_table(demo.console, summary)
    text = json.dumps(summary, indent=2)
    if args.summary:
        Path(args.summary).write_text(text)
        demo.console.print(f"summary written to {args.summary}")
    else:
        print(text)
    return 0
