"""JSON parsing with limits, for anything that reads records from outside (Kafka values, input files).

The standard parser fails on hostile input in ways that are not `JSONDecodeError`: a 5,000-digit integer
raises ValueError (Python's int-digits guard), deep nesting raises RecursionError, `NaN` and `1e999`
parse to floats that break arithmetic and PostgreSQL. `loads` turns every one of them, and size limits,
into `JSONLimitError` with a one-line reason, so a caller has exactly one exception to dead-letter.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

# Only text that could hold a too-long integer or an overflowing exponent pays for the per-number hooks.
_BIG_EXP = re.compile(r"[eE][+-]?\d{3,}")


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
    if isinstance(raw, (bytes, bytearray)):
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JSONLimitError(f"invalid UTF-8 at byte {exc.start}") from None
    else:
        text = raw
    # Nesting is bounded before parsing when the brackets could exceed it (the parser recurses).
    if text.count("[") + text.count("{") > max_depth:
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
    careful = re.search(r"\d{%d,}" % (max_int_digits + 1), text) is not None or _BIG_EXP.search(text) is not None
    try:
        if not careful:
            return json.loads(text, parse_constant=_constant)
        return json.loads(text, parse_int=_int(max_int_digits), parse_float=_float, parse_constant=_constant)
    except JSONLimitError:
        raise
    except json.JSONDecodeError as exc:
        raise JSONLimitError(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:  # e.g. Python's own int-digits guard
        raise JSONLimitError(f"invalid JSON: {str(exc).splitlines()[0][:200]}") from None
