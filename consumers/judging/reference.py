"""Reference judge (backend "reference", no model): scores answers against the instruction's reference.

Each answer is scored against the instruction's reference on its own, so the score cannot depend on
the position it was shown in; the raw text uses the dual-score format so the same parser reads it.
"""
from __future__ import annotations

import difflib
import re

from arena_flywheel.events import Battle
from consumers.judging.protocol import references

_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


def _norm(s: str) -> str:
    return " ".join(re.sub(r"[^\w\s.-]", " ", s.lower()).split()).strip(" .")


def _last_number(s: str) -> float | None:
    nums = _NUMBER.findall(s)
    return float(nums[-1].replace(",", "")) if nums else None


def reference_score(answer: str, refs: list[str]) -> float:
    """1-10: 10 for a normalised exact match, 9 when the final number matches a numeric reference,
    else 1 + 8 * best difflib ratio (rounded to one decimal)."""
    best = 1.0
    for ref in refs:
        if _norm(answer) == _norm(ref):
            return 10.0
        r_num, a_num = _last_number(ref), _last_number(answer)
        if r_num is not None and _NUMBER.fullmatch(_norm(ref).replace(" ", "")) and a_num == r_num:
            best = max(best, 9.0)
        ratio = difflib.SequenceMatcher(None, _norm(answer), _norm(ref)).ratio()
        best = max(best, round(1 + 8 * ratio, 1))
    return best


def reference_judge(battle: Battle, first: str, second: str) -> str:
    """Judge text for one game: first and second are the answers in the order shown."""
    refs = references(battle)
    if not refs:
        return "The instruction has no reference answer; the reference judge cannot score it."
    s1, s2 = reference_score(first, refs), reference_score(second, refs)
    return f"{s1:g} {s2:g}\nScores by closeness to the reference answer (exact, numeric, else similarity)."
