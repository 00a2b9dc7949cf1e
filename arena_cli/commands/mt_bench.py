"""`arena mt-bench`: MT-bench single-answer grading of a competitor (consumers/judging/single.py).

The competitor (a configured one, one of its checkpoints as `model@checkpoint`, or recorded FastChat answers
with --answers) answers both turns of every question; a model judge grades each turn with FastChat's
single-answer prompts. Writes <out>/<competitor>.json (scores per category and turn) and
<competitor>_judgments.jsonl (FastChat's single-judgment records); `arena report` draws the radar.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from rich.console import Console
from rich.table import Table

from arena_flywheel.config import Config
from arena_flywheel.errors import UsageError
from consumers.backends import BACKENDS, BackendError, create_backend
from consumers.judging.single import answer_turns, grade, load_bench, scores


def add_arguments(p) -> None:
    p.add_argument("--competitor", required=True, metavar="NAME",
                   help="a configured competitor, `model@checkpoint` (its checkpoint under trainer.output_dir), "
                        "or a name for --answers")
    p.add_argument("--answers", metavar="FILE", help="grade recorded answers (FastChat model_answer JSONL) "
                                                     "instead of generating them")
    p.add_argument("--data", metavar="DIR", help="FastChat's llm_judge/data/mt_bench folder (question.jsonl, "
                                                 "reference_answer/gpt-4.jsonl, judge_prompts.jsonl here or above)")
    p.add_argument("--judge-backend", choices=[b for b in BACKENDS], help="the judge's backend "
                   "(default: judge.backend when it is a model backend)")
    p.add_argument("--judge-model", help="the judge model (replay: a file of recorded judge texts, keyed "
                                         "question_id:turn)")
    p.add_argument("--judge-base-url", help="openai: the server's base URL")
    p.add_argument("--limit", type=int, default=None, help="only the first N questions of each category")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="the competitor's answer length (default: its max_new_tokens)")
    p.add_argument("--out", metavar="DIR", help="where the results go (default: <data_dir>/mt_bench)")


def _data_dir(args) -> Path:
    if args.data:
        return Path(args.data)
    beside = Path("../shared/data/mt_bench")
    if beside.is_dir():
        return beside
    raise UsageError("--data DIR is needed: FastChat's fastchat/llm_judge/data/mt_bench folder "
                     "(question.jsonl, reference_answer/gpt-4.jsonl, judge_prompts.jsonl)")


def _competitor(args, cfg: Config):
    """(backend, max_new_tokens, temperature) of the competitor to grade."""
    if args.answers:
        if not Path(args.answers).exists():
            raise UsageError(f"--answers {args.answers!r}: no such file")
        return create_backend({"backend": "replay", "model": args.answers}), 1, 0.0
    model, _, checkpoint = args.competitor.partition("@")
    comp = next((c for c in cfg.competitors if c.name == model), None)
    if comp is None:
        known = ", ".join(c.name for c in cfg.competitors) or "none configured"
        raise UsageError(f"--competitor {args.competitor!r}: no competitor {model!r} in the config ({known}); "
                         f"or grade recorded answers with --answers FILE")
    path = None
    if checkpoint and checkpoint != "base":
        path = Path(cfg.trainer.output_dir) / model / checkpoint
        if not path.is_dir():
            raise UsageError(f"--competitor {args.competitor!r}: no checkpoint folder {path}")
    return create_backend(comp, model=str(path) if path else None), comp.max_new_tokens, comp.temperature


def _judge(args, cfg: Config):
    backend = args.judge_backend or (cfg.judge.backend if cfg.judge.backend not in ("reference", "replay") else None)
    if backend is None:
        raise UsageError("mt-bench needs a model judge: e.g. --judge-backend openai --judge-model gpt-4 "
                         "(the reference judge has no single-answer form; judge.backend replay holds pairwise "
                         "recordings)")
    model = args.judge_model or (cfg.judge.model if not args.judge_backend else None)
    if not model:
        raise UsageError("--judge-model is needed with --judge-backend")
    jc = cfg.judge.model_dump()
    jc.update(backend=backend, model=model, base_url=args.judge_base_url or cfg.judge.base_url)
    return create_backend(jc), f"{backend}:{model}"


def run(args, cfg: Config) -> int:
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1, e.g. --limit 2")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise UsageError("--max-new-tokens must be at least 1, e.g. --max-new-tokens 512")
    bench = load_bench(_data_dir(args))
    questions = bench.questions
    if args.limit:
        taken: dict[str, int] = {}
        questions = []
        for q in bench.questions:
            taken[q["category"]] = taken.get(q["category"], 0) + 1
            if taken[q["category"]] <= args.limit:
                questions.append(q)
    try:
        judge, judge_name = _judge(args, cfg)  # before generating: a bad judge setting fails at once
    except BackendError as exc:
        raise UsageError(f"judge: {exc}") from None
    try:
        backend, max_new, temperature = _competitor(args, cfg)
        try:
            texts, failed = answer_turns(backend, [q["turns"] for q in questions],
                                         max_new_tokens=args.max_new_tokens or max_new, temperature=temperature,
                                         ids=[str(q["question_id"]) for q in questions])
        finally:
            backend.close()
        answers = {q["question_id"]: t for i, (q, t) in enumerate(zip(questions, texts)) if i not in failed}
        judgments = grade(bench, answers, judge, judge_name)
    except BackendError as exc:
        raise UsageError(str(exc)) from None
    finally:
        judge.close()
    for j in judgments:
        j["model"] = args.competitor
    result = {"competitor": args.competitor, "judge": judge_name, "data": bench.source,
              "questions": len(questions), **scores(judgments),
              "unanswered": [{"question_id": questions[i]["question_id"], "reason": why} for i, why in failed.items()]}
    out = Path(args.out or Path(cfg.data_dir) / "mt_bench")
    out.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^\w.@-]", "_", args.competitor)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    with open(out / f"{stem}_judgments.jsonl", "w", encoding="utf-8") as fh:
        for j in judgments:
            fh.write(json.dumps(j) + "\n")
    print_scores(Console(), result)
    for u in result["unanswered"]:
        print(f"question {u['question_id']} not graded: the competitor did not answer ({u['reason']})")
    print(f"results: {out / (stem + '.json')}, judgments: {out / (stem + '_judgments.jsonl')}")
    return 0


def print_scores(console, result: dict) -> None:
    t = Table(title=f"MT-bench, {result['competitor']} judged by {result['judge']} (1-10; {result['unparsed']} of "
                    f"{result['judgments']} judgments without a rating left out)", title_justify="left")
    t.add_column("category")
    t.add_column("score", justify="right")
    rows = list(result["categories"].items()) + [("turn 1", result["turn_1"]), ("turn 2", result["turn_2"]),
                                                  ("overall", result["overall"])]
    for name, v in rows:
        t.add_row(name, "-" if v is None else f"{v:.2f}")
    console.print(t)
