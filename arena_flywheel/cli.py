"""The `arena` command. Each subcommand lives in the package that does the work and exposes
`add_arguments(parser)` and `run(args, cfg) -> int`; modules are imported only when chosen, so
`arena --help` stays fast and a missing optional extra only affects its own command.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys

from .broker import BrokerError
from .config import ConfigError, load_config


class UsageError(Exception):
    """A bad argument or input, worded for the user (one line, says how to fix it)."""


class Command:
    """A subcommand that is not its module's main one (`module:attr` in COMMANDS)."""

    def __init__(self, add_arguments, run):
        self.add_arguments = add_arguments
        self.run = run


# name -> (module, one-line help). Order is the order of `arena --help`.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("arena_flywheel.demo", "the whole flywheel on this machine, no configuration needed"),
    "broker": ("arena_flywheel.broker_cmd", "run the embedded Tansu Kafka broker in the foreground"),
    "topics": ("arena_flywheel.broker_cmd:topics", "create the arena's topics (idempotent) and list them"),
    "feed": ("producers.feed", "stream instructions from files or stdin onto the instruction topics"),
    "ledger": ("consumers.ledger", "sink every event into SQL (SQLite or PostgreSQL)"),
    "export": ("consumers.ledger:export", "export events from the ledger as JSONL or CSV"),
    "generate": ("consumers.generate", "run a competitor's generation pool"),
    "judge": ("consumers.judge", "run a judge pool: battles in, verdicts out"),
    "checkpoint": ("consumers.generate:checkpoint_cmd", "announce a new checkpoint of a model (hot-plug)"),
    "stream": ("streams.app", "run the Faust worker: pairing and ratings agents"),
    "leaderboard": ("streams.leaderboard_cmd", "fit a leaderboard offline from battles or verdicts"),
    "watch": ("streams.watch", "live terminal leaderboard"),
    "report": ("streams.report", "plots and tables of ratings"),
    "train": ("trainer.service", "run the trainer service or close an iteration"),
    "select": ("trainer.select", "choose training data from failures (pair-judge and ablation baselines)"),
    "iterations": ("trainer.service:iterations", "print the flywheel's iteration table"),
    "testset": ("arena_flywheel.testset", "build WizardArena offline test sets"),
    "consistency": ("arena_flywheel.consistency", "compare a benchmark leaderboard with a human arena"),
}


def _load(spec: str):
    mod_name, _, attr = spec.partition(":")
    mod = importlib.import_module(mod_name)
    return getattr(mod, attr) if attr else mod


def _available() -> dict[str, tuple[str, str]]:
    out = {}
    for name, (spec, help_) in COMMANDS.items():
        mod_name = spec.partition(":")[0]
        if importlib.util.find_spec(mod_name.split(".")[0]) is None:
            continue
        try:
            if importlib.util.find_spec(mod_name) is None:
                continue
        except ModuleNotFoundError:
            continue
        out[name] = (spec, help_)
    return out


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arena", description="Arena Learning as an event stream.")
    parser.add_argument("--config", metavar="PATH", help="arena.toml to use (default: ./arena.toml if present)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (spec, help_) in _available().items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == only:
            target = _load(spec)
            target.add_arguments(p)
            p.set_defaults(_target=target)
    return parser


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
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kafka", "aiokafka", "faust", "mode", "httpx"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING if args.verbose < 2 else logging.DEBUG))
    # kafka-python's selector warns whenever a task waited >0.1 s for the GIL (busy model threads in
    # the same process): not actionable, so shown only with -vv.
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR if args.verbose < 2 else logging.DEBUG)
    try:
        cfg = load_config(args.config)
        return int(args._target.run(args, cfg) or 0)
    except (ConfigError, UsageError, BrokerError) as exc:
        print(f"arena {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"arena {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # `python -m arena_flywheel.cli` runs this file as __main__; commands raise the UsageError of the
    # imported arena_flywheel.cli, so run that module's main for the except clauses to match.
    from arena_flywheel.cli import main as _main

    sys.exit(_main())
