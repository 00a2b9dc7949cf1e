"""Failures and verdicts -> TRL-native rows (conversational format), each carrying its provenance.

Formats are the ones TRL's trainers read directly:
- SFT: {"messages": [...]} the whole conversation, every user turn followed by the winner's answer.
- DPO / reward: {"prompt": [...], "chosen": [assistant], "rejected": [assistant]}: the prompt is the
  conversation up to the last user turn (earlier turns answered by the winner), chosen = the best
  winning answer, rejected = the target's answer.
- RL: {"prompt": [...]} only; the policy writes its own answers.
Extra columns (battle_ids, verdict_ids, judge, template_hash, iteration, instruction_id) are ignored by
the trainers and kept for provenance.
"""
from __future__ import annotations

from typing import Any, Iterable

from arena_flywheel.events import Failure, Verdict, chat, stable_hash


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


def dpo_rows(failures: Iterable[Failure], iteration: int = 0) -> list[dict[str, Any]]:
    rows = []
    for f in failures:
        conv = conversation_messages(f)
        if not conv or not f.target_answers:
            continue
        n_turns = sum(m["role"] == "assistant" for m in conv)
        rejected = f.target_answers[min(n_turns, len(f.target_answers)) - 1]
        if rejected == conv[-1]["content"]:
            continue  # identical answers teach nothing and give DPO a zero margin
        rows.append({"prompt": conv[:-1], "chosen": [conv[-1]],
                     "rejected": [{"role": "assistant", "content": rejected}], **_provenance(f, iteration)})
    return rows


def reward_rows(verdicts: Iterable[Verdict], iteration: int = 0, messages: dict[str, list] | None = None,
                answers: dict[str, tuple[list[str], list[str]]] | None = None) -> list[dict[str, Any]]:
    """Preference pairs from every verdict with a winner (ties and invalid ones carry no preference).

    A Verdict holds no text, so the caller passes the texts: `messages[instruction_id]` (the
    instruction's messages as dicts) and `answers[battle_id] = (answers_a, answers_b)`; the Battle
    events have both (see `texts_from_battles`). Verdicts whose texts are unknown are skipped.
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
        prompt, k = [], 0
        users = [m for m in msgs if m["role"] == "user"]
        for m in msgs:
            if m["role"] == "system":
                prompt.append(dict(m))
            elif m["role"] == "user":
                prompt.append(dict(m))
                if k == len(users) - 1:
                    break
                prompt.append({"role": "assistant", "content": win[k] if k < len(win) else ""})
                k += 1
        last = len(users) - 1
        if last >= len(win) or last >= len(lose) or win[last] == lose[last]:
            continue
        rows.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": win[last]}],
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


def rl_prompts(failures: Iterable[Failure], iteration: int = 0) -> list[dict[str, Any]]:
    rows = []
    for f in failures:
        conv = conversation_messages(f)
        if conv:
            rows.append({"prompt": conv[:-1], **_provenance(f, iteration)})
    return rows


def dataset_hash(rows: list[dict[str, Any]]) -> str:
    """Hash of the training content (provenance columns included), order-sensitive."""
    return stable_hash(rows, length=16)
