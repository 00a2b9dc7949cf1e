"""`arena feed PATH`: stream instructions from files or stdin onto the instruction topics."""
from __future__ import annotations

import sys
import threading
from contextlib import nullcontext
from pathlib import Path
from typing import Iterator

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from arena_flywheel.broker import kafka_for
from arena_flywheel.config import Config
from arena_flywheel.errors import UsageError
from arena_flywheel.kafka import Publisher
from consumers.ledger import Ledger
from producers.feed import FeedStats, Record, feed_records, follow_jsonl, iter_records

from ..stopping import stop_on_signals



def add_arguments(p) -> None:
    p.add_argument("path", metavar="PATH", help="file (.jsonl .json .csv .parquet), datasets directory, or - for stdin")
    p.add_argument("--split", choices=("train", "eval"), help="split of records that do not name one "
                   "(default: feed.default_split)")
    p.add_argument("--source", default="", help="source name recorded on each instruction (default: file name)")
    p.add_argument("--follow", action="store_true", help="keep reading a growing JSONL file until Ctrl-C or SIGTERM")
    p.add_argument("--limit", type=int, metavar="N", help="send at most N instructions")


def run(args, cfg: Config) -> int:
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1")
    if args.follow and (args.path == "-" or not Path(args.path).is_file()):
        raise UsageError("--follow needs an existing JSONL file (stdin is followed anyway until it ends)")
    if not args.follow:
        records = iter_records(args.path, cfg.limits)
        first = next(records, None)  # surface usage errors (missing file, bad format) before starting a broker
        records = _chain(first, records) if first is not None else iter(())
    written = None
    # --follow stops on Ctrl-C or SIGTERM after sending and storing what it read; a plain feed ends by itself
    stopping = stop_on_signals() if args.follow else nullcontext(threading.Event())
    with stopping as stop, kafka_for(cfg) as (kcfg, embedded):
        follower = None
        if embedded and args.follow:  # a growing file: store as it arrives, not only at the end
            follower = _Follower(Ledger(kcfg))
            follower.start()
        with Publisher(kcfg) as pub:
            if args.follow:
                print(f"arena feed: following {args.path}; Ctrl-C or SIGTERM stops", file=sys.stderr)
                stats = FeedStats()
                try:
                    feed_records(kcfg, _flushing(follow_jsonl(args.path, stop, limits=kcfg.limits), pub), pub,
                                 split=args.split, source=args.source, limit=args.limit, stats=stats)
                except KeyboardInterrupt:  # a second Ctrl-C: stop reading now, still store what was sent
                    pass
            else:
                stats = _feed_with_progress(kcfg, records, pub, args)
            pub.flush()
        if follower is not None:
            written = follower.finish()  # after the flush: the drain sees everything that was sent
        elif embedded:
            # The embedded broker's topics vanish with this process: drain them into the ledger first.
            with Ledger(kcfg) as ledger:
                ledger.drain(idle_s=1.0, timeout_s=300)
                written = ledger.written
    msg = f"arena feed: {stats.line()}"
    if written is not None:
        msg += f"; embedded broker, stored in the ledger {cfg.db.url} ({written} new rows)"
    print(msg)
    return 0


class _Follower(threading.Thread):
    """The ledger beside `--follow`: stores records as they arrive, and after Ctrl-C drains what is left as
    the same group member. (A second member joining after this one left waited on the group's rebalance,
    and `arena feed --follow` could hang after Ctrl-C.)"""

    def __init__(self, ledger: Ledger):
        super().__init__(name="ledger", daemon=True)
        self.ledger, self.stop = ledger, threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.ledger:
                while not self.stop.is_set():
                    self.ledger.poll_once(200)
                self.ledger.drain(idle_s=1.0, timeout_s=300)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread by finish()
            self.error = exc

    def finish(self) -> int:
        """Drain and stop; rows newly written. Raises what stopped the ledger."""
        self.stop.set()
        self.join()
        if self.error is not None:
            raise self.error
        return self.ledger.written


def _chain(first, rest):
    yield first
    yield from rest


def _flushing(records: Iterator[Record], pub) -> Iterator[Record]:
    """For --follow: what arrives is sent at once, not after a batch fills."""
    for rec in records:
        yield rec
        pub.flush()


def _feed_with_progress(cfg: Config, records, pub, args) -> FeedStats:
    if not sys.stderr.isatty():
        return feed_records(cfg, records, pub, split=args.split, source=args.source, limit=args.limit)
    with Progress(TextColumn("feed"), BarColumn(), TextColumn("{task.completed} records"), TimeElapsedColumn(),
                  transient=True) as prog:
        task = prog.add_task("feed", total=None)
        return feed_records(cfg, records, pub, split=args.split, source=args.source, limit=args.limit,
                            progress=lambda: prog.advance(task))
