"""Replay of recorded judgments (`judge.backend = "replay"`): published judge outputs judge the arena again.

A recorded judgment is the judge's text for one game: a pair of answers shown in one order. It replays
only for the very same answers in the very same order, so recordings are keyed by the answers' text
(each side's turns, whitespace-normalised) in the order shown; a battle whose answers differ from the
recorded ones, or whose order was never recorded, gets a game with an error (an `invalid` verdict,
counted), never a guessed outcome. The text is parsed exactly as live judge text is.

Formats (a file, or a folder searched recursively for *.jsonl):
- FastChat vicuna-eval reviews: {"question_id", "answer1_id", "answer2_id", "reviewer_id", "text"}; the
  answer ids are resolved in the answer files (answer_id, model_id, text). One order per pair (answer 1
  shown first), so these replay as one game per battle (`judge.games = 1`); with two games the other
  order has no recording and the verdict is invalid.
- FastChat MT-bench pairwise judgments: {"question_id", "model_1", "model_2", "g1_judgment",
  "g2_judgment", "judge", "turn"}; g1 shows model_1 first, g2 shows model_2 first: both orders, so the
  two-game protocol replays in full. Answers are resolved by (question_id, model) in the model_answer
  files ({"question_id", "model_id", "choices": [{"turns": [...]}]}; file name = model); turn 2 judges the
  whole two-turn conversation.
The answer files are looked up in `judge.recorded_answers`, else in an `answer/` or `model_answer/`
folder beside the recordings or up to two levels above them (the layouts FastChat publishes).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from arena_flywheel.events import Battle, Game
from consumers.backends.replay_backend import normalize_text, parse_record, read_records

from .policies import parse_preference
from .protocol import BOTH, one_order, score_game, shown


class RecordingError(ValueError):
    """Recorded judgments that cannot be used; the message says what to fix (one line)."""


@dataclass(frozen=True)
class Recording:
    raw: str
    judge: str  # who judged, as recorded (e.g. "gpt-4-0328-generic", "gpt-4/pair-v2")
    source: str  # file:line, for the reader of a verdict


def answers_key(first: list[str], second: list[str]) -> str:
    def side(turns):
        return "\x1e".join(normalize_text(t) for t in turns)
    return hashlib.sha256(f"{side(first)}\x1d{side(second)}".encode()).hexdigest()


def _files(p: Path) -> list[Path]:
    return sorted(p.rglob("*.jsonl")) if p.is_dir() else [p]


class RecordedJudgments:
    """Recorded games keyed by the answers shown first and second."""

    def __init__(self, path: str, answers: str | None = None):
        p = Path(path)
        if not path or not p.exists():
            raise RecordingError(f"recorded judgments {path!r} not found: set judge.model to a FastChat review or "
                                 "MT-bench judgment file (or a folder of them)")
        self.path = str(p)
        self.games: dict[str, Recording] = {}
        self.judges: set[str] = set()
        self.kinds = {"scores": 0, "labels": 0}
        self.unresolved = 0  # recorded games whose answers were not found in the answer files
        self.conflicts = 0  # the same answers in the same order recorded twice with different text
        self._swapped: dict[str, str] = {}  # key of a recorded game -> key of the same answers swapped
        files = _files(p)
        digest = hashlib.sha256()
        records = []
        for f in files:
            digest.update(f.read_bytes())
            records.extend((f, i, rec) for i, rec in read_records(f) if _kind(rec))
        self.sha256 = digest.hexdigest()
        if not records:
            raise RecordingError(f"no recorded judgments in {path!r}: expected FastChat vicuna-eval reviews "
                                 "(answer1_id, answer2_id, text) or MT-bench pairwise judgments (model_1, model_2, "
                                 "g1_judgment, g2_judgment)")
        by_id, by_model = _load_answers(_answer_dir(files[0], answers))
        for f, i, rec in records:
            src = f"{f.name}:{i}"
            if _kind(rec) == "review":
                a1, a2 = by_id.get(str(rec["answer1_id"])), by_id.get(str(rec["answer2_id"]))
                judge = str(rec.get("reviewer_id", ""))
                self._add(a1 and a1[:1], a2 and a2[:1], rec.get("text"), judge, src)
            else:
                qid, turn = str(rec.get("question_id", rec.get("id"))), int(rec.get("turn") or 1)
                m1, m2 = by_model.get((qid, str(rec["model_1"]))), by_model.get((qid, str(rec["model_2"])))
                judge = "/".join(str(x) for x in rec["judge"]) if isinstance(rec.get("judge"), list) else \
                    str(rec.get("judge", ""))
                t1, t2 = m1 and m1[:turn], m2 and m2[:turn]
                self._add(t1, t2, rec.get("g1_judgment"), judge, src + ":g1")
                self._add(t2, t1, rec.get("g2_judgment"), judge, src + ":g2")
        if not self.games:
            raise RecordingError(f"{path!r}: none of the {len(records)} recorded judgments could be matched to "
                                 "their answers; set judge.recorded_answers to the folder of the answer files")

    def _add(self, first, second, raw, judge: str, src: str) -> None:
        if not first or not second or not isinstance(raw, str):
            self.unresolved += 1
            return
        key = answers_key(first, second)
        old = self.games.get(key)
        if old is not None and old.raw != raw:
            self.conflicts += 1  # keep the first: a replay must not depend on which file was read last
            return
        self.games[key] = Recording(raw, judge, src)
        self._swapped[key] = answers_key(second, first)
        self.judges.add(judge)
        self.kinds["labels" if parse_preference(raw) else "scores"] += 1

    def single_order(self) -> int:
        """Recorded games whose swapped order has no recording (they cannot be replayed in two games)."""
        return sum(1 for swapped in self._swapped.values() if swapped not in self.games)

    def lookup(self, battle: Battle, order: str) -> Recording | None:
        return self.games.get(answers_key(*shown(battle, order)))


def _kind(rec: dict) -> str | None:
    if "answer1_id" in rec and "answer2_id" in rec and "text" in rec:
        return "review"
    if {"model_1", "model_2", "g1_judgment", "g2_judgment"} <= rec.keys():
        return "pair"
    return None


def _answer_dir(first_file: Path, configured: str | None) -> Path | None:
    if configured:
        d = Path(configured)
        if not d.exists():
            raise RecordingError(f"judge.recorded_answers {configured!r} not found: give the folder of the "
                                 "answer files the recorded judgments refer to")
        return d
    here = first_file.parent
    for d in (here, here.parent, here.parent.parent):
        for name in ("answer", "model_answer"):
            if (d / name).is_dir():
                return d / name
    return None


def _load_answers(d: Path | None) -> tuple[dict[str, list[str]], dict[tuple[str, str], list[str]]]:
    """answer_id -> turns, and (question_id, model) -> turns, from FastChat answer files."""
    by_id: dict[str, list[str]] = {}
    by_model: dict[tuple[str, str], list[str]] = {}
    if d is None:
        return by_id, by_model
    for f in _files(d):
        for _, rec in read_records(f):
            parsed = parse_record(rec)  # the replay generation backend's reader: same formats
            if parsed is None:
                continue
            turns = parsed[1].turns
            if rec.get("answer_id") is not None:
                by_id[str(rec["answer_id"])] = turns
            qid = rec.get("question_id")
            if qid is not None:
                for model in {str(rec.get("model_id") or ""), f.stem} - {""}:
                    by_model.setdefault((str(qid), model), turns)
    return by_id, by_model


class ReplayJudge:
    """Plays a battle's games from recordings, as ModelJudge plays them with a model."""

    def __init__(self, recordings: RecordedJudgments, games: int = 2):
        self.rec = recordings
        self.n_games = games

    def _battle_games(self, battle: Battle) -> list[Game]:
        found = {o: self.rec.lookup(battle, o) for o in BOTH}  # each key hashes both answers: once per order
        if self.n_games == 2:
            orders = BOTH
        else:  # single-order recordings decide the order; otherwise the protocol's stable pick
            recorded = [o for o in BOTH if found[o]]
            orders = (recorded[0],) if len(recorded) == 1 else (one_order(battle.id),)
        return [self._game(battle, o, found[o]) for o in orders]

    @staticmethod
    def _game(battle: Battle, order: str, r: Recording | None) -> Game:
        if r is None:
            first = battle.a.model if order == "ab" else battle.b.model
            return Game(order=order, error=f"no recorded judgment of these answers with {first}'s shown first")
        label = parse_preference(r.raw)
        if label is not None:
            return Game(order=order, raw=r.raw, preference=label)
        game = score_game(order, r.raw)
        return game.model_copy(update={"error": "unparseable recorded judgment"}) if game.error else game

    def games(self, battles: list[Battle]) -> list[list[Game]]:
        return [self._battle_games(b) for b in battles]

    def close(self) -> None:
        pass
