"""MT-bench single-answer grading, as FastChat's llm_judge does it (the paper's Figure 6 scores).

Read as published (lm-sys/FastChat fastchat/llm_judge/data): `question.jsonl` (80 two-turn questions, 8
categories), `judge_prompts.jsonl` (the single-answer templates "single-v1", "single-math-v1" and their
"-multi-turn" forms) and `reference_answer/gpt-4.jsonl`. As in FastChat's gen_judgment.py / common.py:
- turn 1 is graded with single-v1, turn 2 (the whole two-turn conversation) with single-v1-multi-turn;
  math, reasoning and coding questions use the reference-guided single-math-v1 templates with the
  reference answer of each turn;
- the judge gets the template's system prompt and the filled template as the user turn, greedy, 2048 tokens;
- the rating is the first `[[N]]` in the judgment, else the first `[N]`; none gives -1, which is left out
  of every mean (and counted as unparsed).
The judge is any generation backend (consumers/backends); the scores mean something only with a strong
model judge (FastChat uses GPT-4), docs/evaluation.md.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arena_flywheel.errors import InputError
from arena_flywheel.records import read_records
from consumers.backends.base import Backend, GenerationRequest

NEED_REF_CATS = ("math", "reasoning", "coding")  # FastChat's NEED_REF_CATS (less its arena-hard-200)
JUDGE_MAX_TOKENS = 2048  # FastChat's judge call
# FastChat's one_score_pattern and one_score_pattern_backup
_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


@dataclass(frozen=True)
class Bench:
    """MT-bench as published: questions, reference answers by question id, judge prompts by name."""
    questions: list[dict[str, Any]]
    references: dict[int, list[str]]
    prompts: dict[str, dict[str, str]]
    source: str


def _jsonl(path: Path) -> list[dict]:
    """Every object of a JSONL file, through the one record reader (size and nesting limits); FastChat's files
    are data we grade with, so a bad line stops the command with its location rather than being skipped."""
    if not path.is_file():
        raise InputError(f"{path}: no such file (MT-bench data is FastChat's fastchat/llm_judge/data layout)")
    out = []
    for rec in read_records(path):
        if rec.error:
            raise InputError(f"{rec.source}: {rec.error}")
        out.append(rec.data)
    return out


def load_bench(folder: str | Path, reference_model: str = "gpt-4", prompts: str | Path | None = None) -> Bench:
    """MT-bench from `folder` (question.jsonl, reference_answer/<reference_model>.jsonl) and the judge prompts
    (`prompts`, default judge_prompts.jsonl in `folder` or its parent, where FastChat keeps it)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder; point --data at FastChat's llm_judge/data/mt_bench "
                         f"(question.jsonl, reference_answer/, judge_prompts.jsonl)")
    questions = _jsonl(folder / "question.jsonl")
    for q in questions:
        if not isinstance(q.get("question_id"), int) or not isinstance(q.get("turns"), list) or not q["turns"] \
                or not all(isinstance(t, str) for t in q["turns"]) or not isinstance(q.get("category"), str):
            raise InputError(f"{folder / 'question.jsonl'}: question {q.get('question_id')!r} lacks an integer "
                             f"question_id, a category or its turns")
    refs = {}
    for r in _jsonl(folder / "reference_answer" / f"{reference_model}.jsonl"):
        try:
            refs[int(r["question_id"])] = [str(t) for t in r["choices"][0]["turns"]]
        except (KeyError, IndexError, TypeError, ValueError):
            raise InputError(f"reference answer {r.get('question_id')!r}: expected question_id and "
                             f"choices[0].turns") from None
    if prompts is None:
        prompts = next((p for p in (folder / "judge_prompts.jsonl", folder.parent / "judge_prompts.jsonl")
                        if p.is_file()), folder / "judge_prompts.jsonl")
    by_name = {p.get("name"): p for p in _jsonl(Path(prompts))}
    for name in ("single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn"):
        if name not in by_name:
            raise InputError(f"{prompts}: judge prompt {name!r} is missing (FastChat's judge_prompts.jsonl has it)")
    missing = [q["question_id"] for q in questions if q["category"] in NEED_REF_CATS and q["question_id"] not in refs]
    if missing:
        raise InputError(f"reference_answer/{reference_model}.jsonl has no answer for questions {missing[:5]} "
                         f"(math, reasoning and coding are graded against a reference)")
    return Bench(questions, refs, by_name, str(folder))


def judge_prompt(bench: Bench, question: dict[str, Any], answers: list[str], turn: int) -> tuple[str, str, str]:
    """(prompt name, system prompt, user prompt) for grading turn `turn` (1 or 2) of `answers`."""
    ref = question["category"] in NEED_REF_CATS
    name = ("single-math-v1" if ref else "single-v1") + ("-multi-turn" if turn == 2 else "")
    tpl = bench.prompts[name]
    kw: dict[str, str] = {}
    if ref:
        kw["ref_answer_1"] = bench.references[question["question_id"]][0]
        if turn == 2:
            kw["ref_answer_2"] = bench.references[question["question_id"]][1]
    if turn == 2:
        user = tpl["prompt_template"].format(question_1=question["turns"][0], question_2=question["turns"][1],
                                             answer_1=answers[0], answer_2=answers[1], **kw)
    else:
        user = tpl["prompt_template"].format(question=question["turns"][0], answer=answers[0], **kw)
    return name, tpl["system_prompt"], user


def parse_rating(judgment: str) -> float:
    """The rating as FastChat parses it: [[N]], else [N]; -1 when there is none."""
    m = _RATING.search(judgment) or _RATING_BACKUP.search(judgment)
    return float(ast.literal_eval(m.group(1))) if m else -1.0


def answer_turns(backend: Backend, conversations: list[list[str]], *, max_new_tokens: int, temperature: float = 0.0,
                 ids: list[str] | None = None) -> tuple[list[list[str]], dict[int, str]]:
    """Answer every user turn of every conversation (a list of user turns), each turn with the model's own
    earlier answers in the chat, all conversations' turn k in one generate() call. Returns the answers and
    {index: error} of conversations whose generation failed (their answers stop at the failed turn)."""
    ids = ids or [str(i) for i in range(len(conversations))]
    answers: list[list[str]] = [[] for _ in conversations]
    failed: dict[int, str] = {}
    for turn in range(max((len(c) for c in conversations), default=0)):
        active = [i for i, c in enumerate(conversations) if turn < len(c) and i not in failed]
        if not active:
            break
        reqs = []
        for i in active:
            msgs = []
            for k, user in enumerate(conversations[i][:turn + 1]):
                msgs.append({"role": "user", "content": user})
                if k < turn:
                    msgs.append({"role": "assistant", "content": answers[i][k]})
            reqs.append(GenerationRequest(messages=msgs, max_new_tokens=max_new_tokens, temperature=temperature,
                                          request_id=ids[i], metadata={"source_id": ids[i], "turn": turn}))
        for i, c in zip(active, backend.generate(reqs)):
            if c.error:
                failed[i] = f"turn {turn + 1}: {c.error}"
            else:
                answers[i].append(c.text)
    return answers, failed


def grade(bench: Bench, answers: dict[int, list[str]], judge: Backend, judge_name: str = "") -> list[dict[str, Any]]:
    """Judgments of every question `answers` has both turns of, in FastChat's single-judgment record shape
    (question_id, model, judge [name, prompt], user_prompt, judgment, score, turn) plus category."""
    jobs = []
    for q in bench.questions:
        ans = answers.get(q["question_id"])
        if not ans or len(ans) < len(q["turns"]):
            continue
        for turn in range(1, min(2, len(q["turns"])) + 1):
            jobs.append((q, turn, *judge_prompt(bench, q, ans, turn)))
    reqs = [GenerationRequest(messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
                              max_new_tokens=JUDGE_MAX_TOKENS, temperature=0.0,
                              request_id=f"{q['question_id']}:{turn}")
            for q, turn, _, system, user in jobs]
    out = []
    for (q, turn, name, _, user), c in zip(jobs, judge.generate(reqs) if reqs else []):
        text = "" if c.error else c.text
        out.append({"question_id": q["question_id"], "category": q["category"], "turn": turn,
                    "judge": [judge_name, name], "user_prompt": user, "judgment": text,
                    "score": parse_rating(text) if not c.error else -1.0, "error": c.error})
    return out


def scores(judgments: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean rating per category (both turns), per turn, and overall, over parsed ratings (score != -1, as
    FastChat's show_result); how many judgments had no rating."""
    ok = [j for j in judgments if j["score"] != -1]

    def mean(rows):
        return round(sum(j["score"] for j in rows) / len(rows), 4) if rows else None

    cats = list(dict.fromkeys(j["category"] for j in judgments))  # the question file's order
    return {"categories": {c: mean([j for j in ok if j["category"] == c]) for c in cats},
            "turn_1": mean([j for j in ok if j["turn"] == 1]), "turn_2": mean([j for j in ok if j["turn"] == 2]),
            "overall": mean(ok), "judgments": len(judgments), "unparsed": len(judgments) - len(ok)}
