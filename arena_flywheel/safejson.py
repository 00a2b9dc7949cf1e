"""JSON parsing with limits, for anything that reads records from outside (Kafka values, input files).

The standard parser fails on hostile input in ways that are not `JSONDecodeError`: a 5,000-digit integer
raises ValueError (Python's int-digits guard), deep nesting raises RecursionError, `NaN` and `1e999`
parse to floats that break arithmetic and PostgreSQL. `loads` turns every one of them, and size limits,
into `JSONLimitError` with a one-line reason, so a caller has exactly one exception to dead-letter.
"""
from __future__ import annotations

import functools
import json
import math
from typing import Any

import pydantic_core


class JSONLimitError(ValueError):
    """The text is not JSON this system accepts; the message says why in one line."""


def _int(max_digits: int):
    def parse(s: str) -> int:
        if len(s.lstrip("-")) > max_digits:
            raise JSONLimitError(f"an integer of {len(s.lstrip('-'))} digits (limit {max_digits})")
        return int(s)
    return parse


def _float(s: str) -> float:
    v = float(s)
    if not math.isfinite(v):
        raise JSONLimitError(f"a number out of range ({s[:40]})")
    return v


def _constant(s: str):
    raise JSONLimitError(f"{s} is not a JSON number")


# Digits -> 0 and E -> e, so that byte-string searches find what only the careful decoder may parse: a run of
# more digits than the limit (an integer over it), or a digit, e, an optional +, and three digits or more (an
# exponent that may overflow to infinity). Text inside strings can match too; it then just takes that path.
_NUMBER_BYTES = bytes.maketrans(b"123456789E", b"000000000e")


def _may_need_hooks(data: bytes, max_int_digits: int) -> bool:
    t = data.translate(_NUMBER_BYTES)
    return b"0" * (max_int_digits + 1) in t or b"0e000" in t or b"0e+000" in t


@functools.lru_cache(maxsize=8)
def _decoder(max_int_digits: int) -> json.JSONDecoder:
    """The standard decoder with the number hooks, for one digit limit, built once (json.loads with hooks
    builds a decoder on every call)."""
    return json.JSONDecoder(parse_int=_int(max_int_digits), parse_float=_float, parse_constant=_constant)


def depth(value: Any) -> int:
    """Nesting depth of a parsed value (a scalar is 0, [] and {} are 1)."""
    best, stack = 0, [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
            best = max(best, d + 1)
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
            best = max(best, d + 1)
    return best


def _text(raw: str | bytes | bytearray) -> str:
    """The text of a record; JSONLimitError for bytes that are not UTF-8."""
    if isinstance(raw, str):
        return raw
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JSONLimitError(f"invalid UTF-8 at byte {exc.start}") from None


def _check_depth(text: str, max_depth: int) -> None:
    """JSONLimitError when the text nests deeper than max_depth (brackets inside strings do not count)."""
    d = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            d += 1
            if d > max_depth:
                raise JSONLimitError(f"nested deeper than {max_depth} levels")
        elif ch in "]}":
            d -= 1


def loads(raw: str | bytes | bytearray | None, *, max_bytes: int | None = None, max_depth: int = 32,
          max_int_digits: int = 64) -> Any:
    """Parse one JSON text within the limits; JSONLimitError (a ValueError) for anything else."""
    if raw is None:
        raise JSONLimitError("an empty (null) record")
    if not isinstance(raw, (str, bytes, bytearray)):
        raise JSONLimitError(f"a record of type {type(raw).__name__}, not bytes")
    size = len(raw)
    if max_bytes is not None and size > max_bytes:
        raise JSONLimitError(f"a record of {size:,} bytes (limit {max_bytes:,})")
    data = bytes(raw) if isinstance(raw, (bytes, bytearray)) else raw.encode("utf-8", "surrogatepass")
    # Nesting is bounded before parsing when the brackets could exceed it (the parser recurses).
    if data.count(b"[") + data.count(b"{") > max_depth:
        _check_depth(_text(raw), max_depth)
    # pydantic's parser (pydantic_core, installed with pydantic) is about twice as fast as the standard one,
    # refuses NaN, Infinity and invalid UTF-8, and gives the same values for every text both accept. It
    # refuses what the standard parser accepts in one case (a lone surrogate escape, which the text rule
    # later removes), so any text it refuses, and text that needs the number hooks, goes to the standard
    # parser, which decides and words the reason as before.
    if not _may_need_hooks(data, max_int_digits):
        try:
            return pydantic_core.from_json(data, allow_inf_nan=False)
        except ValueError:
            pass
    text = _text(raw)
    try:
        return _decoder(max_int_digits).decode(text)
    except JSONLimitError:
        raise
    except json.JSONDecodeError as exc:
        raise JSONLimitError(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:  # e.g. Python's own int-digits guard
        raise JSONLimitError(f"invalid JSON: {str(exc).splitlines()[0][:200]}") from None
