"""Style counts of an answer (length and markdown), the covariates of style-controlled ratings.

The features arena-hard-auto keeps per answer (`token_len`, `header_count`, `list_count`, `bold_count`),
counted here without a tokenizer: length is whitespace-separated words, so a style-controlled board does not
depend on which tokenizer a judge used (docs/ratings.md).
"""
from __future__ import annotations

import re

STYLE_FIELDS = ("len", "header_count", "list_count", "bold_count")

_HEADER = re.compile(r"^#{1,6}\s", re.M)
_LIST = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s", re.M)
_BOLD = re.compile(r"\*\*[^*\n]+\*\*|__[^_\n]+__")


def style_counts(text: str) -> tuple[int, int, int, int]:
    """(words, markdown headers, list items, bold spans) of one answer."""
    return len(text.split()), len(_HEADER.findall(text)), len(_LIST.findall(text)), len(_BOLD.findall(text))


def answer_counts(answers: list[str]) -> tuple[int, ...]:
    """Style counts of a multi-turn answer: the sums over its turns."""
    per_turn = [style_counts(a) for a in answers if isinstance(a, str)]
    return tuple(sum(c[k] for c in per_turn) for k in range(len(STYLE_FIELDS)))
