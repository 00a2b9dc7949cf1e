"""Parse the two scores out of a dual-score judge review (WizardArena / Vicuna format).

Real GPT-4 reviews put "8 9" on the first line, but math/coding reviews solve the problem first and state
the scores at the end ("Assistant 1: 8", "scores ... 3 and 7"), so the first line is tried, then the last
explicit per-assistant mention, then the last pair of numbers on a line of its own.
"""
from __future__ import annotations

import re

_NUM = r"(\d+(?:\.\d+)?)"
_PAIR_LINE = re.compile(rf"^\s*\(?\s*{_NUM}\s*(?:/\s*10)?\s*[,\s/]\s*{_NUM}\s*(?:/\s*10)?\s*\)?\s*$")
_PER_ASSISTANT = re.compile(rf"^\W*Assistant\s*([12])\W*(?:score)?\W*:\s*{_NUM}", re.IGNORECASE | re.MULTILINE)
_TUPLE = re.compile(rf"\(\s*{_NUM}\s*,\s*{_NUM}\s*\)")


def _ok(a: float, b: float) -> bool:
    return 0 <= a <= 10 and 0 <= b <= 10


def parse_scores(text: str) -> tuple[float, float] | None:
    """Return (score of answer 1, score of answer 2), or None when the text states no scores."""
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    if not lines:
        return None
    m = _PAIR_LINE.match(lines[0])
    if m and _ok(float(m[1]), float(m[2])):
        return float(m[1]), float(m[2])
    # Stated at the end: take the last score given for each assistant.
    found: dict[str, float] = {}
    for m in _PER_ASSISTANT.finditer(text):
        v = float(m[2])
        if 0 <= v <= 10:
            found[m[1]] = v
    if len(found) == 2:
        return found["1"], found["2"]
    # "The tuple ... is (1, 3)"; last one, since problems quote coordinates like (10, 4) earlier.
    tuples = [(float(m[1]), float(m[2])) for m in _TUPLE.finditer(text)]
    tuples = [t for t in tuples if _ok(*t)]
    if tuples:
        return tuples[-1]
    for ln in reversed(lines):
        m = _PAIR_LINE.match(ln)
        if m and _ok(float(m[1]), float(m[2])):
            return float(m[1]), float(m[2])
    return None
