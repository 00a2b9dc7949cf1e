"""`arena feed PATH`: stream instructions from files or stdin onto the instruction topics."""
from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Iterator

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from arena_flywheel.broker import kafka_for
from arena_flywheel.config import Config
from arena_flywheel.errors import UsageError
from arena_flywheel.kafka import Publisher
from consumers.ledger import Ledger
from producers.feed import FeedStats, Record, feed_records, follow_jsonl, iter_records



def add_arguments(p) -> None:
    p.add_argument("path", metavar="PATH", help="file (.jsonl .json .csv .parquet), datasets directory, or - for stdin")
    p.add_argument("--split", choices=("train", "eval"), help="split of records that do not name one "
                   "(default: feed.default_split)")
    p.add_argument("--source", default="", help="source name recorded on each instruction (default: file name)")
    p.add_argument("--follow", action="store_true", help="keep reading a growing JSONL file until Ctrl-C")
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
    stop = threading.Event()
    written = None
    with kafka_for(cfg) as (kcfg, embedded):
        follower = None
        if embedded and args.follow:  # a growing file: store as it arrives, not only at the end
            follower = threading.Thread(target=Ledger(kcfg).run, args=(stop,), name="ledger", daemon=True)
            follower.start()
        with Publisher(kcfg) as pub:
            if args.follow:
                print(f"arena feed: following {args.path}; Ctrl-C stops", file=sys.stderr)
                stats = FeedStats()
                try:
                    feed_records(kcfg, _flushing(follow_jsonl(args.path, None, limits=kcfg.limits), pub), pub,
                                 split=args.split, source=args.source, limit=args.limit, stats=stats)
                except KeyboardInterrupt:
                    pass
            else:
                stats = _feed_with_progress(kcfg, records, pub, args)
            pub.flush()
        if follower is not None:
            stop.set()
            follower.join(30)
        if embedded:
            # The embedded broker's topics vanish with this process: drain them into the ledger first.
            with Ledger(kcfg) as ledger:
                ledger.drain(idle_s=1.0, timeout_s=300)
                written = ledger.written
    msg = f"arena feed: {stats.line()}"
    if written is not None:
        msg += f"; embedded broker, stored in the ledger {cfg.db.url} ({written} new rows)"
    print(msg)
    return 0


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
