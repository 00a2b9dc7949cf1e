"""Judge health from verdicts: how much position and length, rather than quality, decide outcomes."""
from __future__ import annotations

from dataclasses import dataclass

from arena_flywheel.events import Verdict
from consumers.judging.policies import game_winner, position_flip


@dataclass
class JudgeHealth:
    verdicts: int = 0
    invalid: int = 0
    flips: int = 0
    paired: int = 0  # valid verdicts judged in both orders: the flip rate's denominator
    decided_games: int = 0
    first_position_wins: int = 0
    decided_verdicts: int = 0
    longer_wins: int = 0

    def add(self, v: Verdict, len_a: int | None = None, len_b: int | None = None) -> None:
        self.verdicts += 1
        if v.winner == "invalid":
            self.invalid += 1
            return
        flip = position_flip(v.games)
        if flip is not None:
            self.paired += 1
            self.flips += flip
        for g in v.games:
            w = game_winner(g)
            if w not in (None, "tie"):
                self.decided_games += 1
                shown_first = "model_a" if g.order == "ab" else "model_b"
                self.first_position_wins += w == shown_first
        if v.winner != "tie" and len_a is not None and len_b is not None and len_a != len_b:
            self.decided_verdicts += 1
            self.longer_wins += (v.winner == "model_a") == (len_a > len_b)

    def rates(self) -> dict[str, float]:
        """The summary without the count: what the dashboard and `arena watch` show."""
        return {k: v for k, v in self.summary().items() if k.endswith("_rate")}

    def summary(self) -> dict[str, float | int]:
        def rate(n, d):
            return round(n / d, 4) if d else 0.0
        valid = self.verdicts - self.invalid
        return {"verdicts": self.verdicts, "invalid_rate": rate(self.invalid, self.verdicts),
                "position_flip_rate": rate(self.flips, self.paired),
                # judged in one order only: position bias not cancelled per battle (judge.games = 1)
                "single_game_rate": rate(valid - self.paired, valid),
                "first_position_win_rate": rate(self.first_position_wins, self.decided_games),
                "longer_answer_win_rate": rate(self.longer_wins, self.decided_verdicts)}
