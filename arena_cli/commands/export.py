"""`arena export --what KIND`: read any event kind back from the SQL ledger as JSONL or CSV, or (`--what
sft|dpo|reward|rl --iteration N --out DIR`) a round's training batch as a Hugging Face dataset and Parquet."""
from __future__ import annotations

import csv
import io
import json
import sys
from typing import Any

import sqlalchemy as sa

from arena_flywheel.config import Config
from arena_flywheel.errors import UsageError
from arena_flywheel.store import has_column, kind_of, open_ledger
from trainer.batches import KINDS as BATCHES
from trainer.service import export_round



def add_arguments(p) -> None:
    p.add_argument("--what", required=True, metavar="KIND",
                   help="instructions|responses|battles|verdicts|failures|checkpoints|deadletters, or a round's "
                   "training batch: sft|dpo|reward|rl (with --iteration and --out DIR)")
    p.add_argument("--format", default="jsonl", choices=("jsonl", "csv"))
    p.add_argument("--out", metavar="FILE", help="write here instead of stdout (a batch: the directory to write)")
    p.add_argument("--iteration", type=int, metavar="N", help="batches: the round's iteration")
    p.add_argument("--target", help="batches: the target model (default: the only one in the ledger)")
    p.add_argument("--split", choices=("train", "eval"), help="only this split (kinds that have one)")
    p.add_argument("--latest", action="store_true", help="failures: only the latest per instruction and target")
    p.add_argument("--db", metavar="URL", help="database URL (default: db.url / $ARENA_DB_URL)")


def _csv_cell(v: Any) -> Any:
    return json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v


def write_export(payloads: list[dict[str, Any]], fmt: str, out) -> None:
    if fmt == "jsonl":
        for p in payloads:
            out.write(json.dumps(p, ensure_ascii=False) + "\n")
        return
    cols: dict[str, None] = {}  # top-level fields in order of first appearance; nested ones as JSON
    for p in payloads:
        cols.update(dict.fromkeys(p))
    w = csv.DictWriter(out, fieldnames=list(cols), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for p in payloads:
        w.writerow({k: _csv_cell(v) for k, v in p.items()})


def export_batch(args, cfg: Config, url: str) -> int:
    if args.iteration is None or args.iteration < 1 or not args.out:
        raise UsageError(f"--what {args.what} writes a round's dataset: give --iteration N (N >= 1) and --out DIR")
    if args.split or args.latest or args.format != "jsonl":
        raise UsageError(f"--what {args.what}: --split, --latest and --format apply to event kinds only")
    try:
        meta = export_round(cfg, url, args.what.strip().lower(), args.iteration, args.out, target=args.target)
    except OSError as exc:
        raise UsageError(f"--out {args.out}: cannot write ({exc.strerror or exc})") from None
    print(f"arena export: {meta['rows']} {args.what} rows of {meta['target']} iteration {meta['iteration']} "
          f"(parent {meta['parent']}) -> {args.out}/{args.what} (load_from_disk) and "
          f"{args.out}/{args.what}.parquet", file=sys.stderr)
    return 0


def run(args, cfg: Config) -> int:
    url = cfg.db.url  # --db is applied by arena_cli/main.py
    if args.what.strip().lower() in BATCHES:
        return export_batch(args, cfg, url)
    if args.iteration is not None or args.target:
        raise UsageError("--iteration and --target apply to batches (--what sft|dpo|reward|rl)")
    try:
        kind = kind_of(args.what)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    store = open_ledger(url)  # a missing ledger is an InputError; it is never created here
    try:
        if kind == "failure" and args.latest:
            payloads = [f.to_wire() for f in store.failures(split=args.split)]
        else:
            has_split = has_column(kind, "split")
            if args.split and not has_split:
                raise UsageError(f"{kind} events have no split; drop --split")
            try:
                payloads = store.payloads(kind, split=args.split if has_split else None)
            except sa.exc.OperationalError as exc:
                raise UsageError(f"{url}: cannot read the ledger ({exc.orig})") from None
    finally:
        store.close()
    if args.out:
        try:
            with open(args.out, "w", encoding="utf-8", newline="") as f:
                write_export(payloads, args.format, f)
        except OSError as exc:
            raise UsageError(f"--out {args.out}: cannot write ({exc.strerror or exc}); "
                             f"pick a file in an existing, writable directory") from None
        print(f"arena export: {len(payloads)} {kind} events -> {args.out}", file=sys.stderr)
    else:
        buf = io.StringIO()
        write_export(payloads, args.format, buf)
        sys.stdout.write(buf.getvalue())
    return 0
