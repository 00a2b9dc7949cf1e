"""Failures, battles and verdicts -> TRL-native rows (conversational format), each carrying its provenance.

Formats are the ones TRL's trainers read directly:
- SFT (`sft_rows`, from failures): {"messages": [...]} the whole conversation, every user turn followed by
  the winner's answer.
- DPO (`dpo_pairs`, from a slice's battles and verdicts): {"prompt": [...], "chosen": [assistant],
  "rejected": [assistant]}: over every battle model's answer to an instruction, chosen = the best-judged
  answer, rejected = the worst-judged one.
- Reward (`reward_rows`, from a slice's judged battles): the same shape, one pair per battle with a winner.
- RL (`rl_prompts`, from a slice's battles): {"prompt": [...]} only; the policy writes its own answers.
A prompt is the conversation up to the last user turn, its earlier turns answered by the chosen (winning)
answer's earlier turns. Extra columns (instruction_id, battle_ids, verdict_ids, judge, template_hash,
iteration, ...) are ignored by the trainers and kept for provenance.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from arena_flywheel.events import Battle, Failure, Verdict, chat, stable_hash


def conversation_messages(f: Failure, answers: list[str] | None = None) -> list[dict[str, str]]:
    """System messages and user turns of the instruction, each user turn followed by `answers[k]`
    (default: the winner's answers). Assistant messages in the instruction are replaced."""
    return chat(f.messages, f.winner_answers if answers is None else answers)


def _provenance(f: Failure, iteration: int) -> dict[str, Any]:
    return {"instruction_id": f.instruction_id, "failure_id": f.id, "battle_ids": list(f.battle_ids),
            "verdict_ids": list(f.verdict_ids), "judge": f.judge.judge_id if f.judge else "",
            "template_hash": f.judge.template_hash if f.judge else "", "iteration": iteration,
            "winner_model": f.winner_model, "margin": float(f.margin)}


def sft_rows(failures: Iterable[Failure], iteration: int = 0) -> list[dict[str, Any]]:
    return [{"messages": conversation_messages(f), **_provenance(f, iteration)}
            for f in failures if f.winner_answers]


def _as_dicts(msgs) -> list[dict[str, str]]:
    return [m if isinstance(m, dict) else m.model_dump() for m in msgs]


def prompt_before_last_turn(msgs, answers: list[str]) -> list[dict[str, str]]:
    """The conversation up to (and with) its last user turn: system messages kept, each earlier user turn
    followed by `answers[k]` ("" when there is none). Assistant messages in the instruction are replaced."""
    msgs = _as_dicts(msgs)
    last = sum(m["role"] == "user" for m in msgs) - 1
    prompt, k = [], 0
    for m in msgs:
        if m["role"] == "system":
            prompt.append({"role": "system", "content": m["content"]})
        elif m["role"] == "user":
            prompt.append({"role": "user", "content": m["content"]})
            if k == last:
                break
            prompt.append({"role": "assistant", "content": answers[k] if k < len(answers) else ""})
            k += 1
    return prompt


def _n_users(msgs) -> int:
    return sum(m["role"] == "user" for m in _as_dicts(msgs))


def _one(values: Iterable[str]) -> str:
    """One provenance value for several verdicts: the value when they agree, else all of them joined by +."""
    vals = sorted({v for v in values if v})
    return "+".join(vals)


def reward_rows(verdicts: Iterable[Verdict], iteration: int = 0, messages: dict[str, list] | None = None,
                answers: dict[str, tuple[list[str], list[str]]] | None = None) -> list[dict[str, Any]]:
    """Preference pairs from every verdict with a winner (ties and invalid ones carry no preference).

    A Verdict holds no text, so the caller passes the texts: `messages[instruction_id]` (the
    instruction's messages as dicts) and `answers[battle_id] = (answers_a, answers_b)`; the Battle
    events have both (see `texts_from_battles`). Verdicts whose texts are unknown are skipped, and so are
    pairs whose last answers are the same text.
    """
    messages, answers = messages or {}, answers or {}
    rows, seen = [], set()
    for v in verdicts:
        if v.winner not in ("model_a", "model_b") or v.id in seen:
            continue
        seen.add(v.id)
        msgs, pair = messages.get(v.instruction_id), answers.get(v.battle_id)
        if not msgs or not pair:
            continue
        win, lose = (pair[0], pair[1]) if v.winner == "model_a" else (pair[1], pair[0])
        last = _n_users(msgs) - 1
        if last < 0 or last >= len(win) or last >= len(lose) or win[last] == lose[last]:
            continue
        rows.append({"prompt": prompt_before_last_turn(msgs, win),
                     "chosen": [{"role": "assistant", "content": win[last]}],
                     "rejected": [{"role": "assistant", "content": lose[last]}],
                     "instruction_id": v.instruction_id, "battle_ids": [v.battle_id], "verdict_ids": [v.id],
                     "judge": v.judge.judge_id, "template_hash": v.judge.template_hash, "iteration": iteration,
                     "winner_model": v.competitor_a if v.winner == "model_a" else v.competitor_b,
                     "margin": float(v.margin)})
    return rows


def texts_from_battles(battles) -> tuple[dict[str, list], dict[str, tuple[list[str], list[str]]]]:
    """(messages by instruction id, (answers a, answers b) by battle id) from Battle events."""
    msgs, ans = {}, {}
    for b in battles:
        msgs[b.instruction_id] = [m.model_dump() for m in b.messages]
        ans[b.id] = (list(b.a.answers), list(b.b.answers))
    return msgs, ans


class _Answer:
    """One answer (a response) to an instruction, with the judged scores it received."""

    __slots__ = ("competitor", "response_id", "answers", "scores", "battle_ids", "verdicts")

    def __init__(self, competitor: str, response_id: str, answers: list[str]):
        self.competitor, self.response_id, self.answers = competitor, response_id, answers
        self.scores: list[float] = []
        self.battle_ids: list[str] = []
        self.verdicts: list[Verdict] = []

    @property
    def score(self) -> float:
        return sum(self.scores) / len(self.scores)


def judged_answers(battles: Iterable[Battle], verdicts: Iterable[Verdict]) -> dict[str, list[_Answer]]:
    """instruction id -> every distinct answer (by response id) of its battles that at least one verdict
    scored, each with the scores it received: Verdict.score_a belongs to battle.a's answer, score_b to
    battle.b's. A verdict without scores (invalid, or a label policy such as arena-hard) scores nothing;
    a verdict counted twice (same id) counts once; a verdict whose battle is not given is skipped."""
    by_battle = {b.id: b for b in battles}
    answers: dict[str, dict[str, _Answer]] = {}
    seen: set[str] = set()
    for v in verdicts:
        b = by_battle.get(v.battle_id)
        if b is None or v.id in seen or v.score_a is None or v.score_b is None:
            continue
        seen.add(v.id)
        per = answers.setdefault(b.instruction_id, {})
        for side, score in ((b.a, v.score_a), (b.b, v.score_b)):
            ans = per.get(side.response_id)
            if ans is None:
                ans = per[side.response_id] = _Answer(side.competitor, side.response_id, list(side.answers))
            ans.scores.append(float(score))
            ans.battle_ids.append(b.id)
            ans.verdicts.append(v)
    return {i: list(per.values()) for i, per in answers.items()}


def ranked_answers(instruction_id: str, answers: list[_Answer]) -> list[_Answer]:
    """Best-judged first; equal scores in the order of a hash of (instruction id, response id)."""
    return sorted(answers, key=lambda a: (-a.score, stable_hash(instruction_id, a.response_id, length=16)))


def dpo_pairs(battles: Iterable[Battle], verdicts: Iterable[Verdict], threshold: float,
              iteration: int = 0) -> tuple[list[dict[str, Any]], dict[str, dict[str, int]]]:
    """DPO pairs of a slice: for each instruction, over ALL its battle models' answers (the target's current
    checkpoint included), chosen = the best-judged answer and rejected = the worst-judged one.

    An answer's judged score is the mean of the scores it received in the verdicts of its battles
    (Verdict.score_a belongs to battle.a's answer, score_b to battle.b's). Verdicts whose scores are None
    (invalid battles, label policies such as arena-hard that give no scores) are skipped: with such a
    judge no pair comes out. A pair is kept when its judged gap (best - worst) is >= `threshold` and > 0,
    on the scale of the verdicts' scores (judge.combine = "mean": one game's 1-10; "sum": 2-20), and when
    the two last answers differ. Equal scores are broken by a hash of the instruction and response ids:
    deterministic, and favouring no model (a name order would always pick the same one among equals).

    Rows are TRL conversational {"prompt", "chosen", "rejected"}: the prompt is the conversation up to
    the last user turn, earlier turns answered by the chosen answer's earlier turns. Provenance columns:
    instruction_id, battle_ids and verdict_ids (those that scored the chosen or the rejected answer),
    judge, template_hash, iteration, chosen_model, rejected_model, gap.

    Returns (rows, counts): counts = {"chosen": {competitor: n}, "rejected": {competitor: n}} over the
    kept pairs (the paper's Table 7).
    """
    battles = list(battles)
    msgs = {b.instruction_id: b.messages for b in battles}
    rows: list[dict[str, Any]] = []
    chosen_n: Counter = Counter()
    rejected_n: Counter = Counter()
    for instruction_id, answers in sorted(judged_answers(battles, verdicts).items()):
        last = _n_users(msgs[instruction_id]) - 1
        answers = [a for a in answers if 0 <= last < len(a.answers)]
        if len(answers) < 2:
            continue
        ranked = ranked_answers(instruction_id, answers)
        best, worst = ranked[0], ranked[-1]
        gap = best.score - worst.score
        if gap <= 0 or gap < threshold or best.answers[last] == worst.answers[last]:
            continue
        used = {v.id: v for v in best.verdicts + worst.verdicts}
        rows.append({"prompt": prompt_before_last_turn(msgs[instruction_id], best.answers),
                     "chosen": [{"role": "assistant", "content": best.answers[last]}],
                     "rejected": [{"role": "assistant", "content": worst.answers[last]}],
                     "instruction_id": instruction_id,
                     "battle_ids": sorted(set(best.battle_ids + worst.battle_ids)),
                     "verdict_ids": sorted(used),
                     "judge": _one(v.judge.judge_id for v in used.values()),
                     "template_hash": _one(v.judge.template_hash for v in used.values()),
                     "iteration": iteration, "chosen_model": best.competitor, "rejected_model": worst.competitor,
                     "gap": float(gap)})
        chosen_n[best.competitor] += 1
        rejected_n[worst.competitor] += 1
    return rows, {"chosen": dict(sorted(chosen_n.items())), "rejected": dict(sorted(rejected_n.items()))}


def rl_prompts(battles: Iterable[Battle], iteration: int = 0,
               verdicts: Iterable[Verdict] = ()) -> list[dict[str, Any]]:
    """One RL prompt per instruction of the slice's battles: its conversation up to the last user turn.
    Earlier turns (multi-turn instructions) are answered by the best-judged answer when `verdicts` score
    the instruction's answers, else by the first battle's side a."""
    battles = list(battles)
    best = {i: ranked_answers(i, ans)[0] for i, ans in judged_answers(battles, verdicts).items()}
    rows: dict[str, dict[str, Any]] = {}
    for b in battles:
        row = rows.get(b.instruction_id)
        if row is None:
            earlier = best[b.instruction_id].answers if b.instruction_id in best else list(b.a.answers)
            row = rows[b.instruction_id] = {"prompt": prompt_before_last_turn(b.messages, earlier),
                                            "instruction_id": b.instruction_id, "battle_ids": [],
                                            "iteration": iteration}
        if b.id not in row["battle_ids"]:
            row["battle_ids"].append(b.id)
    return [rows[i] for i in sorted(rows)]


def dataset_hash(rows: list[dict[str, Any]]) -> str:
    """Hash of the training content (provenance columns included), order-sensitive."""
    return stable_hash(rows, length=16)


# ---------------------------------------------------------------------- datasets on disk
KINDS = ("sft", "dpo", "reward", "rl")
COLUMNS = {"sft": ("messages",), "dpo": ("prompt", "chosen", "rejected"), "reward": ("chosen", "rejected"),
           "rl": ("prompt",)}  # what TRL's trainers read; every other column is provenance


def source_ids(rows: Iterable[dict[str, Any]]) -> dict[str, list[str]]:
    """The events a batch came from, by kind (failure, battle, verdict ids), sorted."""
    out: dict[str, set[str]] = {"failure_ids": set(), "battle_ids": set(), "verdict_ids": set()}
    for r in rows:
        if r.get("failure_id"):
            out["failure_ids"].add(r["failure_id"])
        for key in ("battle_ids", "verdict_ids"):
            out[key].update(r.get(key) or ())
    return {k: sorted(v) for k, v in out.items() if v}


def write_dataset(rows: list[dict[str, Any]], out: str | Path, kind: str,
                  provenance: dict[str, Any] | None = None) -> Path:
    """One batch as a Hugging Face dataset at `out/<kind>` (`datasets.load_from_disk`) and `out/<kind>.parquet`,
    in TRL's conversational format plus its provenance columns, and `out/<kind>.json` with the round's
    provenance (iteration, stage, target, parent checkpoint, threshold, source event ids, rows, dataset_hash).
    The reward batch is written with its prompt folded into chosen/rejected (TRL's implicit-prompt
    preference format), so RewardTrainer reads it as it is."""
    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()  # a service's log, not a terminal
    if kind not in KINDS:
        raise ValueError(f"unknown batch kind {kind!r}; the kinds are {', '.join(KINDS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = list(rows)
    written = [_implicit_prompt(r) for r in rows] if kind == "reward" else rows
    meta = {"kind": kind, **(provenance or {}), "rows": len(rows), "dataset_hash": dataset_hash(rows),
            "trl_columns": list(COLUMNS[kind]), **source_ids(rows)}
    ds = Dataset.from_list(written) if written else Dataset.from_dict({c: [] for c in COLUMNS[kind]})
    ds.info.description = json.dumps(meta, ensure_ascii=False, sort_keys=True)
    ds.save_to_disk(str(out / kind))
    ds.to_parquet(str(out / f"{kind}.parquet"))
    (out / f"{kind}.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1, sort_keys=True))
    return out / kind


def read_dataset(out: str | Path, kind: str) -> list[dict[str, Any]]:
    """The rows `write_dataset` wrote (the reward batch back in its prompt/chosen/rejected form)."""
    from datasets import load_from_disk

    rows = load_from_disk(str(Path(out) / kind)).to_list()
    return [_explicit_prompt(r) for r in rows] if kind == "reward" else rows


def _implicit_prompt(r: dict[str, Any]) -> dict[str, Any]:
    return {**{k: v for k, v in r.items() if k != "prompt"}, "chosen": r["prompt"] + r["chosen"],
            "rejected": r["prompt"] + r["rejected"], "prompt_turns": len(r["prompt"])}


def _explicit_prompt(r: dict[str, Any]) -> dict[str, Any]:
    k = r.pop("prompt_turns")
    return {**r, "prompt": r["chosen"][:k], "chosen": r["chosen"][k:], "rejected": r["rejected"][k:]}
