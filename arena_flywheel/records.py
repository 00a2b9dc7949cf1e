"""The one reader of record files from outside: JSONL, a JSON document (a list of records, or an object that
holds one), CSV/TSV with a header, and stdin.

Each record comes out as a `Record`: its location (`file:line` for JSONL and CSV, `file[i]` for the items of
a JSON list), its raw bytes, and the parsed object or the one-line reason it is unusable. A bad record is
that record's problem only (invalid JSON or UTF-8, a line over `limits.max_record_bytes`, nesting deeper
than `limits.max_depth`, an integer longer than `limits.max_int_digits`, NaN/Infinity, a row that is not an
object): the caller dead-letters it or reports it, and the records after it are still read. A problem of
the whole file (missing, a directory, a JSON document whose structure is broken, a CSV header without the
columns the caller needs, an unknown format) is one `InputError` with a one-line fix.

Files are read in binary, line by line, with each line's read bounded: a 20 MB line is never held whole
(the record keeps its first `limits.dead_letter_excerpt_bytes` bytes), and invalid UTF-8 in one line does
not stop the file. A JSON list is split into its items by a scan that only counts brackets outside strings,
and each item is parsed on its own, so a hostile item is one bad record among good ones.
"""
from __future__ import annotations

import csv
import io
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

from .config import LimitsConfig, limits_of
from .errors import InputError
from .safejson import JSONLimitError, depth, loads

BOM = b"\xef\xbb\xbf"
JSONL_SUFFIXES = (".jsonl", ".ndjson")
CSV_SUFFIXES = {".csv": ",", ".tsv": "\t"}
_STRUCT = re.compile(rb'["\[\]{},]')
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_FIX = "fix the JSON, or write it as JSONL (one record a line) so that one bad record does not spoil the file"


@dataclass
class Record:
    """One input record: where it came from, its raw bytes, and the parsed object or why not."""
    source: str
    raw: bytes
    data: Any = None
    error: str | None = None
    file: str = ""
    line: int | None = None
    index: int | None = None


class _Broken(Exception):
    """A JSON document whose structure is broken (caught here; callers see InputError)."""



def too_big(size: int, lim: LimitsConfig) -> str:
    return f"a record of {size:,} bytes (limit {lim.max_record_bytes:,}, limits.max_record_bytes)"


def _type_name(v: Any) -> str:
    return "null" if v is None else type(v).__name__


# ------------------------------------------------------------------------------------------- one record
def json_record(source: str, raw: bytes, limits: Any = None, *, size: int | None = None, objects_only: bool = True,
                file: str = "", line: int | None = None, index: int | None = None) -> Record:
    """Parse one record's bytes within the limits; never raises (the Record carries the error)."""
    lim = limits_of(limits)
    where = {"file": file, "line": line, "index": index}
    size = len(raw) if size is None else size
    if size > lim.max_record_bytes:
        return Record(source, bytes(raw[:lim.dead_letter_excerpt_bytes]), error=too_big(size, lim), **where)
    try:
        data = loads(raw, max_bytes=lim.max_record_bytes, max_depth=lim.max_depth,
                     max_int_digits=lim.max_int_digits)
    except JSONLimitError as exc:
        return Record(source, raw, error=str(exc), **where)
    if objects_only and not isinstance(data, dict):
        return Record(source, raw, error=f"expected a JSON object, got {_type_name(data)}", **where)
    return Record(source, raw, data, **where)


def _lines(stream: BinaryIO, max_bytes: int, excerpt: int) -> Iterator[tuple[int, bytes, int]]:
    """(line number, bytes without the line end, size) of each line; an oversized line is read in bounded
    pieces and comes back as its first `excerpt` bytes with its full size."""
    n = 0
    while True:
        line = stream.readline(max_bytes + 3)
        if not line:
            return
        n += 1
        if n == 1 and line.startswith(BOM):
            line = line[len(BOM):]
        if line.endswith(b"\n") or len(line) <= max_bytes:
            body = line.rstrip(b"\r\n")
            yield n, body, len(body)
            continue
        size, head = len(line), line[:excerpt]
        while not line.endswith(b"\n"):
            line = stream.readline(1 << 20)
            if not line:
                break
            size += len(line)
        yield n, head, size - (len(line) - len(line.rstrip(b"\r\n")))


def read_jsonl(stream: BinaryIO, name: str, limits: Any = None, *, objects_only: bool = True) -> Iterator[Record]:
    """One record a line; blank lines are skipped."""
    lim = limits_of(limits)
    for n, body, size in _lines(stream, lim.max_record_bytes, lim.dead_letter_excerpt_bytes):
        if size <= lim.max_record_bytes and not body.strip():
            continue
        yield json_record(f"{name}:{n}", body, lim, size=size, objects_only=objects_only, file=name, line=n)


# ------------------------------------------------------------------------------------------- JSON documents
def _structure(buf: bytes, pos: int) -> Iterator[tuple[int, int]]:
    """(offset, byte) of each bracket, brace and comma outside strings, from `pos`."""
    while True:
        m = _STRUCT.search(buf, pos)
        if m is None:
            return
        i = m.start()
        if buf[i] == 0x22:  # a string: skip it whole
            s = _STRING.match(buf, i)
            if s is None:
                raise _Broken(f"a string opened at byte {i} is not closed")
            pos = s.end()
            continue
        yield i, buf[i]
        pos = i + 1


def _list_items(buf: bytes, start: int) -> list[tuple[int, int]]:
    """Byte spans of the items of the JSON list that opens at buf[start]."""
    spans: list[tuple[int, int]] = []
    level, item = 0, start + 1
    for i, ch in _structure(buf, start + 1):
        if ch in b"[{":
            level += 1
        elif ch in b"]}":
            if level:
                level -= 1
                continue
            if ch != 0x5D:
                raise _Broken(f"a '}}' at byte {i} closes nothing")
            if spans or buf[item:i].strip():
                spans.append((item, i))
            if buf[i + 1:].strip():
                raise _Broken(f"more data after the list's closing ']' at byte {i}")
            return spans
        elif level == 0:  # a comma between items
            spans.append((item, i))
            item = i + 1
    raise _Broken("the list is not closed (the file ends inside it)")


def _max_level(buf: bytes, limit: int) -> None:
    level = 0
    for i, ch in _structure(buf, 0):
        if ch in b"[{":
            level += 1
            if level > limit:
                raise _Broken(f"nested deeper than {limit} levels")
        elif ch in b"]}":
            level -= 1


def _document(buf: bytes, name: str, lim: LimitsConfig, *, unwrap: Iterable[str], single_object: bool,
              objects_only: bool) -> Iterator[Record]:
    """Records of a JSON document: a list (each item parsed on its own), or an object holding a list under one
    of `unwrap` (or, with `single_object`, one record). Raises _Broken before yielding anything."""
    text_start = len(buf) - len(buf.lstrip())
    if text_start == len(buf):
        return  # an empty file: no records
    if buf[text_start:text_start + 1] == b"[":
        spans = _list_items(buf, text_start)
        for i, (s, e) in enumerate(spans):
            raw = buf[s:e].strip()
            if not raw:
                yield Record(f"{name}[{i}]", b"", error="an empty item (a stray comma?)", file=name, index=i)
            else:
                yield json_record(f"{name}[{i}]", raw, lim, objects_only=objects_only, file=name, index=i)
        return
    _max_level(buf, lim.max_depth + 2)  # bounded before the parser recurses; items are checked below
    try:
        data = loads(buf, max_depth=1 << 30, max_int_digits=lim.max_int_digits)
    except JSONLimitError as exc:
        raise _Broken(str(exc)) from None
    keys = tuple(unwrap)
    if isinstance(data, dict):
        items = next((data[k] for k in keys if isinstance(data.get(k), list)), None)
        if items is None:
            if not single_object:
                wanted = " or ".join(f'{{"{k}": [...]}}' for k in keys) or "a list"
                raise InputError(f"{name}: a JSON document must be a list of records or {wanted}")
            items = [data]
    else:
        raise InputError(f"{name}: a JSON document must be a list of records, not {_type_name(data)}")
    for i, item in enumerate(items):
        yield item_record(f"{name}[{i}]", item, lim, objects_only=objects_only, file=name, index=i)


def item_record(source: str, item: Any, limits: Any = None, *, objects_only: bool = True, default=None,
                file: str = "", line: int | None = None, index: int | None = None) -> Record:
    """A record already parsed (an item of a JSON document, a Parquet or datasets row) checked against the
    same limits as a parsed line: its size as JSON, its nesting, and (objects_only) that it is an object."""
    lim = limits_of(limits)
    raw = json.dumps(item, ensure_ascii=False, default=default).encode("utf-8")
    error = None
    if len(raw) > lim.max_record_bytes:
        error, raw = too_big(len(raw), lim), raw[:lim.dead_letter_excerpt_bytes]
    elif depth(item) > lim.max_depth:
        error = f"nested deeper than {lim.max_depth} levels"
    elif objects_only and not isinstance(item, dict):
        error = f"expected a JSON object, got {_type_name(item)}"
    return Record(source, raw, None if error else item, error, file=file, line=line, index=index)


# ------------------------------------------------------------------------------------------- CSV
def read_csv(stream: BinaryIO, name: str, limits: Any = None, *, delimiter: str = ",",
             need_columns: Iterable[str] = (), columns_what: str = "", json_cells: bool = False) -> Iterator[Record]:
    """Rows of a CSV with a header line, as {column: cell} without the empty cells. A row with invalid UTF-8,
    an oversized line or broken quoting is a bad record; a header without any of `need_columns` (when
    given) is an InputError. With `json_cells`, a cell that starts with [ or { and parses as JSON is
    replaced by its value (list and object columns such as turns and messages)."""
    lim = limits_of(limits)
    if csv.field_size_limit() < lim.max_record_bytes:
        csv.field_size_limit(lim.max_record_bytes)
    raws: dict[int, bytes] = {}
    bad: dict[int, str] = {}

    def text() -> Iterator[str]:
        for n, body, size in _lines(stream, lim.max_record_bytes, lim.dead_letter_excerpt_bytes):
            raws[n] = body
            if size > lim.max_record_bytes:
                bad[n] = f"a line of {size:,} bytes (limit {lim.max_record_bytes:,}, limits.max_record_bytes)"
                yield "\n"
                continue
            try:
                yield body.decode("utf-8") + "\n"
            except UnicodeDecodeError as exc:
                bad[n] = f"invalid UTF-8 at byte {exc.start} of line {n}"
                yield body.decode("utf-8", errors="replace") + "\n"

    reader = csv.reader(text(), delimiter=delimiter)
    header: list[str] = []
    while not header:
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise InputError(f"{name}:{reader.line_num}: the CSV header cannot be read ({exc})") from None
        if bad:
            raise InputError(f"{name}:{reader.line_num}: the CSV header has {next(iter(bad.values()))}; "
                             "save the file as UTF-8 with a header line") from None
    header = [h.strip() for h in header]
    need = set(need_columns)
    if need and not need & set(header):
        shown = ", ".join(" ".join(h.split())[:40] for h in header[:8]) + (", ..." if len(header) > 8 else "")
        raise InputError(f"{name}: no CSV header with {columns_what or ', '.join(sorted(need))} "
                         f"(line {reader.line_num} has: {shown}); add a header line that names the columns")
    while True:
        first = reader.line_num + 1
        error = None
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            cells, error = [], f"invalid CSV: {exc}"
        span = range(first, reader.line_num + 1)
        raw = b"\n".join(raws.pop(k) for k in span if k in raws)
        reasons = [bad.pop(k) for k in span if k in bad]
        if not cells and not reasons and error is None:
            continue  # a blank line
        error = reasons[0] if reasons else error
        if error is None and len(raw) > lim.max_record_bytes:
            error = too_big(len(raw), lim)
        where = f"{name}:{first}"
        if error is None:
            row: dict[str, Any] = {k: v for k, v in zip(header, cells) if v != ""}
            if json_cells:
                error = _json_cells(row, lim)
            if error is None:
                yield Record(where, raw, row, file=name, line=first)
                continue
        yield Record(where, raw[:lim.dead_letter_excerpt_bytes] if len(raw) > lim.max_record_bytes else raw,
                     error=error, file=name, line=first)


def _json_cells(row: dict[str, Any], lim: LimitsConfig) -> str | None:
    for k, v in row.items():
        s = v.strip()
        if s[:1] in ("[", "{"):
            try:
                row[k] = loads(s, max_bytes=lim.max_record_bytes, max_depth=lim.max_depth,
                               max_int_digits=lim.max_int_digits)
            except JSONLimitError as exc:
                if not str(exc).startswith("invalid JSON"):  # text that merely looks like JSON stays text
                    return f"column {k}: {exc}"
    return None


# ------------------------------------------------------------------------------------------- files
def _first_byte(stream) -> bytes:
    return stream.peek(4096)[:4096].lstrip(b" \t\r\n" + BOM)[:1]


def read_records(path: str | Path, limits: Any = None, *, name: str | None = None, sniff: bool = False,
                 csv_fallback: bool = True, objects_only: bool = True, unwrap: Iterable[str] = ("data",),
                 single_object: bool = False, need_columns: Iterable[str] = (), columns_what: str = "",
                 json_cells: bool = False) -> Iterator[Record]:
    """Records of a file or of '-' (stdin).

    The format comes from the suffix: .jsonl/.ndjson, .json (a document; a .json file holding JSONL is read
    as JSONL), .csv/.tsv; stdin is JSONL. With `sniff`, the content decides for anything but .csv/.tsv:
    '[' (or a .json suffix) is a JSON document, '{' is JSONL, and anything else is CSV (`csv_fallback`) or
    JSONL. The first next() raises InputError for a problem of the whole file, before any record."""
    lim = limits_of(limits)
    if str(path) == "-":
        stream = sys.stdin.buffer
        if not hasattr(stream, "peek"):
            stream = io.BufferedReader(stream)
        yield from _dispatch(stream, name or "stdin", "", lim, sniff=sniff, csv_fallback=csv_fallback,
                             objects_only=objects_only, unwrap=unwrap, single_object=single_object,
                             need_columns=need_columns, columns_what=columns_what, json_cells=json_cells)
        return
    p = Path(path)
    if not p.exists():
        raise InputError(f"{path}: no such file or directory")
    if p.is_dir():
        raise InputError(f"{path}: a directory, not a file of records")
    suffix = p.suffix.lower()
    if not sniff and suffix not in (*JSONL_SUFFIXES, ".json", *CSV_SUFFIXES):
        raise InputError(f"{path}: unknown format {suffix or '(no suffix)'}; use .jsonl, .json or .csv")
    try:
        f = p.open("rb")
    except OSError as exc:
        raise InputError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    with f:
        yield from _dispatch(f, name or p.name, suffix, lim, sniff=sniff, csv_fallback=csv_fallback,
                             objects_only=objects_only, unwrap=unwrap, single_object=single_object,
                             need_columns=need_columns, columns_what=columns_what, json_cells=json_cells)


def _dispatch(stream, name: str, suffix: str, lim: LimitsConfig, *, sniff: bool, csv_fallback: bool,
              objects_only: bool, unwrap: Iterable[str], single_object: bool, need_columns: Iterable[str],
              columns_what: str, json_cells: bool) -> Iterator[Record]:
    if suffix in CSV_SUFFIXES:
        fmt = "csv"
    elif sniff:
        first = _first_byte(stream)
        fmt = ("json" if first == b"[" or suffix == ".json" else "jsonl" if first in (b"{", b"")
               else "csv" if csv_fallback else "jsonl")
    else:
        fmt = "json" if suffix == ".json" else "jsonl"
    if fmt == "csv":
        yield from read_csv(stream, name, lim, delimiter=CSV_SUFFIXES.get(suffix, ","), need_columns=need_columns,
                            columns_what=columns_what, json_cells=json_cells)
    elif fmt == "jsonl":
        yield from read_jsonl(stream, name, lim, objects_only=objects_only)
    else:
        buf = stream.read()
        if buf.startswith(BOM):
            buf = buf[len(BOM):]
        try:
            records = _document(buf, name, lim, unwrap=unwrap, single_object=single_object,
                                objects_only=objects_only)
            first_rec = next(records, None)
        except _Broken as exc:
            if "Extra data" in str(exc) or "more data after" in str(exc):
                # JSONL under a .json name: line by line, so a bad line is one bad record
                yield from read_jsonl(io.BytesIO(buf), name, lim, objects_only=objects_only)
                return
            raise InputError(f"{name}: not a valid JSON document ({exc}); {_FIX}") from None
        if first_rec is not None:
            yield first_rec
            yield from records
