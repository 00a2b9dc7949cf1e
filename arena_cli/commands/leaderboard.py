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
import os
import sys
from dataclasses import replace
from typing import Any, Iterable, TextIO

import sqlalchemy as sa

from arena_flywheel.columns import battle_counts
from arena_flywheel.errors import InputError, UsageError
from arena_flywheel.records import read_records
from arena_flywheel.ratings import BradleyTerry, Leaderboard, PairCounts, Row
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
    parser.add_argument("--baseline", metavar="MODEL", default=None,
                        help="add each model's win rate against MODEL (arena-hard's show_result): predicted "
                             "from the ratings with a 95%% bootstrap CI, plus the observed win rate and "
                             "battle count against MODEL")
    parser.add_argument("--category", metavar="NAME", default=None,
                        help="only file rows whose 'category' field is NAME (files only: the ledger's "
                             "verdicts carry no category, so it is refused with --from-ledger)")


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


def counts_from_file(path: str, tie_margin: float = 0.0, split: str | None = None, limits=None,
                     category: str | None = None) -> PairCounts:
    """Pairwise counts of a battle or verdict file: as columns (arena_flywheel/columns.py) when the file is
    clean, else row by row, which names the first bad row. `category`: only rows whose `category` is it."""
    fast = battle_counts(path, tie_margin=tie_margin, split=split, limits=limits, category=category)
    if fast is not None:
        return fast
    return read_file(path, tie_margin, split, limits, category)[0]


def _length(v: Any) -> float | None:
    if isinstance(v, bool) or v in (None, ""):
        return None
    try:
        x = float(v)
    except (TypeError, ValueError, OverflowError):
        return None
    return x if math.isfinite(x) else None


def read_file(path: str, tie_margin: float = 0.0, split: str | None = None, limits=None,
              category: str | None = None) -> tuple[PairCounts, dict[str, float]]:
    """Row by row: (pairwise counts, {model: average answer length}) of the rows kept by `split` and
    `category`; the lengths come from numeric `len_a` / `len_b` fields (every kept row, rated or not),
    and the dict is empty when no kept row has them."""
    counts = PairCounts()
    total: dict[str, float] = {}
    seen: dict[str, int] = {}
    for where, row in read_rows(path, limits):
        a, b, w, s = battle_of(row, tie_margin, where)
        if (split is not None and s != split) or (category is not None and row.get("category") != category):
            continue
        counts.add(a, b, w)
        for m, key in ((a, "len_a"), (b, "len_b")):
            x = _length(row.get(key))
            if x is not None:
                total[m] = total.get(m, 0.0) + x
                seen[m] = seen.get(m, 0) + 1
    return counts, {m: total[m] / seen[m] for m in total}


def _has_lengths(path: str, limits=None) -> bool:
    """Whether the file's first row has a `len_a` or `len_b` field (a peek: the rest is not read)."""
    rows = read_rows(path, limits)
    try:
        _, first = next(rows)
    except (StopIteration, UsageError):
        return False
    finally:
        rows.close()
    return isinstance(first, dict) and ("len_a" in first or "len_b" in first)


def file_views(path: str, tie_margin: float = 0.0, split: str | None = None, limits=None,
               category: str | None = None) -> tuple[PairCounts, dict[str, float]]:
    """(counts, average answer lengths) of a file: the columnar fast path when the file is clean and its
    rows carry no lengths; the row path otherwise (same counts either way)."""
    if path != "-" and not _has_lengths(path, limits):
        fast = battle_counts(path, tie_margin=tie_margin, split=split, limits=limits, category=category)
        if fast is not None:
            return fast, {}
    return read_file(path, tie_margin, split, limits, category)


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


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def view_dicts(rows: list[Row], *, baseline: str | None = None, vs: dict[str, dict] | None = None,
               lengths: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """One dict per row: FIELDS, then with `vs` (win_rate_vs_baseline's answer) baseline, baseline_win_rate,
    baseline_lower, baseline_upper (None without a bootstrap), baseline_observed (None without direct
    battles), baseline_battles; then with `lengths` avg_len (None for a model without lengths)."""
    out = []
    for r in rows:
        d = {k: getattr(r, k) for k in FIELDS}
        if vs is not None:
            v = vs[r.model]
            d.update(baseline=baseline, baseline_win_rate=v["predicted"], baseline_lower=v.get("lower"),
                     baseline_upper=v.get("upper"), baseline_observed=v["observed"], baseline_battles=v["battles"])
        if lengths:
            d["avg_len"] = lengths.get(r.model)
        out.append(d)
    return out


def render(rows: list[Row], fmt: str, *, has_ci: bool = True, baseline: str | None = None,
           vs: dict[str, dict] | None = None, lengths: dict[str, float] | None = None) -> str:
    """The leaderboard as markdown, CSV or JSON; `has_ci` False (--ci none, --rounds 0): "-" for the CI in
    markdown (CSV / JSON keep lower = upper = rating)."""
    dicts = view_dicts(rows, baseline=baseline, vs=vs, lengths=lengths)
    if fmt == "json":
        return json.dumps(dicts, indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(dicts[0]) if dicts else FIELDS, lineterminator="\n")
        w.writeheader()
        for d in dicts:
            w.writerow({k: (round(v, 4) if isinstance(v, float) else ("" if v is None else v))
                        for k, v in d.items()})
        return buf.getvalue().rstrip("\n")
    head = ["rank", "model", "rating", "95% CI", "battles", "win rate"]
    if vs is not None:
        head += [f"win rate vs {baseline}", "95% CI (vs)", "observed vs", "battles vs"]
    if lengths:
        head.append("avg len")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r, d in zip(rows, dicts):
        ci = f"{r.lower - r.rating:+.1f} / {r.upper - r.rating:+.1f}" if has_ci else "-"
        cells = [str(r.rank), r.model, f"{r.rating:.1f}", ci, str(r.battles), _pct(r.win_rate)]
        if vs is not None:
            p, lo, hi = d["baseline_win_rate"], d["baseline_lower"], d["baseline_upper"]
            cells += [_pct(p), "-" if lo is None else f"{100 * (lo - p):+.1f} / {100 * (hi - p):+.1f}",
                      _pct(d["baseline_observed"]), str(d["baseline_battles"])]
        if lengths:
            cells.append("-" if d["avg_len"] is None else f"{d['avg_len']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_out(text: str, stream: TextIO | None = None) -> bool:
    """Print `text` (and a newline) and flush; False when the reader went away (BrokenPipeError, e.g.
    `arena leaderboard ... | head -1`): then stdout is pointed at /dev/null so the interpreter's own
    flush at exit stays quiet too, and the command exits quietly, as Unix tools do."""
    stream = sys.stdout if stream is None else stream
    try:
        stream.write(text + "\n")
        stream.flush()
        return True
    except BrokenPipeError:
        try:
            fd = stream.fileno()
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            pass
        return False


def run(args, cfg) -> int:
    if args.category is not None and not args.category:
        raise UsageError("--category needs a name")
    if args.from_ledger:
        if args.category is not None:
            raise UsageError("--category works on --battles files only: the ledger's verdicts carry no category")
        split = args.split or "eval"
        counts, lengths = ledger_counts(cfg.db.url, split), {}
        source = f"{cfg.db.url} ({split} split)"
    else:
        split = args.split
        counts, lengths = file_views(args.battles, cfg.judge.tie_margin, split, cfg.limits, args.category)
        source = args.battles
    if not counts.models:
        where = [f"in split {split!r}"] if split is not None else []
        where += [f"in category {args.category!r}"] if args.category is not None else []
        raise UsageError(f"{source}: no rated battles (all invalid" + (", or none " + " and ".join(where)
                                                                        if where else "") + ")")
    bt = BradleyTerry.from_config(cfg.ratings)
    if args.rounds is not None:
        if args.rounds < 0:
            raise UsageError("--rounds must be >= 0")
        bt = replace(bt, rounds=args.rounds)
    if args.baseline is not None and args.baseline not in counts.index:
        raise UsageError(f"--baseline {args.baseline}: that model has no rated battles in {source}")
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
    rows: Leaderboard = bt.leaderboard(counts, ci=args.ci, seed=args.seed)
    vs = None
    if args.baseline is not None:
        vs = bt.win_rate_vs_baseline(counts, args.baseline, ratings={r.model: r.rating for r in rows},
                                     replicates=rows.replicates)
    has_ci = args.ci == "sandwich" or (args.ci == "bootstrap" and bt.rounds > 0)
    if not write_out(render(rows, args.format, has_ci=has_ci, baseline=args.baseline, vs=vs, lengths=lengths)):
        return 0  # the reader went away (`| head`): nothing more to say
    if rows.note:  # on stderr, so CSV and JSON on stdout stay machine-readable
        print(f"note: {rows.note}", file=sys.stderr)
    return 0
