"""A model as judge: any generation backend (transformers, vLLM, OpenAI-compatible) behind a template.

Each battle is played in the orders of the games protocol (consumers/judging/protocol.py: both orders by
default). All games of a polled batch go to the backend in one generate() call, so a batched backend judges at its batch size. Output that does not
parse is asked again (up to judge.max_parse_retries, sampled with a new seed: under greedy decoding a retry
at temperature 0 would repeat the same text), then kept as an `invalid` game
with its raw text: never a silent tie.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Hashable

from arena_flywheel.events import Battle, Game
from consumers.backends.base import Backend, GenerationRequest

from .parse import parse_scores
from .policies import parse_preference
from .protocol import orders_for, references, score_game, shown
from .templates import Template, neutralise


def conversation(battle: Battle, answers: list[str]) -> tuple[str, str]:
    """(question, answer) texts for the template: the whole conversation when it has several turns.
    Each turn's text has its markers neutralised first ("[Turn 2]" -> "(Turn 2)", "[System]" ->
    "(System)"; consumers/judging/templates.py), so only the labels added here are "[Turn k]" labels."""
    users = [neutralise(m.content, turns=True) for m in battle.messages if m.role == "user"]
    answers = [neutralise(a, turns=True) for a in answers]
    if len(users) <= 1 and len(answers) <= 1:
        return (users[0] if users else ""), (answers[-1] if answers else "")
    q = "\n\n".join(f"[Turn {k}] {u}" for k, u in enumerate(users, 1))
    a = "\n\n".join(f"[Turn {k}] {t}" for k, t in enumerate(answers, 1))
    return q, a


@dataclass
class Answer:
    value: Any  # what `parse` made of the text; None when it never parsed
    text: str  # the last text the backend gave
    attempts: int
    error: str | None = None  # the backend's error on the last attempt


RETRY_TEMPERATURE = 0.7  # retries of unparseable text under greedy decoding sample at this temperature


def retry_temperature(temperature: float, attempt: int) -> float:
    """The temperature of an attempt: the configured one first; a retry samples (the configured temperature
    when it is > 0, else RETRY_TEMPERATURE), since greedy decoding would repeat the same unparseable text."""
    return temperature if attempt == 1 or temperature > 0 else RETRY_TEMPERATURE


def ask(backend: Backend, prompts: dict[Hashable, str], parse: Callable[[str], Any], *, retries: int,
        max_new_tokens: int, temperature: float, request_id: Callable[[Hashable], str] = str) -> dict:
    """Send every prompt (one user turn) to the backend, all pending ones in one generate() call per
    attempt. Text that does not parse is asked again, up to `retries` more times, with sampling and a new
    seed per attempt (seed = attempt; temperature from `retry_temperature`: a greedy retry would repeat the
    same text); a backend error that cannot be retried stops at once. Returns {key: Answer}."""
    out: dict[Hashable, Answer] = {}
    pending, last_attempt = list(prompts), retries + 1
    for attempt in range(1, last_attempt + 1):
        temp = retry_temperature(temperature, attempt)
        reqs = [GenerationRequest(messages=[{"role": "user", "content": prompts[k]}], max_new_tokens=max_new_tokens,
                                  temperature=temp, seed=attempt, request_id=request_id(k)) for k in pending]
        again = []
        for k, c in zip(pending, backend.generate(reqs)):
            value = None if c.error else parse(c.text)
            if value is not None or attempt == last_attempt or (c.error and not c.retryable):
                out[k] = Answer(value, c.text or "", attempt, c.error)
            else:
                again.append(k)
        pending = again
        if not pending:
            break
    return out


class ModelJudge:
    def __init__(self, backend: Backend, template: Template, *, labels: bool = False, max_new_tokens: int = 512,
                 temperature: float = 0.0, max_parse_retries: int = 2, games: int = 2,
                 reference_template: Template | None = None, reference_categories: tuple[str, ...] = ()):
        self.backend = backend
        self.n_games = games
        self.template = template
        self.reference_template = reference_template
        self.reference_categories = set(reference_categories)
        self.labels = labels  # arena-hard style [[A>>B]] labels instead of two scores
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.max_parse_retries = max_parse_retries

    def template_for(self, battle: Battle) -> Template:
        """The reference-guided template for a battle with a reference in one of the reference categories
        (all categories when none are configured), else the template."""
        if self.reference_template and references(battle) and (
                not self.reference_categories or battle.category in self.reference_categories):
            return self.reference_template
        return self.template

    def _prompt(self, battle: Battle, order: str) -> str:
        first_turns, second_turns = shown(battle, order)
        q, first = conversation(battle, first_turns)
        _, second = conversation(battle, second_turns)
        refs = [neutralise(r, turns=True) for r in references(battle)]
        reference = refs[0] if len(refs) == 1 else "\n\n".join(f"[Turn {k}] {r}" for k, r in enumerate(refs, 1))
        return self.template_for(battle).render(q, first, second, reference=reference, turn_labels=True)

    def _parse(self, raw: str):
        """A label ("A>B"...) or the two scores in the order shown; None when the text does not parse."""
        return parse_preference(raw) if self.labels else parse_scores(raw)

    def _game(self, order: str, ans: Answer) -> Game:
        if ans.value is None:
            err = f"judge backend failed: {ans.error}" if ans.error else "unparseable judge output"
            return Game(order=order, raw=ans.text, attempts=ans.attempts, error=err)
        if self.labels:
            return Game(order=order, raw=ans.text, preference=ans.value, attempts=ans.attempts)
        return score_game(order, ans.text, ans.attempts)

    def games(self, battles: list[Battle]) -> list[list[Game]]:
        orders = [orders_for(b, self.n_games) for b in battles]
        prompts = {(i, o): self._prompt(b, o) for i, b in enumerate(battles) for o in orders[i]}
        answers = ask(self.backend, prompts, self._parse, retries=self.max_parse_retries,
                      max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                      request_id=lambda k: f"{battles[k[0]].id}:{k[1]}")
        return [[self._game(o, answers[(i, o)]) for o in orders[i]] for i in range(len(battles))]

    def close(self) -> None:
        close: Callable | None = getattr(self.backend, "close", None)
        if close:
            close()
