"""Battles from a file as columns (pyarrow): CSV, JSONL and Parquet straight to pairwise counts.

`arena leaderboard --battles FILE` used to parse a million rows one by one in Python (most of its time); here
the file is read as columns, the competitor names become categorical codes and the outcomes small integers,
and `PairCounts.from_arrays` counts them in one numpy pass. The row reader (arena_flywheel/records.py) stays
the authority on what a bad row is: whenever a file is not clean (a row that does not parse, a missing
name, an unknown winner, a self-battle, a non-finite score, a line over the limits), `battle_counts`
returns None and the caller reads the file row by row, which names the row and says what is wrong.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .config import limits_of
from .ratings import PairCounts

# winner -> outcome code of PairCounts.from_arrays (0 = a wins, 1 = tie, 2 = b wins); "invalid" is dropped
OUTCOMES = {"model_a": 0, "tie": 1, "tie (bothbad)": 1, "model_b": 2, "invalid": -1}
_WANTED = ("competitor_a", "competitor_b", "model_a", "model_b", "winner", "score_a", "score_b", "split",
           "category")


def _read(path: Path) -> Any | None:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            names = pq.read_schema(path).names
            return pq.read_table(path, columns=[c for c in _WANTED if c in names])
        if suffix in (".csv", ".tsv"):
            head = path.open("rb").readline().decode("utf-8", errors="replace")
            delim = "\t" if suffix == ".tsv" else ","
            names = [c.strip().strip('"') for c in head.rstrip("\r\n").split(delim)]
            keep = [c for c in _WANTED if c in names]
            return pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter=delim),
                                  convert_options=pacsv.ConvertOptions(
                                      include_columns=keep, strings_can_be_null=True,
                                      column_types={c: pa.string() for c in keep
                                                    if c not in ("score_a", "score_b")}))
        if suffix in (".jsonl", ".ndjson"):
            table = pajson.read_json(path)
            return table.select([c for c in _WANTED if c in table.column_names])
    except (pa.ArrowException, OSError, ValueError):
        return None  # the row reader says which row and why
    return None


def _strings(table, name: str):
    if name not in table.column_names:
        return None
    col = table.column(name)
    import pyarrow as pa

    if not pa.types.is_string(col.type) and not pa.types.is_large_string(col.type) and not pa.types.is_null(col.type):
        return False  # a name that is not text: the row reader reports it
    return col


def battle_counts(path: str, *, tie_margin: float = 0.0, split: str | None = None, limits=None,
                  category: str | None = None) -> PairCounts | None:
    """Pairwise counts of a clean battle or verdict file, or None when it must be read row by row.
    `split` / `category`: only rows whose `split` / `category` field equals it."""
    import pyarrow as pa

    try:
        return _battle_counts(path, tie_margin, split, limits, category)
    except (pa.ArrowException, UnicodeDecodeError, ValueError, TypeError):
        return None  # e.g. invalid UTF-8 the JSON reader let through: the row reader names the row


def _battle_counts(path: str, tie_margin: float, split: str | None, limits, category: str | None = None
                   ) -> PairCounts | None:
    import pyarrow as pa
    import pyarrow.compute as pc

    p = Path(path)
    lim = limits_of(limits)
    if path == "-" or not p.is_file():
        return None
    if p.suffix.lower() in (".jsonl", ".ndjson"):
        # A line over the record limit, or with more brackets than the nesting limit, is the row reader's to
        # report; pyarrow's JSON reader must never see deep nesting (it recurses, and crashed the process).
        with p.open("rb") as f:
            for line in f:
                if len(line) > lim.max_record_bytes or line.count(b"[") + line.count(b"{") > lim.max_depth:
                    return None
    table = _read(p)
    if table is None or table.num_rows == 0:
        return None

    def side(first: str, second: str):
        x, y = _strings(table, first), _strings(table, second)
        if x is False or y is False:
            return False
        if x is None:
            return y
        return x if y is None else pc.coalesce(pc.if_else(pc.equal(x, ""), None, x), y)

    a, b = side("competitor_a", "model_a"), side("competitor_b", "model_b")
    if a is None or b is None or a is False or b is False or a.null_count or b.null_count:
        return None
    if pc.any(pc.equal(a, "")).as_py() or pc.any(pc.equal(b, "")).as_py() or pc.any(pc.equal(a, b)).as_py():
        return None  # a missing name or a self-battle: the row reader names the row
    outcome = _outcomes(table, tie_margin)
    if outcome is None:
        return None
    keep = outcome >= 0
    for field, value in (("split", split), ("category", category)):
        if value is None:
            continue
        s = _strings(table, field)
        if s is False:
            return None  # not text: the row reader compares it as the row has it
        keep &= np.zeros(table.num_rows, dtype=bool) if s is None else \
            pc.fill_null(pc.equal(s, value), False).to_numpy(zero_copy_only=False)
    a = pc.dictionary_encode(a).combine_chunks()
    b = pc.dictionary_encode(b).combine_chunks()
    models = sorted(set(a.dictionary.to_pylist()) | set(b.dictionary.to_pylist()))
    index = pa.array(models)
    ia = pc.index_in(a.dictionary, value_set=index).to_numpy()[a.indices.to_numpy()]
    ib = pc.index_in(b.dictionary, value_set=index).to_numpy()[b.indices.to_numpy()]
    counts = PairCounts.from_arrays(models, ia[keep], ib[keep], outcome[keep])
    used = sorted(set(ia[keep].tolist()) | set(ib[keep].tolist()))
    if len(used) == len(models):
        return counts
    return PairCounts.from_arrays([models[i] for i in used], np.searchsorted(used, ia[keep]),
                                  np.searchsorted(used, ib[keep]), outcome[keep])


def _outcomes(table, tie_margin: float) -> np.ndarray | None:
    """Outcome codes per row (-1: not rated), or None when a winner or a score is not clean."""
    import pyarrow.compute as pc

    n = table.num_rows
    out = np.full(n, -2, dtype=np.int64)  # -2: not decided yet
    w = _strings(table, "winner")
    if w is False:
        return None
    if w is not None:
        enc = pc.dictionary_encode(w).combine_chunks()
        labels = enc.dictionary.to_pylist()
        if any(lab not in OUTCOMES and lab != "" for lab in labels):
            return None  # an unknown winner: the row reader names it
        codes = np.array([OUTCOMES.get(lab, -2) for lab in labels] or [-2], dtype=np.int64)
        idx = enc.indices.to_numpy(zero_copy_only=False)
        valid = ~np.asarray(pc.is_null(enc.indices).to_numpy(zero_copy_only=False), dtype=bool)
        out[valid] = codes[idx[valid].astype(np.int64)]
    todo = out == -2
    if not todo.any():
        return out
    if "score_a" not in table.column_names or "score_b" not in table.column_names:
        return None
    try:
        sa = pc.cast(table.column("score_a"), "float64").to_numpy(zero_copy_only=False)
        sb = pc.cast(table.column("score_b"), "float64").to_numpy(zero_copy_only=False)
    except Exception:  # noqa: BLE001 - pyarrow raises several kinds for text that is not a number
        return None
    sa, sb = sa[todo], sb[todo]
    if np.isnan(sa).any() or np.isnan(sb).any() or np.isinf(sa).any() or np.isinf(sb).any():
        return None  # missing or non-finite scores: the row reader decides (NaN is 'invalid' there)
    diff = sa - sb
    out[todo] = np.where(np.abs(diff) <= tie_margin, 1, np.where(diff > 0, 0, 2))
    return out
