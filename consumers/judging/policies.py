"""Aggregate the two games of a battle (positions swapped) into (winner, score_a, score_b, margin).

Game.score_a / score_b already refer to the battle's a and b whatever order was shown, so a judge's
first-position bias pushes the two games in opposite directions and averaging cancels it.
"""
from __future__ import annotations

from arena_flywheel.events import Game

Outcome = tuple[str, float | None, float | None, float]


def _valid(games: list[Game]) -> list[Game] | None:
    if len(games) != 2 or any(g.score_a is None or g.score_b is None for g in games):
        return None  # never a silent tie: an unparsed game makes the battle "invalid"
    return games


def score_sum(games: list[Game], tie_margin: float = 0.0) -> Outcome:
    """WizardArena: average each answer's 1-10 score over both games; tie when |diff| < tie_margin or equal."""
    if _valid(games) is None:
        return "invalid", None, None, 0.0
    a = sum(g.score_a for g in games) / 2
    b = sum(g.score_b for g in games) / 2
    diff = a - b
    if diff == 0 or abs(diff) < tie_margin:
        return "tie", a, b, abs(diff)
    return ("model_a" if diff > 0 else "model_b"), a, b, abs(diff)


def _game_winner(g: Game) -> str:
    return "model_a" if g.score_a > g.score_b else "model_b" if g.score_b > g.score_a else "tie"


def fastchat(games: list[Game], tie_margin: float = 0.0) -> Outcome:
    """MT-bench / FastChat: a win only when both games name the same winner; disagreement -> tie."""
    if _valid(games) is None:
        return "invalid", None, None, 0.0
    w1, w2 = (_game_winner(g) for g in games)
    a = sum(g.score_a for g in games) / 2
    b = sum(g.score_b for g in games) / 2
    winner = w1 if w1 == w2 else "tie"
    return winner, a, b, abs(a - b) if winner != "tie" else 0.0


POLICIES = {"score-sum": score_sum, "fastchat": fastchat}


def position_flip(games: list[Game]) -> bool | None:
    """True when the two games name different winners (a position-dependent judge), None if invalid."""
    if _valid(games) is None:
        return None
    return _game_winner(games[0]) != _game_winner(games[1])


_PREF_POINTS = {"A>>B": 3, "A>B": 1, "A=B": 0, "B>A": -1, "B>>A": -3}
_LABEL = __import__("re").compile(r"\[\[([AB](?:>>|>|=)[AB])\]\]")


def parse_preference(raw: str) -> str | None:
    """The last "[[A>>B]]"-style label in arena-hard judge text (A = the answer shown first)."""
    labels = _LABEL.findall(raw or "")
    return labels[-1] if labels and labels[-1] in _PREF_POINTS else None


def arena_hard(games: list[Game], tie_margin: float = 0.0) -> Outcome:
    """Arena-Hard: each game is its own battle, a strong preference (>>) counts 3, a weak one 1.
    Points are summed for a over both games (labels flipped for the "ba" game); the sign gives the winner
    and |sum| (0-6) is reported as the margin; scores are None because the judge gives none."""
    points = 0
    for g in games:
        label = g.preference or parse_preference(g.raw)
        if label is None or label not in _PREF_POINTS:
            return "invalid", None, None, 0.0
        p = _PREF_POINTS[label]
        points += p if g.order == "ab" else -p
    if len(games) != 2:
        return "invalid", None, None, 0.0
    if points == 0 or abs(points) < tie_margin:
        return "tie", None, None, float(abs(points))
    return ("model_a" if points > 0 else "model_b"), None, None, float(abs(points))


POLICIES["arena-hard"] = arena_hard
