"""A model as judge: any generation backend (transformers, vLLM, OpenAI-compatible) behind a template.

Each battle is two games (a shown first, then b shown first). All games of a polled batch go to the
backend in one generate() call, so a batched backend judges at its batch size. Output that does not
parse is asked again (up to judge.max_parse_retries, with a new seed), then kept as an `invalid` game
with its raw text: never a silent tie.
"""
from __future__ import annotations

from typing import Callable

from arena_flywheel.events import Battle, Game
from consumers.backends.base import Backend, GenerationRequest

from .parse import parse_scores
from .policies import parse_preference
from .templates import Template


def conversation(battle: Battle, answers: list[str]) -> tuple[str, str]:
    """(question, answer) texts for the template: the whole conversation when it has several turns."""
    users = [m.content for m in battle.messages if m.role == "user"]
    if len(users) <= 1 and len(answers) <= 1:
        return (users[0] if users else ""), (answers[-1] if answers else "")
    q = "\n\n".join(f"[Turn {k}] {u}" for k, u in enumerate(users, 1))
    a = "\n\n".join(f"[Turn {k}] {t}" for k, t in enumerate(answers, 1))
    return q, a


class ModelJudge:
    def __init__(self, backend: Backend, template: Template, *, labels: bool = False, max_new_tokens: int = 512,
                 temperature: float = 0.0, max_parse_retries: int = 2):
        self.backend = backend
        self.template = template
        self.labels = labels  # arena-hard style [[A>>B]] labels instead of two scores
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.max_parse_retries = max_parse_retries

    def _prompt(self, battle: Battle, order: str) -> str:
        q, a = conversation(battle, battle.a.answers)
        _, b = conversation(battle, battle.b.answers)
        first, second = (a, b) if order == "ab" else (b, a)
        refs = battle.references or ([battle.reference] if battle.reference else [])
        return self.template.render(q, first, second, reference=refs[0] if refs else "")

    def _game(self, order: str, raw: str, attempts: int) -> Game | None:
        """A parsed game (scores mapped back to a and b), or None when the text does not parse."""
        if self.labels:
            label = parse_preference(raw)
            return None if label is None else Game(order=order, raw=raw, preference=label, attempts=attempts)
        s = parse_scores(raw)
        if s is None:
            return None
        sa, sb = s if order == "ab" else s[::-1]
        return Game(order=order, raw=raw, score_a=sa, score_b=sb, attempts=attempts)

    def games(self, battles: list[Battle]) -> list[list[Game]]:
        keys = [(i, order) for i in range(len(battles)) for order in ("ab", "ba")]
        prompts = {k: self._prompt(battles[k[0]], k[1]) for k in keys}
        done: dict[tuple[int, str], Game] = {}
        pending, last_attempt = keys, self.max_parse_retries + 1
        for attempt in range(1, last_attempt + 1):
            reqs = [GenerationRequest(messages=[{"role": "user", "content": prompts[k]}],
                                      max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                      seed=attempt, request_id=f"{battles[k[0]].id}:{k[1]}")
                    for k in pending]
            again = []
            for k, c in zip(pending, self.backend.generate(reqs)):
                g = None if c.error else self._game(k[1], c.text, attempt)
                if g is not None:
                    done[k] = g
                elif attempt == last_attempt or (c.error and not c.retryable):
                    err = f"judge backend failed: {c.error}" if c.error else "unparseable judge output"
                    done[k] = Game(order=k[1], raw=c.text or "", attempts=attempt, error=err)
                else:
                    again.append(k)
            pending = again
            if not pending:
                break
        return [[done[(i, "ab")], done[(i, "ba")]] for i in range(len(battles))]

    def close(self) -> None:
        close: Callable | None = getattr(self.backend, "close", None)
        if close:
            close()
