"""Replay backend: answers recorded in files, so published model outputs can enter the arena.

Formats (one file, or a directory of them; detected per record):
- FastChat answer JSONL (vicuna eval / MT-Bench): {"question_id", "text"} or {"question_id", "choices": [{"turns": [...]}]}
- arena-hard model_answer JSONL: {"uid", "messages": [{"role": "user", ...}, {"role": "assistant",
  "content": {"answer": ...} or "..."}]} (v0.1 files of 2024), or {"question_id", "choices": [{"turns":
  [{"content": ...}, ...]}]} (the older layout)
- AlpacaEval model_outputs.json: a JSON list of {"instruction", "output"}.

A request is matched, in order, by `request_id` (the instruction id), by `metadata["source_id"]` (the
feed puts the dataset's question id there), then by the text of the first user turn. Text matching
needs the question text: arena-hard answers and AlpacaEval outputs carry it; for FastChat answers the
backend reads `question.jsonl` beside the answer folder (or `options.questions`). The turn is the
number of user messages in the request, so the pool's per-turn calls get the right recorded answer.

A request with no recorded answer gets an error (not retryable): the pool dead-letters it.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable

from arena_flywheel.errors import InputError
from arena_flywheel.records import read_records as read_records_core

from .base import BackendError, Completion, GenerationRequest

log = logging.getLogger(__name__)


def normalize_text(s: str) -> str:
    return " ".join(s.split())


def turn_text(t: Any) -> str | None:
    if isinstance(t, str):
        return t
    if isinstance(t, dict):
        for k in ("content", "answer", "text"):
            if isinstance(t.get(k), (str, dict)):
                return turn_text(t[k])
    return None


def _token_len(turns: list[Any]) -> list[int]:
    return [int(t.get("token_len", 0)) if isinstance(t, dict) else 0 for t in turns]


class RecordedAnswer:
    __slots__ = ("turns", "tokens", "model", "prompt")

    def __init__(self, turns: list[str], tokens: list[int] | None = None, model: str = "", prompt: str | None = None):
        self.turns = turns
        self.tokens = tokens or [0] * len(turns)
        self.model = model
        self.prompt = prompt


def parse_record(rec: dict) -> tuple[list[str], RecordedAnswer] | None:
    """Return (keys, answer) for one JSON record of any supported format, or None if it is not an answer."""
    keys: list[str] = []
    for k in ("question_id", "uid", "id", "instruction_id"):
        if rec.get(k) not in (None, ""):
            keys.append(str(rec[k]))
    model = str(rec.get("model_id") or rec.get("model") or rec.get("generator") or "")
    prompt = None
    turns: list[str] = []
    tokens: list[int] = []
    if isinstance(rec.get("choices"), list) and rec["choices"]:
        raw = rec["choices"][0].get("turns") if isinstance(rec["choices"][0], dict) else None
        if isinstance(raw, list):
            turns = [turn_text(t) or "" for t in raw]
            tokens = _token_len(raw)
    elif isinstance(rec.get("messages"), list):
        users = [m for m in rec["messages"] if isinstance(m, dict) and m.get("role") == "user"]
        if users:
            prompt = turn_text(users[0].get("content"))
        turns = [turn_text(m.get("content")) or "" for m in rec["messages"]
                 if isinstance(m, dict) and m.get("role") == "assistant"]
    elif isinstance(rec.get("text"), str):
        turns = [rec["text"]]
    elif isinstance(rec.get("output"), str):
        turns = [rec["output"]]
        if isinstance(rec.get("instruction"), str):
            prompt = rec["instruction"]
    if not turns:
        return None
    return keys, RecordedAnswer(turns, tokens, model, prompt)


def read_records(path: Path, limits=None) -> Iterable[tuple[int, dict]]:
    """(line number, or position from 1 in a JSON list; record) of each JSON object of an answers file, through
    the core reader within the record limits. Items that are not objects are skipped; a bad record or a
    broken file is a BackendError naming its location."""
    try:
        for rec in read_records_core(path, limits, name=str(path), sniff=True, csv_fallback=False,
                                     objects_only=False, unwrap=(), single_object=True):
            if rec.error:
                raise BackendError(f"{rec.source}: not a usable JSON record ({rec.error})")
            if isinstance(rec.data, dict):
                yield (rec.line if rec.line is not None else (rec.index or 0) + 1), rec.data
    except InputError as exc:
        raise BackendError(str(exc)) from None


def _question_texts(path: Path) -> dict[str, str]:
    """question id -> first-turn text, from a FastChat / arena-hard question file."""
    out: dict[str, str] = {}
    for _, rec in read_records(path):
        qid = rec.get("question_id", rec.get("uid"))
        text = rec.get("text") or rec.get("prompt") or rec.get("instruction")
        if text is None and isinstance(rec.get("turns"), list) and rec["turns"]:
            text = turn_text(rec["turns"][0])
        if qid is not None and isinstance(text, str):
            out[str(qid)] = text
    return out


class ReplayBackend:
    name = "replay"

    def __init__(self, path: str, *, questions: str | None = None, model_filter: str | None = None):
        self.model_filter = model_filter
        self.questions = questions
        self.by_id: dict[str, RecordedAnswer] = {}
        self.by_text: dict[str, RecordedAnswer] = {}
        self.path = ""
        self.load(path)

    def load(self, path: str) -> None:
        """Switch to another set of recorded answers (a checkpoint of a replayed model)."""
        p = Path(path)
        if not path or not p.exists():
            raise BackendError(f"replay answers {path!r} not found: set model = \"path/to/answers.jsonl\" "
                               f"(FastChat, arena-hard or AlpacaEval format) or a directory of them")
        files = sorted(f for f in p.iterdir() if f.suffix in (".jsonl", ".json")) if p.is_dir() else [p]
        by_id: dict[str, RecordedAnswer] = {}
        by_text: dict[str, RecordedAnswer] = {}
        n = 0
        for f in files:
            for _, rec in read_records(f):
                parsed = parse_record(rec)
                if parsed is None:
                    continue
                keys, ans = parsed
                if self.model_filter and ans.model and ans.model != self.model_filter:
                    continue
                n += 1
                for k in keys:
                    by_id.setdefault(k, ans)
                if ans.prompt:
                    by_text.setdefault(normalize_text(ans.prompt), ans)
        if n == 0:
            raise BackendError(f"replay answers {path!r}: no answer records found (expected FastChat "
                               f"question_id/text or choices[].turns, arena-hard uid/messages, or AlpacaEval "
                               f"instruction/output)")
        qfiles = [Path(self.questions)] if self.questions else [
            f for d in {files[0].parent, files[0].parent.parent} for f in (d / "question.jsonl",) if f.is_file()]
        for qf in qfiles:
            if not qf.is_file():
                raise BackendError(f"replay questions file {str(qf)!r} not found")
            for qid, text in _question_texts(qf).items():
                if qid in by_id:
                    by_text.setdefault(normalize_text(text), by_id[qid])
        self.by_id, self.by_text, self.path = by_id, by_text, str(p)
        log.info("replay: %d recorded answers from %s (%d matchable by text)", n, p, len(by_text))

    def lookup(self, req: GenerationRequest) -> RecordedAnswer | None:
        for key in (req.request_id, req.metadata.get("source_id"), req.metadata.get("instruction_id")):
            if key not in (None, "") and str(key) in self.by_id:
                return self.by_id[str(key)]
        first_user = next((m["content"] for m in req.messages if m.get("role") == "user"), None)
        if first_user is not None:
            return self.by_text.get(normalize_text(first_user))
        return None

    def generate(self, requests: list[GenerationRequest]) -> list[Completion]:
        out = []
        for r in requests:
            ans = self.lookup(r)
            turn = max(0, sum(1 for m in r.messages if m.get("role") == "user") - 1)
            if ans is None:
                out.append(Completion(text="", error=f"replay: no recorded answer in {self.path} for request "
                                      f"{r.request_id!r} (source_id {r.metadata.get('source_id')!r})",
                                      retryable=False))
            elif turn >= len(ans.turns):
                out.append(Completion(text="", error=f"replay: recorded answer has {len(ans.turns)} turn(s), "
                                      f"turn {turn + 1} was asked for", retryable=False))
            else:
                out.append(Completion(text=ans.turns[turn], output_tokens=ans.tokens[turn], finish_reason="replay"))
        return out

    def close(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "path": self.path, "answers": len(self.by_id)}
