"""Aggregate the games of a battle into (winner, score_a, score_b, margin).

Normally two games with positions swapped; Game.score_a / score_b already refer to the battle's a and b
whatever order was shown, so a judge's first-position bias pushes the two games in opposite directions
and averaging cancels it. With `judge.games = 1` the policies read the one game as it is.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

from arena_flywheel.events import Game

Outcome = tuple[str, float | None, float | None, float]
Policy = Callable[[list[Game], float], Outcome]
COMBINE = ("mean", "sum")


_PREF_POINTS = {"A>>B": 3, "A>B": 1, "A=B": 0, "B>A": -1, "B>>A": -3}
_LABEL = __import__("re").compile(r"\[\[([AB](?:>>|>|=)[AB]|[ABC])\]\]")
_MT_BENCH = {"A": "A>B", "B": "B>A", "C": "A=B"}  # MT-bench pairwise verdicts [[A]] / [[B]] / [[C]] (tie)


def parse_preference(raw: str) -> str | None:
    """The last verdict label in judge text: arena-hard "[[A>>B]]" style, or MT-bench "[[A]]"/"[[B]]"/"[[C]]"
    (read as A>B / B>A / A=B). A = the answer shown first."""
    labels = _LABEL.findall(raw or "")
    if not labels:
        return None
    label = _MT_BENCH.get(labels[-1], labels[-1])
    return label if label in _PREF_POINTS else None


def _has_scores(g: Game) -> bool:
    return g.score_a is not None and g.score_b is not None


def game_winner(g: Game) -> str | None:
    """The battle side that won one game (model_a / model_b / tie), from its scores or else its label;
    None when the game decided nothing (unparsed)."""
    if _has_scores(g):
        return "model_a" if g.score_a > g.score_b else "model_b" if g.score_b > g.score_a else "tie"
    label = g.preference or parse_preference(g.raw)
    if label is None:
        return None
    points = _PREF_POINTS[label]
    if points == 0:
        return "tie"
    shown_first, shown_second = ("model_a", "model_b") if g.order == "ab" else ("model_b", "model_a")
    return shown_first if points > 0 else shown_second


def _counted(games: list[Game]) -> bool:
    return len(games) in (1, 2)  # the pool always emits the configured number of games, failed ones included


def _valid(games: list[Game]) -> list[Game] | None:
    if not _counted(games) or any(game_winner(g) is None for g in games):
        return None  # never a silent tie: an unparsed game makes the battle "invalid"
    return games


def score_sum(games: list[Game], tie_margin: float = 0.0, combine: str = "mean") -> Outcome:
    """WizardArena: each answer's score over the games, combined by `combine` (judge.combine):
    "mean" (default): the mean of the games' scores, on one game's 1-10 scale;
    "sum": their sum, on a 2-20 scale with two games (1-10 with judge.games = 1).
    score_a, score_b and the margin |a - b| are on that scale, and so is `tie_margin`: a tie when the
    scores are equal or |a - b| < tie_margin."""
    if combine not in COMBINE:
        raise ValueError(f"judge.combine {combine!r}: use one of {', '.join(COMBINE)}")
    if not _counted(games) or not all(_has_scores(g) for g in games):
        return "invalid", None, None, 0.0
    a = sum(g.score_a for g in games)
    b = sum(g.score_b for g in games)
    if combine == "mean":
        a, b = a / len(games), b / len(games)
    diff = a - b
    if diff == 0 or abs(diff) < tie_margin:
        return "tie", a, b, abs(diff)
    return ("model_a" if diff > 0 else "model_b"), a, b, abs(diff)


def fastchat(games: list[Game], tie_margin: float = 0.0) -> Outcome:
    """MT-bench / FastChat: a win only when both games name the same winner; disagreement -> tie.
    Games judged with scores keep the averaged scores and their difference as the margin; games judged
    with labels (MT-bench [[A]]/[[B]]/[[C]]) have no scores, and a win has margin 1."""
    if _valid(games) is None:
        return "invalid", None, None, 0.0
    winners = {game_winner(g) for g in games}
    winner = winners.pop() if len(winners) == 1 else "tie"
    if all(_has_scores(g) for g in games):
        a = sum(g.score_a for g in games) / len(games)
        b = sum(g.score_b for g in games) / len(games)
        return winner, a, b, abs(a - b) if winner != "tie" else 0.0
    return winner, None, None, 1.0 if winner != "tie" else 0.0


POLICIES = {"score-sum": score_sum, "fastchat": fastchat}


def position_flip(games: list[Game]) -> bool | None:
    """True when the two games name different winners (a position-dependent judge); None if invalid or
    judged in one game (nothing to compare)."""
    if len(games) != 2 or _valid(games) is None:
        return None
    return game_winner(games[0]) != game_winner(games[1])


def arena_hard(games: list[Game], tie_margin: float = 0.0) -> Outcome:
    """Arena-Hard: each game is its own battle, a strong preference (>>) counts 3, a weak one 1.
    Points are summed for a over the games (labels flipped for the "ba" game); the sign gives the winner
    and |sum| (0-6) is reported as the margin; scores are None because the judge gives none."""
    points = 0
    for g in games:
        label = g.preference or parse_preference(g.raw)
        if label is None or label not in _PREF_POINTS:
            return "invalid", None, None, 0.0
        p = _PREF_POINTS[label]
        points += p if g.order == "ab" else -p
    if not _counted(games):
        return "invalid", None, None, 0.0
    if points == 0 or abs(points) < tie_margin:
        return "tie", None, None, float(abs(points))
    return ("model_a" if points > 0 else "model_b"), None, None, float(abs(points))


POLICIES["arena-hard"] = arena_hard


def policy_for(jc) -> Policy:
    """The configured policy of a judge section (`cfg.judge`) as `policy(games, tie_margin)`: score-sum
    with judge.combine bound (mean or sum), the others as they are. KeyError for an unknown policy."""
    policy = POLICIES[jc.policy]
    if policy is score_sum:
        return partial(score_sum, combine=getattr(jc, "combine", "mean"))
    return policy
