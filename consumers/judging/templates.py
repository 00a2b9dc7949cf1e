"""Judge prompt templates as data files: the id is the file name, the hash pins the exact text used."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

TEMPLATE_DIR = Path(__file__).parent / "templates"


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

    def render(self, question: str, answer_1: str, answer_2: str, reference: str = "") -> str:
        return self.text.format(question=question, answer_1=answer_1, answer_2=answer_2, reference=reference)


def load_template(template_id: str) -> Template:
    path = TEMPLATE_DIR / f"{template_id}.txt"
    if not path.is_file():
        known = sorted(p.stem for p in TEMPLATE_DIR.glob("*.txt"))
        raise KeyError(f"unknown judge template {template_id!r}; known: {', '.join(known)}")
    return Template(template_id, path.read_text())
