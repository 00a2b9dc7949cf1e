"""Readers for the judgment files of two public benchmarks, so `arena leaderboard` rates them as published.

- **AlpacaEval annotations** (`annotations.json`: a JSON list, or JSONL, of objects with `instruction`,
  `output_1`, `output_2`, `generator_1`, `generator_2`, `preference`). `preference` is in [1, 2]: 1 = output_1
  preferred, 2 = output_2 preferred, fractional for the weighted annotators (a preference probability);
  0 is a draw (AlpacaEval reads it as 1.5); null / NaN is no preference and is skipped, as AlpacaEval drops it.
  A record is one battle generator_1 vs generator_2 whose score for generator_1 is 2 - preference.
- **arena-hard-auto judgments** (`model_judgment/<judge>/<model>.jsonl`, a file or a directory of them: one
  line per question with `model`, `question_id` or `uid`, optional `category`, and `games`).
  - Pairwise: two games per question, `score` a label such as "A>>B", "A>B", "A=B", "B>A", "B>>A" (and
    "A<B", "A<<B", "B=A", "B<A", "B<<A"). In game 1 A is the baseline and B the model; in game 2 they are
    swapped. A strong verdict (">>") counts `weight` (3) battles, as arena-hard-auto's show_result does; a line
    with a missing or unknown label in either game is skipped, as show_result drops it. The files do not name
    the baseline, so the caller gives it.
  - Single-answer: numeric `score`s (one grade per answer; the mean over the line's games). Every two models
    graded on the same question make one battle: the higher grade wins, a difference <= tie_margin is a tie.

Bad records stop with one line naming the file and record (InputError), like the battle reader.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import InputError
from .ratings import PairCounts
from .records import read_records
from .style import style_counts

FORMATS = ("battles", "alpacaeval", "arena-hard")
STRONG_WEIGHT = 3  # arena-hard-auto's weight of a strong verdict (A>>B)
# label -> A's score; a strong verdict also counts STRONG_WEIGHT battles
_LABELS = {"A>B": 1.0, "A>>B": 1.0, "A=B": 0.5, "A<B": 0.0, "A<<B": 0.0,
           "B<A": 1.0, "B<<A": 1.0, "B=A": 0.5, "B>A": 0.0, "B>>A": 0.0}


@dataclass
class Scored:
    """Battles with an outcome in [0, 1]: y = model_a's score (fractional for AlpacaEval's weighted
    annotations), each counted n times; the answers' style counts where the format has the answers."""
    kind: str
    a: list[str] = field(default_factory=list)
    b: list[str] = field(default_factory=list)
    y: list[float] = field(default_factory=list)
    n: list[int] = field(default_factory=list)
    category: list[str | None] = field(default_factory=list)
    style_a: list[tuple[int, ...]] = field(default_factory=list)
    style_b: list[tuple[int, ...]] = field(default_factory=list)
    chars: list[tuple[int, int]] = field(default_factory=list)  # characters of the two answers, per battle
    skipped: int = 0  # records without a usable verdict (no preference; a game without a label)

    def add(self, a: str, b: str, y: float, n: int = 1, category: str | None = None,
            style: tuple[tuple[int, ...], tuple[int, ...]] | None = None) -> None:
        self.a.append(a)
        self.b.append(b)
        self.y.append(y)
        self.n.append(n)
        self.category.append(category)
        if style is not None:
            self.style_a.append(style[0])
            self.style_b.append(style[1])

    def keep(self, category: str | None) -> np.ndarray:
        c = np.array(self.category, dtype=object)
        return np.ones(len(self.a), dtype=bool) if category is None else c == category

    def counts(self, category: str | None = None) -> PairCounts:
        counts = PairCounts()
        for k in np.flatnonzero(self.keep(category)):
            counts.add_score(self.a[k], self.b[k], self.y[k], self.n[k])
        return counts

    def standard_errors(self, category: str | None = None) -> dict[str, float | None]:
        """{model: standard error of its win rate}, AlpacaEval's `standard_error`: the sample standard
        deviation (ddof 1) of the model's per-battle scores (its own side: y for model_a, 1 - y for model_b;
        a battle counted n times is n scores) over the square root of their number; None for one battle."""
        scores: dict[str, list[tuple[float, int]]] = {}
        for k in np.flatnonzero(self.keep(category)):
            scores.setdefault(self.a[k], []).append((self.y[k], self.n[k]))
            scores.setdefault(self.b[k], []).append((1.0 - self.y[k], self.n[k]))
        out: dict[str, float | None] = {}
        for m, s in scores.items():
            x = np.repeat([v for v, _ in s], [w for _, w in s])
            out[m] = float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else None
        return out

    def lengths(self, category: str | None = None) -> dict[str, float]:
        """{model: mean characters of its answers} (AlpacaEval's avg_length); empty without answers."""
        if len(self.chars) != len(self.a):
            return {}
        seen: dict[str, list[int]] = {}
        for k in np.flatnonzero(self.keep(category)):
            seen.setdefault(self.a[k], []).append(self.chars[k][0])
            seen.setdefault(self.b[k], []).append(self.chars[k][1])
        return {m: sum(c) / len(c) for m, c in seen.items()}

    def style(self, category: str | None = None) -> tuple[list[str], list[str], np.ndarray, np.ndarray,
                                                          np.ndarray] | None:
        """(model_a, model_b, y, style_a, style_b) per battle (repeated n times) for style control; None
        when the format carries no answers."""
        if len(self.style_a) != len(self.a) or not self.a:
            return None
        k = np.flatnonzero(self.keep(category))
        rep = np.asarray(self.n)[k]
        take = np.repeat(k, rep)
        return ([self.a[i] for i in take], [self.b[i] for i in take], np.asarray(self.y, dtype=float)[take],
                np.asarray(self.style_a, dtype=float)[take], np.asarray(self.style_b, dtype=float)[take])


def _records(path: str, limits) -> Iterator[tuple[str, dict[str, Any]]]:
    p = Path(path)
    files = sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
    if not files:
        raise InputError(f"{path}: a directory without .jsonl judgment files")
    for f in files:
        for rec in read_records(f, limits, name=str(f) if p.is_dir() else path, sniff=True, csv_fallback=False,
                                single_object=True):
            if rec.error:
                raise InputError(f"{rec.source}: {rec.error}")
            yield rec.source, rec.data


def detect(path: str, limits=None) -> str:
    """The format of a battle file ('battles', 'alpacaeval' or 'arena-hard'), from its first record; a
    directory is arena-hard-auto's judgment directory."""
    p = Path(path)
    if path != "-" and p.is_dir():
        return "arena-hard"
    if path == "-" or p.suffix.lower() in (".csv", ".tsv", ".parquet"):
        return "battles"
    records = _records(path, limits)
    try:
        first = next(records, None)
    except InputError:
        return "battles"  # the battle reader reports what is wrong with the file
    finally:
        records.close()
    if isinstance(first, tuple) and isinstance(first[1], dict):
        row = first[1]
        if "preference" in row and "generator_1" in row and "generator_2" in row:
            return "alpacaeval"
        if "games" in row and "model" in row:
            return "arena-hard"
    return "battles"


def _name(row: dict, key: str, where: str) -> str:
    v = row.get(key)
    if not isinstance(v, str) or not v:
        raise InputError(f"{where}: needs {key} (a model name)")
    return v


def read_alpacaeval(path: str, limits=None) -> Scored:
    """AlpacaEval annotations -> battles generator_1 vs generator_2 with score 2 - preference for generator_1."""
    out = Scored("alpacaeval")
    for where, row in _records(path, limits):
        g1, g2 = _name(row, "generator_1", where), _name(row, "generator_2", where)
        if g1 == g2:
            raise InputError(f"{where}: a model cannot battle itself ({g1})")
        p = row.get("preference")
        if p is None or (isinstance(p, float) and math.isnan(p)):
            out.skipped += 1  # no preference: AlpacaEval drops it too
            continue
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not (p == 0 or 1 <= p <= 2):
            raise InputError(f"{where}: preference {p!r:.40} is not in [1, 2] (1: output_1 preferred, "
                             "2: output_2 preferred; 0 or 1.5: a draw)")
        p = 1.5 if p == 0 else float(p)
        o1, o2 = row.get("output_1"), row.get("output_2")
        style = None
        if isinstance(o1, str) and isinstance(o2, str):
            style = (style_counts(o1), style_counts(o2))
            out.chars.append((len(o1), len(o2)))
        cat = row.get("category")
        out.add(g1, g2, 2.0 - p, 1, cat if isinstance(cat, str) else None, style)
    if not out.a:
        raise InputError(f"{path}: no annotation with a preference in it")
    if len(out.style_a) != len(out.a):  # some record without its outputs: no style data nor lengths
        out.style_a, out.style_b, out.chars = [], [], []
    return out


def read_arena_hard(path: str, baseline: str | None, limits=None, tie_margin: float = 0.0,
                    weight: int = STRONG_WEIGHT) -> Scored:
    """arena-hard-auto judgment lines -> battles: pairwise ones against `baseline` (required for them),
    single-answer ones between every two models graded on a question."""
    out = Scored("arena-hard")
    grades: dict[Any, list[tuple[str, float, str | None]]] = {}
    for where, row in _records(path, limits):
        model = _name(row, "model", where).split("/")[-1]  # show_result drops a model path
        games = row.get("games")
        if not isinstance(games, list) or not games:
            raise InputError(f"{where}: needs games (a list of judged games with a score)")
        cat = row.get("category") if isinstance(row.get("category"), str) else None
        scores = [g.get("score") if isinstance(g, dict) else None for g in games]
        numeric = [s for s in scores if isinstance(s, (int, float)) and not isinstance(s, bool)]
        if numeric and len(numeric) == len([s for s in scores if s is not None]):
            q = row.get("question_id", row.get("uid"))
            if isinstance(q, bool) or not isinstance(q, (str, int)):
                raise InputError(f"{where}: a single-answer judgment needs question_id (or uid), a string or "
                                 "an integer")
            if not all(math.isfinite(s) for s in numeric):
                raise InputError(f"{where}: a score must be a finite number")
            grades.setdefault(q, []).append((model, sum(numeric) / len(numeric), cat))
            continue
        if len(games) != 2 and all(sc is None for sc in scores):
            out.skipped += 1  # a single-answer judgment without a grade
            continue
        if len(games) != 2:
            raise InputError(f"{where}: a pairwise judgment needs 2 games (the second with the answers "
                             f"swapped), got {len(games)}")
        if any(s is None or s not in _LABELS for s in scores):
            bad = [s for s in scores if s is not None and not isinstance(s, str)]
            if bad:
                raise InputError(f"{where}: score {bad[0]!r:.40} is neither a label like A>B nor a number")
            out.skipped += 1  # show_result drops a judgment with a game the judge did not label
            continue
        if baseline is None:
            raise InputError(f"{path}: arena-hard-auto's pairwise judgments do not name the baseline they were "
                             "judged against: pass --baseline MODEL (gpt-4-0314 for arena-hard-v0.1)")
        if model == baseline:
            continue  # show_result leaves the baseline's own file out
        for k, s in enumerate(scores):
            y_model = 1.0 - _LABELS[s] if k == 0 else _LABELS[s]  # game 1: A is the baseline; game 2: A is the model
            out.add(baseline, model, 1.0 - y_model, weight if ">>" in s or "<<" in s else 1, cat)
    for q, graded in grades.items():
        graded.sort(key=lambda g: g[0])
        for i, (ma, sa, cat) in enumerate(graded):
            for mb, sb, _ in graded[i + 1:]:
                if ma != mb:
                    out.add(ma, mb, 0.5 if abs(sa - sb) <= tie_margin else float(sa > sb), 1, cat)
    if not out.a:
        raise InputError(f"{path}: no usable judgment in it (every one lacks a labelled game, or only one "
                         "model was graded)")
    return out


def read_judged(path: str, kind: str, *, baseline: str | None = None, limits=None, tie_margin: float = 0.0
                ) -> Scored:
    if kind == "alpacaeval":
        return read_alpacaeval(path, limits)
    if kind == "arena-hard":
        return read_arena_hard(path, baseline, limits, tie_margin)
    raise ValueError(f"unknown judgment format {kind!r}")
