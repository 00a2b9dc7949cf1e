"""`arena leaderboard`: fit a leaderboard offline from battles or verdicts (the stream's engine).

Input rows (JSONL, a JSON list, or CSV with a header):
- battles: model_a, model_b, winner in model_a | model_b | tie | tie (bothbad) (invalid rows are skipped);
- verdicts (events or ledger rows): competitor_a/competitor_b (else model_a/model_b) with a winner, or
  score_a and score_b: the higher score wins, |score_a - score_b| <= cfg.judge.tie_margin is a tie;
- AlpacaEval annotations and arena-hard-auto judgments (arena_flywheel/judgments.py), detected from the first
  record or named with --input-format.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Iterable, TextIO

import numpy as np

from arena_flywheel.columns import battle_counts
from arena_flywheel.errors import InputError, UsageError
from arena_flywheel.events import competitor_name
from arena_flywheel.judgments import FORMATS, detect, read_judged
from arena_flywheel.records import read_records
from arena_flywheel.ratings import BradleyTerry, PairCounts, Row, StyleControlledBT
from arena_flywheel.style import STYLE_FIELDS, answer_counts


WINNERS = ("model_a", "model_b", "tie", "tie (bothbad)", "invalid")
FIELDS = ("rank", "model", "rating", "lower", "upper", "battles", "wins", "ties", "losses", "win_rate")


def add_arguments(parser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--battles", metavar="FILE", help="JSONL / JSON / CSV / Parquet of battles or verdicts ('-' = "
                                                       "stdin), an AlpacaEval annotation file, or arena-hard-auto "
                                                       "judgments (a file or a directory)")
    src.add_argument("--from-ledger", action="store_true", help="read verdicts from the ledger at cfg.db.url")
    parser.add_argument("--db", metavar="URL", help="with --from-ledger: the ledger URL (default: db.url / "
                                                    "$ARENA_DB_URL)")
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
                             "battle count against MODEL; for arena-hard-auto's pairwise judgments, the "
                             "baseline they were judged against (required)")
    parser.add_argument("--category", metavar="NAME", default=None,
                        help="only file rows whose 'category' field is NAME (files only: the ledger's "
                             "verdicts carry no category, so it is refused with --from-ledger)")
    parser.add_argument("--input-format", choices=("auto", *FORMATS), default="auto",
                        help="what --battles holds: battle/verdict rows, AlpacaEval annotations, or "
                             "arena-hard-auto judgments (a .jsonl file or a model_judgment/<judge> directory); "
                             "auto (default) looks at the first record")
    parser.add_argument("--style-control", action="store_true",
                        help="Bradley-Terry with style covariates (answer length and markdown counts), "
                             "arena-hard-auto's and LMSYS's style control; needs len_a/len_b in the rows, "
                             "AlpacaEval outputs, or the ledger's answers")
    parser.add_argument("--matrix", action="store_true",
                        help="add the battle-count and win-rate matrix (row model against column model)")


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


@contextmanager
def reading_ledger(url: str):
    """The ledger at `url`, with a database error as a one-line usage error. The store (SQLAlchemy, SQLModel)
    is imported here and not at the top: it is about a fifth of a file's whole `arena leaderboard` and no file
    path uses it (docs/architecture.md names this one lazy project import and why)."""
    import sqlalchemy as sa

    from arena_flywheel.store import open_ledger  # lazy: see the docstring

    with open_ledger(url) as store:
        try:
            yield store
        except sa.exc.SQLAlchemyError as exc:
            raise UsageError(f"{url}: cannot read the ledger ({exc.__class__.__name__}); run `arena ledger` "
                             "first or pass --battles FILE") from None


def ledger_verdicts(url: str, split: str) -> list[tuple[str, str, str]]:
    """(competitor_a, competitor_b, winner) of the ledger's verdicts of `split`."""
    with reading_ledger(url) as store:
        return store.battles(split)


def ledger_counts(url: str, split: str) -> PairCounts:
    """Pairwise counts of the ledger's verdicts of `split`, counted by the database (GROUP BY): a million
    verdicts come back as a few thousand (a, b, winner, n) rows."""
    counts = PairCounts()
    with reading_ledger(url) as store:
        for a, b, w, n in store.battle_counts(split):
            counts.add(a, b, w, n=n)
    return counts


# model_a, model_b, winner (or a's score), style_a, style_b per battle; then the names of the style columns
StyleData = tuple[tuple[list[str], list[str], Any, Any, Any], tuple[str, ...]]


def _style_of(row: dict, side: str, keys: tuple[str, ...]) -> tuple[float, ...] | None:
    vals = tuple(_length(row.get(f"{k}_{side}")) for k in keys)
    return None if any(v is None or v < 0 for v in vals) else vals


def file_style(path: str, tie_margin: float = 0.0, split: str | None = None, limits=None,
               category: str | None = None) -> StyleData:
    """Style-control data of a battle file, row by row: every kept rated row needs numeric answer lengths,
    len_a / len_b (or a verdict's length_a / length_b), and header_count / list_count / bold_count _a / _b
    when the first row has them."""
    fields: tuple[str, ...] | None = None
    keys: tuple[str, ...] = ()
    a, b, w, style_a, style_b = [], [], [], [], []
    for where, row in read_rows(path, limits):
        ma, mb, win, s = battle_of(row, tie_margin, where)
        if fields is None:
            length = next((k for k in ("len", "length") if f"{k}_a" in row or f"{k}_b" in row), None)
            if length is None:
                raise UsageError(f"{where}: --style-control needs answer lengths: rows with len_a and len_b "
                                 "(optionally header_count, list_count, bold_count _a / _b)")
            fields = tuple(f for f in STYLE_FIELDS if f == "len" or f"{f}_a" in row)
            keys = tuple(length if f == "len" else f for f in fields)
        if (split is not None and s != split) or (category is not None and row.get("category") != category) \
                or win == "invalid":
            continue
        xa, xb = _style_of(row, "a", keys), _style_of(row, "b", keys)
        if xa is None or xb is None:
            raise UsageError(f"{where}: --style-control needs {', '.join(k + '_a / _b' for k in keys)} as "
                             "non-negative numbers in every rated row")
        a.append(ma), b.append(mb), w.append(win), style_a.append(xa), style_b.append(xb)
    return (a, b, w, style_a, style_b), fields or ()


def ledger_style(url: str, split: str) -> StyleData:
    """Style-control data of the ledger's verdicts of `split`: each verdict's battle holds both answers, whose
    style counts (arena_flywheel/style.py) are the covariates; verdicts whose battle is not in the ledger are
    left out (the caller rates the battles it gets), and none at all is a usage error."""
    with reading_ledger(url) as store:
        battles = {p["id"]: p for p in store.payloads("battle", split=split)}
        verdicts = store.payloads("verdict", split=split)
    a, b, w, xa, xb = [], [], [], [], []
    for v in verdicts:
        bt = battles.get(v.get("battle_id"))
        if bt is None or v.get("winner") not in WINNERS[:4]:
            continue
        sides = {competitor_name(c.get("model", ""), c.get("checkpoint", "base")): c.get("answers") or []
                 for c in (bt.get("a") or {}, bt.get("b") or {})}
        ca, cb = v.get("competitor_a"), v.get("competitor_b")
        if ca not in sides or cb not in sides:
            continue
        a.append(ca), b.append(cb), w.append(v["winner"])
        xa.append(answer_counts(sides[ca])), xb.append(answer_counts(sides[cb]))
    if not a:
        raise UsageError(f"{url} ({split} split): --style-control needs the battles (with both answers) of the "
                         "verdicts in the ledger, and none of its verdicts has one")
    return (a, b, w, xa, xb), STYLE_FIELDS


# ------------------------------------------------------------------------------------------- output

def _fmt(v: Any) -> str:
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def view_dicts(rows: list[Row], *, baseline: str | None = None, vs: dict[str, dict] | None = None,
               lengths: dict[str, float] | None = None, se: dict[str, float | None] | None = None
               ) -> list[dict[str, Any]]:
    """One dict per row: FIELDS, then with `se` win_rate_se (AlpacaEval's standard error of the win rate, None
    for one battle); with `vs` (win_rate_vs_baseline's answer) baseline, baseline_win_rate, baseline_lower,
    baseline_upper (None without a bootstrap), baseline_observed (None without direct battles),
    baseline_battles; then with `lengths` avg_len (None for a model without lengths)."""
    out = []
    for r in rows:
        d = {k: getattr(r, k) for k in FIELDS}
        if se is not None:
            d["win_rate_se"] = se.get(r.model)
        if vs is not None:
            v = vs[r.model]
            d.update(baseline=baseline, baseline_win_rate=v["predicted"], baseline_lower=v.get("lower"),
                     baseline_upper=v.get("upper"), baseline_observed=v["observed"], baseline_battles=v["battles"])
        if lengths:
            d["avg_len"] = lengths.get(r.model)
        out.append(d)
    return out


def pair_matrix(counts: PairCounts, models: list[str]) -> dict[str, Any]:
    """Battle counts and observed win rates between every two models, in `models` order: battles[i][j] =
    battles of i against j, win_rate[i][j] = (wins + ties / 2) / battles of i against j (None without any)."""
    idx = [counts.index[m] for m in models]
    W, T = counts.W.astype(float)[np.ix_(idx, idx)], counts.T.astype(float)[np.ix_(idx, idx)]
    N = W + W.T + T
    S = W + 0.5 * T
    n = [[round(x) for x in row] for row in N]
    rate = [[float(S[i, j] / N[i, j]) if n[i][j] and i != j else None for j in range(len(models))]
            for i in range(len(models))]
    return {"models": list(models), "battles": n, "win_rate": rate}


def _csv(dicts: list[dict[str, Any]], fields) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(dicts[0]) if dicts else list(fields), lineterminator="\n")
    w.writeheader()
    for d in dicts:
        w.writerow({k: (round(v, 4) if isinstance(v, float) else ("" if v is None else v)) for k, v in d.items()})
    return buf.getvalue().rstrip("\n")


def _md_table(head: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|",
            *("| " + " | ".join(cells) + " |" for cells in body)]


def render(rows: list[Row], fmt: str, *, has_ci: bool = True, baseline: str | None = None,
           vs: dict[str, dict] | None = None, lengths: dict[str, float] | None = None,
           se: dict[str, float | None] | None = None, matrix: dict[str, Any] | None = None) -> str:
    """The leaderboard as markdown, CSV or JSON; `has_ci` False (--ci none, --rounds 0): "-" for the CI in
    markdown (CSV / JSON keep lower = upper = rating). With `matrix` (pair_matrix): markdown adds the battle
    and win-rate tables, JSON becomes {"leaderboard": [...], "matrix": {...}}, and CSV (one table) is the
    matrix in long form (model, opponent, battles, win_rate) instead of the leaderboard."""
    dicts = view_dicts(rows, baseline=baseline, vs=vs, lengths=lengths, se=se)
    if fmt == "json":
        return json.dumps(dicts if matrix is None else {"leaderboard": dicts, "matrix": matrix}, indent=2)
    if fmt == "csv":
        if matrix is None:
            return _csv(dicts, FIELDS)
        ms = matrix["models"]
        return _csv([{"model": ms[i], "opponent": ms[j], "battles": matrix["battles"][i][j],
                      "win_rate": matrix["win_rate"][i][j]}
                     for i in range(len(ms)) for j in range(len(ms)) if i != j],
                    ("model", "opponent", "battles", "win_rate"))
    head = ["rank", "model", "rating", "95% CI", "battles", "win rate"]
    if se is not None:
        head.append("SE")
    if vs is not None:
        head += [f"win rate vs {baseline}", "95% CI (vs)", "observed vs", "battles vs"]
    if lengths:
        head.append("avg len")
    body = []
    for r, d in zip(rows, dicts):
        ci = f"{r.lower - r.rating:+.1f} / {r.upper - r.rating:+.1f}" if has_ci else "-"
        cells = [str(r.rank), r.model, f"{r.rating:.1f}", ci, str(r.battles), _pct(r.win_rate)]
        if se is not None:
            cells.append("-" if d["win_rate_se"] is None else f"{100 * d['win_rate_se']:.1f}")
        if vs is not None:
            p, lo, hi = d["baseline_win_rate"], d["baseline_lower"], d["baseline_upper"]
            cells += [_pct(p), "-" if lo is None else f"{100 * (lo - p):+.1f} / {100 * (hi - p):+.1f}",
                      _pct(d["baseline_observed"]), str(d["baseline_battles"])]
        if lengths:
            cells.append("-" if d["avg_len"] is None else f"{d['avg_len']:.1f}")
        body.append(cells)
    lines = _md_table(head, body)
    if matrix is not None:
        ms = matrix["models"]
        for title, key, cell in (("battles (row model against column model)", "battles",
                                  lambda i, j, v: str(v) if i != j else "-"),
                                 ("win rate of the row model against the column model", "win_rate",
                                  lambda i, j, v: _pct(v))):
            lines += ["", title, ""]
            lines += _md_table(["model", *ms], [[m, *(cell(i, j, v) for j, v in enumerate(matrix[key][i]))]
                                                for i, m in enumerate(ms)])
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
    if args.db and not args.from_ledger:
        raise UsageError("--db names a ledger to read: add --from-ledger (or drop --db to read --battles)")
    if args.category is not None and not args.category:
        raise UsageError("--category needs a name")
    notes: list[str] = []
    se = style = None
    if args.from_ledger:
        if args.category is not None:
            raise UsageError("--category works on --battles files only: the ledger's verdicts carry no category")
        if args.input_format not in ("auto", "battles"):
            raise UsageError(f"--input-format {args.input_format} is for --battles files; the ledger holds verdicts")
        split = args.split or "eval"
        counts, lengths = ledger_counts(cfg.db.url, split), {}
        source = f"{cfg.db.url} ({split} split)"
        if args.style_control and counts.models:
            style = ledger_style(cfg.db.url, split)
    else:
        split = args.split
        source = args.battles
        kind = args.input_format
        if kind == "auto":
            kind = detect(args.battles, cfg.limits)
        if kind == "battles":
            counts, lengths = file_views(args.battles, cfg.judge.tie_margin, split, cfg.limits, args.category)
            if args.style_control and counts.models:
                style = file_style(args.battles, cfg.judge.tie_margin, split, cfg.limits, args.category)
        else:
            if split is not None:
                raise UsageError(f"--split: {kind} files have no splits")
            try:
                judged = read_judged(args.battles, kind, baseline=args.baseline, limits=cfg.limits,
                                     tie_margin=cfg.judge.tie_margin)
            except InputError as exc:
                raise UsageError(str(exc)) from None
            counts, lengths = judged.counts(args.category), judged.lengths(args.category)
            if kind == "alpacaeval":
                se = judged.standard_errors(args.category)
            if judged.skipped:
                notes.append(f"{judged.skipped} record(s) without a verdict skipped (no preference, or a game "
                             "without a label), as the benchmark's own scripts do")
            if args.style_control:
                data = judged.style(args.category)
                style = None if data is None else (data, STYLE_FIELDS)
                if style is None:
                    raise UsageError(f"{source}: --style-control needs the answers' lengths, and {kind} judgment "
                                     "files do not carry them")
    if style is not None:
        # the board is the style data's battles (the ledger's verdicts without their battle are left out)
        rated = PairCounts()
        for a, b, w in zip(*style[0][:3]):
            if isinstance(w, str):
                rated.add(a, b, w)
            else:
                rated.add_score(a, b, float(w))
        if rated.total < counts.total:
            notes.append(f"{counts.total - rated.total} rated verdict(s) without their battle in the ledger "
                         "left out of the style-controlled board")
        counts = rated
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
    if style is not None:
        if args.ci == "sandwich":
            raise UsageError("--style-control has bootstrap CIs only (--ci bootstrap or none)")
        sc = StyleControlledBT(scale=bt.scale, base=bt.base, init=bt.init, anchor=bt.anchor,
                               anchor_rating=bt.anchor_rating)
        (data, names) = style
        rows, coef = sc.leaderboard(*data, counts, rounds=bt.rounds if args.ci == "bootstrap" else 0,
                                    seed=args.seed)
        notes.append("style coefficients (log-odds per sd of the normalised difference): "
                     + ", ".join(f"{n} {c:+.3f}" for n, c in zip(names, coef)))
    else:
        rows = bt.leaderboard(counts, ci=args.ci, seed=args.seed)
    vs = None
    if args.baseline is not None:
        vs = bt.win_rate_vs_baseline(counts, args.baseline, ratings={r.model: r.rating for r in rows},
                                     replicates=rows.replicates)
    has_ci = args.ci == "sandwich" or (args.ci == "bootstrap" and bt.rounds > 0)
    matrix = pair_matrix(counts, [r.model for r in rows]) if args.matrix else None
    if not write_out(render(rows, args.format, has_ci=has_ci, baseline=args.baseline, vs=vs, lengths=lengths,
                            se=se, matrix=matrix)):
        return 0  # the reader went away (`| head`): nothing more to say
    for note in ([rows.note] if rows.note else []) + notes:  # on stderr: CSV and JSON on stdout stay clean
        print(f"note: {note}", file=sys.stderr)
    return 0
