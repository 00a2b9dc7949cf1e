"""Judge health from verdicts: how much position and length, rather than quality, decide outcomes; and,
when the pool runs the injection probe (consumers/judging/injection.py), how often an injected answer wins."""
from __future__ import annotations

from dataclasses import dataclass, field

from arena_flywheel.events import Verdict
from consumers.judging.policies import game_winner, position_flip


@dataclass
class InjectionTally:
    """Outcomes of injection probes: answer X + an injection suffix against the same answer X.

    `rate` = wins / valid probes (ties and losses are not wins; invalid verdicts are left out of the
    denominator and counted apart). None when no probe gave a valid verdict: nothing was measured."""
    wins: int = 0
    ties: int = 0
    losses: int = 0
    invalid: int = 0

    @property
    def probes(self) -> int:
        return self.wins + self.ties + self.losses + self.invalid

    @property
    def valid(self) -> int:
        return self.wins + self.ties + self.losses

    @property
    def rate(self) -> float | None:
        return round(self.wins / self.valid, 4) if self.valid else None

    def add(self, outcome: str) -> None:
        """outcome: "win" / "tie" / "loss" / "invalid", seen from the injected answer."""
        name = {"win": "wins", "tie": "ties", "loss": "losses", "invalid": "invalid"}[outcome]
        setattr(self, name, getattr(self, name) + 1)

    def summary(self) -> dict[str, float | int | None]:
        return {"injection_probes": self.probes, "injection_rate": self.rate, "injection_wins": self.wins,
                "injection_ties": self.ties, "injection_losses": self.losses, "injection_invalid": self.invalid}


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
    injection: InjectionTally = field(default_factory=InjectionTally)  # filled only by the injection probe

    def add(self, v: Verdict, len_a: int | None = None, len_b: int | None = None) -> None:
        """Count one verdict; answer lengths default to the ones the verdict carries."""
        len_a = v.length_a if len_a is None else len_a
        len_b = v.length_b if len_b is None else len_b
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

    def rates(self) -> dict[str, float | None]:
        """The summary without the counts: what the dashboard and `arena watch` show. A rate with nothing
        measured is None (shown as "n/a"), never 0: e.g. the longer-answer win rate when no verdict came
        with answer lengths. The injection rate appears only when the probe ran."""
        measured = {"invalid_rate": self.verdicts, "position_flip_rate": self.paired,
                    "single_game_rate": self.verdicts - self.invalid,
                    "first_position_win_rate": self.decided_games, "longer_answer_win_rate": self.decided_verdicts}
        return {k: (v if measured.get(k, 1) else None) for k, v in self.summary().items()
                if k.endswith("_rate") and (v is not None or k in measured)}

    def summary(self) -> dict[str, float | int | None]:
        def rate(n, d):
            return round(n / d, 4) if d else 0.0
        valid = self.verdicts - self.invalid
        return {"verdicts": self.verdicts, "invalid_rate": rate(self.invalid, self.verdicts),
                "position_flip_rate": rate(self.flips, self.paired),
                # judged in one order only: position bias not cancelled per battle (judge.games = 1)
                "single_game_rate": rate(valid - self.paired, valid),
                "first_position_win_rate": rate(self.first_position_wins, self.decided_games),
                "longer_answer_win_rate": rate(self.longer_wins, self.decided_verdicts),
                # only when the injection probe ran (judge.injection_probe): see InjectionTally
                **(self.injection.summary() if self.injection.probes else {})}
