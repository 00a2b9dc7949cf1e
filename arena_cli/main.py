"""The `arena` command. Each subcommand is a module of arena_cli.commands with `add_arguments(parser)` and
`run(args, cfg) -> int`, and a line in COMMANDS; a module is imported only when its command is chosen, so `arena --help` stays
fast and a missing optional extra only affects its own command.

Library code raises the typed errors of arena_flywheel.errors; this is the one place that turns them into a
one-line message and an exit code.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from arena_flywheel.registration import local_broker
from arena_flywheel.config import load_config
from arena_flywheel.errors import ArenaError

# name -> one-line help, in the order of `arena --help`. The module is arena_cli.commands.<name>.
COMMANDS: dict[str, str] = {
    "demo": "the whole flywheel on this machine, no configuration needed",
    "broker": "run the embedded Tansu Kafka broker in the foreground",
    "topics": "create the arena's topics (idempotent) and list them",
    "feed": "stream instructions from files or stdin onto the instruction topics",
    "ledger": "sink every event into SQL (SQLite or PostgreSQL)",
    "export": "export events from the ledger as JSONL or CSV",
    "generate": "run a competitor's generation pool",
    "judge": "run a judge pool: battles in, verdicts out",
    "checkpoint": "announce a new checkpoint of a model (hot-plug)",
    "stream": "run the Faust worker: pairing and ratings agents",
    "leaderboard": "fit a leaderboard offline from battles or verdicts",
    "watch": "live terminal leaderboard",
    "dashboard": "serve the web dashboard from the ledger (after the stream has stopped)",
    "report": "plots and tables of ratings",
    "train": "run the trainer service or close an iteration",
    "select": "choose training data from failures (pair-judge and ablation baselines)",
    "ablation": "one SFT checkpoint per data-selection method, rated in one arena",
    "mt-bench": "MT-bench single-answer grading of a competitor, per category",
    "iterations": "print the flywheel's iteration table",
    "testset": "build WizardArena offline test sets",
    "consistency": "compare a benchmark leaderboard with a human arena",
}


# Commands that start their own broker whatever runs beside them (an isolated, reproducible run).
RUNS_ITS_OWN_BROKER = {"demo", "broker", "ablation"}


def command_module(name: str):
    return importlib.import_module(f"arena_cli.commands.{name.replace('-', '_')}")  # mt-bench -> mt_bench


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arena", description="Arena Learning as an event stream.")
    parser.add_argument("--config", metavar="PATH", help="arena.toml to use (default: ./arena.toml if present)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_ in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == only:
            mod = command_module(name)
            mod.add_arguments(p)
            p.set_defaults(_target=mod)
    return parser


def _logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kafka", "aiokafka", "faust", "mode", "httpx"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING if verbose < 2 else logging.DEBUG))
    # kafka-python's selector warns whenever a task waited >0.1 s for the GIL (busy model threads in
    # the same process): not actionable, so shown only with -vv.
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR if verbose < 2 else logging.DEBUG)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-") and a in COMMANDS), None)
    try:
        parser = build_parser(chosen)
    except ImportError as exc:
        print(f"arena: {chosen}: missing dependency ({exc}); run ./arena once to install, "
              f"or pip install 'arena-flywheel[vllm]' for the vLLM extra", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    _logging(args.verbose)
    try:
        cfg = load_config(args.config)
        if getattr(args, "db", None):  # every command with --db reads and writes that ledger
            cfg.db.url = args.db
        if not cfg.kafka.bootstrap_servers and args.command not in RUNS_ITS_OWN_BROKER:
            found = local_broker(cfg.data_dir)  # the one `arena broker` runs for this directory, if any
            if found:
                logging.getLogger("arena").info("using the broker `arena broker` registered: %s", found)
                cfg.kafka.bootstrap_servers = found
        return int(args._target.run(args, cfg) or 0)
    except ArenaError as exc:
        print(f"arena {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"arena {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
