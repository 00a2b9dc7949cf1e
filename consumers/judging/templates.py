"""Judge prompt templates as data files: the id is the file name, the hash pins the exact text used.

Inserted text cannot close its own block: before a question, answer or reference goes into a template,
every structural marker in it (a block marker like "[System]" or "[The End of Assistant A's Answer]", a
verdict label like "[[A]]" or "[[A>>B]]", any bracketed marker the template itself uses) has its square
brackets replaced by parentheses: "[System]" -> "(System)", "[[A]]" -> "((A))", and so is a "[Turn k]"
label the judge did not add itself. Matching ignores case and the spacing inside the brackets. The rendered prompt then holds each marker exactly as often as the
template does (tests/test_injection.py); docs/judges.md, "Prompt injection".
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

TEMPLATE_DIR = Path(__file__).parent / "templates"

# Block markers of all shipped templates (and the likely variants of them), and the verdict labels the
# parser reads (consumers/judging/policies.py). "[Turn k]" is the conversation's own turn label
# (consumers/judging/model.py): it is neutralised in each turn's text, before the turns are labelled.
_BLOCK = (r"system|question|user\s+question|instruction|reference(?:\s+answer)?|"
          r"the\s+(?:start|end)\s+of\b[^\[\]\n]{0,120}?")
_LABEL = r"\[\[\s*(?:[ABC]|[AB]\s*(?:>>|>|=|<<|<)\s*[AB])\s*\]\]"
_TURN = r"turn\s*\d+"
_MARKERS = re.compile(rf"\[\s*(?:{_BLOCK})\s*\]|{_LABEL}", re.IGNORECASE)
_MARKERS_AND_TURNS = re.compile(rf"\[\s*(?:{_BLOCK}|{_TURN})\s*\]|{_LABEL}", re.IGNORECASE)
# A bracketed marker in a template's text: "[System]", "[[A>>B]]" (placeholders use braces, not brackets).
_TEMPLATE_MARKER = re.compile(r"\[\[?[^\[\]{}\n]+\]\]?")


def _brackets_to_parens(m: re.Match) -> str:
    return m.group(0).replace("[", "(").replace("]", ")")


def neutralise(text: str, extra: re.Pattern | None = None, *, turns: bool = False) -> str:
    """`text` with the square brackets of every structural marker replaced by parentheses. Repeated until
    nothing changes, so a marker hidden inside another ("[The End of [System] Answer]") goes too.
    `extra`: a template's own markers; `turns`: also "[Turn k]" labels."""
    patterns = [_MARKERS_AND_TURNS if turns else _MARKERS] + ([extra] if extra is not None else [])
    for _ in range(16):
        before = text
        for p in patterns:
            text = p.sub(_brackets_to_parens, text)
        if text == before:
            break
    return text


def template_markers(text: str) -> list[str]:
    """The distinct bracketed markers a template's text uses, in order of first appearance."""
    return list(dict.fromkeys(_TEMPLATE_MARKER.findall(text)))


@dataclass(frozen=True)
class Template:
    id: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def needs_reference(self) -> bool:
        return "{reference}" in self.text

    @property
    def markers(self) -> list[str]:
        return template_markers(self.text)

    @cached_property
    def _own_markers(self) -> re.Pattern | None:
        """This template's markers, matched ignoring case and the spacing inside the brackets."""
        def flexible(marker: str) -> str:
            inner = marker.strip("[]").strip()
            opening, closing = marker[:len(marker) - len(marker.lstrip("["))], marker[len(marker.rstrip("]")):]
            words = r"\s+".join(re.escape(w) for w in inner.split())
            return rf"{re.escape(opening)}\s*{words}\s*{re.escape(closing)}"
        ms = self.markers
        return re.compile("|".join(flexible(m) for m in ms), re.IGNORECASE) if ms else None

    def neutralise(self, text: str, *, turns: bool = True) -> str:
        """Inserted text with this template's markers (and every shipped template's) made harmless;
        `turns=False` keeps "[Turn k]" labels (text whose turns the judge labelled itself)."""
        return neutralise(text, self._own_markers, turns=turns)

    def render(self, question: str, answer_1: str = "", answer_2: str = "", reference: str = "", *,
               turn_labels: bool = False) -> str:
        """The prompt, every inserted text neutralised. `turn_labels=True`: the texts' "[Turn k]" labels
        are the judge's own (consumers/judging/model.py conversation(), which neutralised each turn)."""
        def n(text: str) -> str:
            return self.neutralise(text, turns=not turn_labels)
        return self.text.format(question=n(question), answer_1=n(answer_1), answer_2=n(answer_2),
                                reference=n(reference))


def load_template(template_id: str) -> Template:
    path = TEMPLATE_DIR / f"{template_id}.txt"
    if not path.is_file():
        known = sorted(p.stem for p in TEMPLATE_DIR.glob("*.txt"))
        raise KeyError(f"unknown judge template {template_id!r}; known: {', '.join(known)}")
    return Template(template_id, path.read_text())
