"""The games protocol: which orders a battle is judged in, and playing them with a text judge.

Two games (the default): a shown first ("ab"), then b shown first ("ba"); a first-position bias pushes the
two games in opposite directions and the policy's aggregation cancels it per battle. One game
(`judge.games = 1`): half the battles are shown "ab" and half "ba", picked from the battle id, so the
bias only averages out over many battles; the verdict carries one game and `JudgeInfo.games = 1`.
"""
from __future__ import annotations

import hashlib
from typing import Callable

from arena_flywheel.events import Battle, Game

from .parse import parse_scores

BOTH = ("ab", "ba")


def one_order(battle_id: str) -> str:
    """The order of a battle's single game: stable per battle, "ab" for about half of all battles."""
    return "ab" if hashlib.sha256(battle_id.encode()).digest()[0] % 2 == 0 else "ba"


def orders_for(battle: Battle, games: int) -> tuple[str, ...]:
    return BOTH if games == 2 else (one_order(battle.id),)


def shown(battle: Battle, order: str) -> tuple[list[str], list[str]]:
    """(answers shown first, answers shown second): each side's whole list of turns."""
    a, b = battle.a.answers, battle.b.answers
    return (a, b) if order == "ab" else (b, a)


def references(battle: Battle) -> list[str]:
    """The instruction's reference answers: one per turn when recorded so, else the one reference."""
    return list(battle.references or ([battle.reference] if battle.reference else []))


def score_game(order: str, raw: str, attempts: int = 1) -> Game:
    """A game from dual-score text; the two scores (in the order shown) mapped back to a and b."""
    scores = parse_scores(raw)
    if scores is None:
        return Game(order=order, raw=raw, attempts=attempts, error="unparseable judge output")
    sa, sb = scores if order == "ab" else scores[::-1]
    return Game(order=order, raw=raw, score_a=sa, score_b=sb, attempts=attempts)


JudgeFn = Callable[[Battle, str, str], str]


def play_games(battle: Battle, judge: JudgeFn, max_parse_retries: int = 0, orders=BOTH) -> list[Game]:
    """Ask `judge` (text in, dual-score text out) for each order of the last answers, retrying text that
    does not parse."""
    games = []
    for order in orders:
        first, second = (s[-1] for s in shown(battle, order))
        for attempt in range(1, max_parse_retries + 2):
            game = score_game(order, judge(battle, first, second), attempt)
            if game.error is None:
                break
        games.append(game)
    return games
