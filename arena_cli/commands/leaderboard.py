"""`arena leaderboard`: fit a leaderboard offline from battles or verdicts (the stream's engine).

Input rows (JSONL, a JSON list, or CSV with a header):
- battles: model_a, model_b, winner in model_a | model_b | tie | tie (bothbad) (invalid rows are skipped);
- verdicts (events or ledger rows): competitor_a/competitor_b (else model_a/model_b) with a winner, or
  score_a and score_b: the higher score wins, |score_a - score_b| <= cfg.judge.tie_margin is a tie.
"""
from __future__ import annotations

import csv
import io
import json
import math
import sys
from dataclasses import replace
from typing import Any, Iterable

import sqlalchemy as sa

from arena_flywheel.columns import battle_counts
from arena_flywheel.errors import InputError, UsageError
from arena_flywheel.records import read_records
from arena_flywheel.ratings import BradleyTerry, PairCounts, Row
from arena_flywheel.store import open_ledger


WINNERS = ("model_a", "model_b", "tie", "tie (bothbad)", "invalid")
FIELDS = ("rank", "model", "rating", "lower", "upper", "battles", "wins", "ties", "losses", "win_rate")


def add_arguments(parser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--battles", metavar="FILE", help="JSONL / JSON / CSV of battles or verdicts ('-' = stdin)")
    src.add_argument("--from-ledger", action="store_true", help="read verdicts from the ledger at cfg.db.url")
    parser.add_argument("--split", default=None,
                        help="only rows of this split (default: eval with --from-ledger, every row of a file)")
    parser.add_argument("--format", choices=("markdown", "csv", "json"), default="markdown")
    parser.add_argument("--ci", choices=("bootstrap", "sandwich", "none"), default="bootstrap")
    parser.add_argument("--rounds", type=int, default=None, help="bootstrap rounds (default cfg.ratings)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--anchor", metavar="MODEL", default=None, help="pin this model's rating")
    parser.add_argument("--anchor-rating", type=float, default=None, metavar="R")


# ------------------------------------------------------------------------------------------- parsing

def _winner(row: dict[str, Any], tie_margin: float, where: str) -> str:
    w = row.get("winner")
    if w not in (None, ""):
        if not isinstance(w, str) or w not in WINNERS:
            raise UsageError(f"{where}: winner {w!r:.80} is not one of {', '.join(WINNERS)}")
        return w
    sa, sb = row.get("score_a"), row.get("score_b")
    if sa in (None, "") or sb in (None, ""):
        raise UsageError(f"{where}: needs a winner or score_a and score_b")
    try:
        sa, sb = float(sa), float(sb)
    except (TypeError, ValueError, OverflowError):
        raise UsageError(f"{where}: score_a/score_b must be numbers") from None
    if math.isnan(sa) or math.isnan(sb):
        return "invalid"
    if math.isinf(sa) or math.isinf(sb):
        raise UsageError(f"{where}: score_a/score_b must be finite numbers")
    if abs(sa - sb) <= tie_margin:
        return "tie"
    return "model_a" if sa > sb else "model_b"


def battle_of(row: Any, tie_margin: float = 0.0, where: str = "row") -> tuple[str, str, str, str | None]:
    """(a, b, winner, split) of one battle or verdict row; UsageError when it is neither."""
    if not isinstance(row, dict):
        raise UsageError(f"{where}: expected an object with model_a, model_b, winner")
    a = row.get("competitor_a") or row.get("model_a")
    b = row.get("competitor_b") or row.get("model_b")
    if not isinstance(a, str) or not isinstance(b, str) or not a or not b:
        raise UsageError(f"{where}: needs model_a and model_b (or competitor_a and competitor_b)")
    if a == b:
        raise UsageError(f"{where}: a model cannot battle itself ({a})")
    return a, b, _winner(row, tie_margin, where), row.get("split") or None


def read_rows(path: str, limits=None) -> Iterable[tuple[str, dict]]:
    """(location, row) of a JSONL, JSON-list or CSV file ('-' = stdin), through the core reader within
    cfg.limits: a bad row (invalid JSON or UTF-8, too big, too deep, a huge integer) is a UsageError that
    names its location, and so is a problem of the whole file; never a traceback."""
    name = "<stdin>" if path == "-" else path
    n = 0
    try:
        for rec in read_records(path, limits, name=name, sniff=True, objects_only=False, single_object=True,
                                need_columns=("model_a", "competitor_a"), columns_what="model_a, model_b, winner"):
            if rec.error:
                raise UsageError(f"{rec.source}: {rec.error}")
            n += 1
            yield rec.source, rec.data
    except UsageError:
        raise
    except InputError as exc:
        raise UsageError(str(exc)) from None
    if n == 0:
        raise UsageError(f"{name}: empty file (no battle rows in it)")


def counts_from_file(path: str, tie_margin: float = 0.0, split: str | None = None, limits=None) -> PairCounts:
    """Pairwise counts of a battle or verdict file: as columns (arena_flywheel/columns.py) when the file is
    clean, else row by row, which names the first bad row."""
    fast = battle_counts(path, tie_margin=tie_margin, split=split, limits=limits)
    if fast is not None:
        return fast
    counts = PairCounts()
    for where, row in read_rows(path, limits):
        a, b, w, s = battle_of(row, tie_margin, where)
        if split is None or s == split:
            counts.add(a, b, w)
    return counts


def ledger_verdicts(url: str, split: str) -> list[tuple[str, str, str]]:
    """(competitor_a, competitor_b, winner) of the ledger's verdicts of `split`."""
    with open_ledger(url) as store:
        try:
            return store.battles(split)
        except sa.exc.SQLAlchemyError as exc:
            raise UsageError(f"{url}: cannot read the ledger ({exc.__class__.__name__}); run `arena ledger` "
                             "first or pass --battles FILE") from None


def ledger_counts(url: str, split: str) -> PairCounts:
    """Pairwise counts of the ledger's verdicts of `split`, counted by the database (GROUP BY): a million
    verdicts come back as a few thousand (a, b, winner, n) rows."""
    counts = PairCounts()
    with open_ledger(url) as store:
        try:
            for a, b, w, n in store.battle_counts(split):
                counts.add(a, b, w, n=n)
        except sa.exc.SQLAlchemyError as exc:
            raise UsageError(f"{url}: cannot read the ledger ({exc.__class__.__name__}); run `arena ledger` "
                             "first or pass --battles FILE") from None
    return counts


# ------------------------------------------------------------------------------------------- output

def _fmt(v: Any) -> str:
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def render(rows: list[Row], fmt: str) -> str:
    dicts = [{k: getattr(r, k) for k in FIELDS} for r in rows]
    if fmt == "json":
        return json.dumps(dicts, indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
        w.writeheader()
        for d in dicts:
            w.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()})
        return buf.getvalue().rstrip("\n")
    head = ("rank", "model", "rating", "95% CI", "battles", "win rate")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        ci = f"{r.lower - r.rating:+.1f} / {r.upper - r.rating:+.1f}"
        lines.append(f"| {r.rank} | {r.model} | {r.rating:.1f} | {ci} | {r.battles} | {100 * r.win_rate:.1f}% |")
    return "\n".join(lines)


def run(args, cfg) -> int:
    if args.from_ledger:
        split = args.split or "eval"
        counts = ledger_counts(cfg.db.url, split)
        source = f"{cfg.db.url} ({split} split)"
    else:
        counts = counts_from_file(args.battles, cfg.judge.tie_margin, args.split, cfg.limits)
        source = args.battles
    if not counts.models:
        raise UsageError(f"{source}: no rated battles (all invalid, or none in split {args.split!r})")
    bt = BradleyTerry.from_config(cfg.ratings)
    if args.rounds is not None:
        if args.rounds < 0:
            raise UsageError("--rounds must be >= 0")
        bt = replace(bt, rounds=args.rounds)
    if args.anchor is not None:
        if args.anchor not in counts.index:
            raise UsageError(f"--anchor {args.anchor}: that model has no battles in {source}")
        bt = replace(bt, anchor=args.anchor, anchor_rating=args.anchor_rating)
    elif args.anchor_rating is not None:
        raise UsageError("--anchor-rating needs --anchor MODEL")
    elif bt.anchor is not None and bt.anchor not in counts.index:
        print(f"note: configured anchor {bt.anchor} has no battles here; ratings centred on "
              f"{bt.init:g} instead", file=sys.stderr)
        bt = replace(bt, anchor=None, anchor_rating=None)
    rows = bt.leaderboard(counts, ci=args.ci, seed=args.seed)
    print(render(rows, args.format))
    if rows.note:  # on stderr, so CSV and JSON on stdout stay machine-readable
        print(f"note: {rows.note}", file=sys.stderr)
    return 0
