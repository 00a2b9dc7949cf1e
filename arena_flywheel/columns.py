"""Battles from a file as columns (pyarrow): CSV, JSONL and Parquet straight to pairwise counts.

`arena leaderboard --battles FILE` used to parse a million rows one by one in Python (most of its time); here
the file is read as columns, the competitor names become categorical codes and the outcomes small integers,
and `PairCounts.from_arrays` counts them in one numpy pass. The row reader (arena_flywheel/records.py) stays
the authority on what a bad row is: whenever a file is not clean (a row that does not parse, a missing
name, an unknown winner, a self-battle, a non-finite score, a line over the limits), `battle_counts`
returns None and the caller reads the file row by row, which names the row and says what is wrong.

Numbers leave Arrow through its buffers (`_values`, `_valid`), never `to_numpy()`, `pa.array()` or
`pq.read_table()`: those check for pandas and so import it, 0.18 s of a one-second command.
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
    import pyarrow as pa  # each reader's module is imported only for its own format

    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            with pq.ParquetFile(path) as f:  # not pq.read_table: its dataset layer imports pandas (0.18 s)
                return f.read(columns=[c for c in _WANTED if c in f.schema_arrow.names])
        if suffix in (".csv", ".tsv"):
            import pyarrow.csv as pacsv

            with path.open("rb") as f:
                head = f.readline().decode("utf-8", errors="replace")
            delim = "\t" if suffix == ".tsv" else ","
            names = [c.strip().strip('"') for c in head.rstrip("\r\n").split(delim)]
            keep = [c for c in _WANTED if c in names]
            return pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter=delim),
                                  convert_options=pacsv.ConvertOptions(
                                      include_columns=keep, strings_can_be_null=True,
                                      column_types={c: pa.string() for c in keep
                                                    if c not in ("score_a", "score_b")}))
        if suffix in (".jsonl", ".ndjson"):
            import pyarrow.json as pajson

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


def _values(arr, dtype) -> np.ndarray:
    """A primitive Arrow array's values (a copy) read from its data buffer; slots of nulls are undefined.
    pyarrow's own to_numpy() checks for pandas on its way and so imports it (0.18 s of a 1 s command)."""
    import pyarrow as pa

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_boolean(arr.type):
        bits = np.unpackbits(np.frombuffer(arr.buffers()[1], dtype=np.uint8), bitorder="little")
        return bits[arr.offset: arr.offset + len(arr)].astype(bool)
    return np.frombuffer(arr.buffers()[1], dtype=dtype)[arr.offset: arr.offset + len(arr)].copy()


def _valid(arr) -> np.ndarray:
    """Which slots of an Arrow array hold a value (not null)."""
    import pyarrow as pa

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.null_count == 0:
        return np.ones(len(arr), dtype=bool)
    if arr.buffers()[0] is None:  # a null-type array
        return np.zeros(len(arr), dtype=bool)
    bits = np.unpackbits(np.frombuffer(arr.buffers()[0], dtype=np.uint8), bitorder="little")
    return bits[arr.offset: arr.offset + len(arr)].astype(bool)


def _codes(col) -> tuple[list[str], np.ndarray]:
    """(distinct values, each row's index into them or -1 for null) of a text column."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_null(col.type):
        return [], np.full(len(col), -1, dtype=np.int64)
    enc = pc.dictionary_encode(col).combine_chunks()
    idx = _values(enc.indices, np.int32).astype(np.int64)
    idx[~_valid(enc.indices)] = -1
    return enc.dictionary.to_pylist(), idx


def _jsonl_within_limits(path: Path, lim, block: int = 1 << 23) -> bool:
    """Whether every line of a JSONL file is within limits.max_record_bytes (with its line end) and has at
    most limits.max_depth brackets. A line over them is the row reader's to report, and pyarrow's JSON reader
    must never see deep nesting (it recurses, and crashed the process). Counted in 8 MB blocks with numpy
    (0.1 s for 1M lines; a Python loop over the lines took 0.2 s)."""
    carry = b""
    with path.open("rb") as f:
        while True:
            chunk = f.read(block)
            data = carry + chunk
            cut = data.rfind(b"\n") + 1 if chunk else len(data)  # whole lines only, but all at the end
            if chunk and cut == 0:
                if len(data) > lim.max_record_bytes:
                    return False
                carry = data
                continue
            buf = np.frombuffer(data, dtype=np.uint8, count=cut)
            carry = data[cut:]
            ends = np.flatnonzero(buf == 10)
            if cut and (not len(ends) or ends[-1] != cut - 1):
                ends = np.r_[ends, cut - 1]  # the last line has no line end: it ends at its last byte
            if np.diff(ends, prepend=-1).max(initial=0) > lim.max_record_bytes:
                return False
            brackets = np.flatnonzero((buf == 0x5B) | (buf == 0x7B))
            if len(brackets) and np.bincount(np.searchsorted(ends, brackets)).max() > lim.max_depth:
                return False
            if not chunk:
                return True


def _battle_counts(path: str, tie_margin: float, split: str | None, limits, category: str | None = None
                   ) -> PairCounts | None:
    p = Path(path)
    lim = limits_of(limits)
    if path == "-" or not p.is_file():
        return None
    if p.suffix.lower() in (".jsonl", ".ndjson") and not _jsonl_within_limits(p, lim):
        return None
    table = _read(p)
    if table is None or table.num_rows == 0:
        return None
    sides = []
    for first, second in (("competitor_a", "model_a"), ("competitor_b", "model_b")):
        cols = [_strings(table, first), _strings(table, second)]
        if any(c is False for c in cols):
            return None  # a name that is not text: the row reader reports it
        # competitor_x when present and not empty, else model_x (a verdict names checkpoints there)
        sides.append([_codes(c) for c in cols if c is not None])
    if not sides[0] or not sides[1]:
        return None
    models = sorted({m for side in sides for names, _ in side for m in names if m not in (None, "")})
    pos = {m: i for i, m in enumerate(models)}
    index = []
    for k, side in enumerate(sides):
        out = np.full(table.num_rows, -1, dtype=np.int64)
        for names, idx in side:
            to_model = np.array([pos.get(m, -1) for m in names] + [-1], dtype=np.int64)  # [-1]: a null row
            take = (out < 0) & (to_model[idx] >= 0)
            out[take] = to_model[idx[take]]
        index.append(out)
    ia, ib = index
    if (ia < 0).any() or (ib < 0).any() or (ia == ib).any():
        return None  # a missing or empty name, or a self-battle: the row reader names the row
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
        if s is None:
            keep &= False
        else:
            names, idx = _codes(s)
            keep &= (idx == names.index(value)) if value in names else False
    ia, ib, outcome = ia[keep], ib[keep], outcome[keep]
    used = np.flatnonzero(np.bincount(ia, minlength=len(models)) + np.bincount(ib, minlength=len(models)))
    if len(used) == len(models):
        return PairCounts.from_arrays(models, ia, ib, outcome)
    return PairCounts.from_arrays([models[i] for i in used], np.searchsorted(used, ia),
                                  np.searchsorted(used, ib), outcome)


def _outcomes(table, tie_margin: float) -> np.ndarray | None:
    """Outcome codes per row (-1: not rated), or None when a winner or a score is not clean."""
    import pyarrow.compute as pc

    n = table.num_rows
    out = np.full(n, -2, dtype=np.int64)  # -2: not decided yet
    w = _strings(table, "winner")
    if w is False:
        return None
    if w is not None:
        labels, idx = _codes(w)
        if any(lab not in OUTCOMES and lab != "" for lab in labels):
            return None  # an unknown winner: the row reader names it
        codes = np.array([OUTCOMES.get(lab, -2) for lab in labels] + [-2], dtype=np.int64)  # [-2]: null
        out = codes[idx]
    todo = out == -2
    if not todo.any():
        return out
    if "score_a" not in table.column_names or "score_b" not in table.column_names:
        return None
    try:
        cols = [pc.cast(table.column(c), "float64").combine_chunks() for c in ("score_a", "score_b")]
    except Exception:  # noqa: BLE001 - pyarrow raises several kinds for text that is not a number
        return None
    sa, sb = (np.where(_valid(c), _values(c, np.float64), np.nan) for c in cols)
    sa, sb = sa[todo], sb[todo]
    if np.isnan(sa).any() or np.isnan(sb).any() or np.isinf(sa).any() or np.isinf(sb).any():
        return None  # missing or non-finite scores: the row reader decides (NaN is 'invalid' there)
    diff = sa - sb
    out[todo] = np.where(np.abs(diff) <= tie_margin, 1, np.where(diff > 0, 0, 2))
    return out
