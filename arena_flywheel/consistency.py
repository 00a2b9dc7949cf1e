"""How well a benchmark leaderboard agrees with a human arena leaderboard.

Metrics follow arena-hard-auto (arXiv 2406.11939): a pair of models is "separable" when their 95% confidence
intervals do not overlap. Agreement with confidence scores each benchmark-separable pair +1 when the reference
also separates it in the same order, -1 when the reference separates it in the opposite order, 0 when the
reference cannot separate it, averaged over benchmark-separable pairs. Strict agreement counts only the +1s.
Brier score and log-loss grade the benchmark's probability that model i beats model j (share of bootstrap
samples where it does, or the Elo-scale logistic of the score gap when no samples are given) against the
reference order. The Arena Learning paper's "consistency" is reported here as agreement with confidence in
percent (the paper does not spell its formula out; this is the arena-hard-auto number it cites).
"""
from __future__ import annotations

import csv
import itertools
import json
import math
import warnings
from pathlib import Path

from scipy import stats

from .errors import InputError



def _read_rows(path: Path) -> list[dict]:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    text = path.read_text()
    if path.suffix == ".csv":
        return list(csv.DictReader(text.splitlines()))
    stripped = text.strip()
    if stripped.startswith("["):
        return json.loads(stripped)
    if stripped.startswith("{") and "\n" not in stripped:
        data = json.loads(stripped)
        return data.get("leaderboard") or data.get("models") or [data]
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def load_board(path: Path, score_keys=("score", "rating")) -> dict[str, dict]:
    """model -> {score, lower, upper, samples}; accepts arena-hard, LMSYS and `arena leaderboard` shapes."""
    board = {}
    for row in _read_rows(Path(path)):
        key = next((k for k in score_keys if row.get(k) not in (None, "")), None)
        if "model" not in row or key is None:
            raise InputError(f"{path}: every row needs `model` and one of {', '.join(score_keys)}")
        score = float(row[key])
        lower = row.get("lower", row.get("rating_q025"))
        upper = row.get("upper", row.get("rating_q975"))
        samples = row.get("results")
        if isinstance(samples, str):
            samples = json.loads(samples) if samples.strip() else None
        board[row["model"]] = {
            "score": score,
            "lower": float(lower) if lower not in (None, "") else score,
            "upper": float(upper) if upper not in (None, "") else score,
            "samples": [float(s) for s in samples] if samples else None,
        }
    return board


def _separable(a: dict, b: dict) -> bool:
    return a["lower"] > b["upper"] or b["lower"] > a["upper"]


def _prob_first_wins(a: dict, b: dict) -> float:
    if a["samples"] and b["samples"] and len(a["samples"]) == len(b["samples"]):
        wins = sum((x > y) + 0.5 * (x == y) for x, y in zip(a["samples"], b["samples"]))
        return wins / len(a["samples"])
    return 1.0 / (1.0 + 10 ** ((b["score"] - a["score"]) / 400.0))


def compute(bench: dict, ref: dict, name_map: dict[str, str]) -> dict:
    missing_b = [m for m in name_map if m not in bench]
    missing_r = [r for r in name_map.values() if r not in ref]
    if missing_b or missing_r:
        parts = []
        if missing_b:
            parts.append("not in benchmark: " + ", ".join(missing_b))
        if missing_r:
            parts.append("not in reference: " + ", ".join(missing_r))
        raise InputError("name map names missing models (" + "; ".join(parts) + ")")
    models = list(name_map)
    if len(models) < 2:
        raise InputError("name map must pair at least two models")
    sep = agree = strict = 0
    brier = logloss = 0.0
    pairs = list(itertools.combinations(models, 2))
    eps = 1e-6
    for i, j in pairs:
        bi, bj, ri, rj = bench[i], bench[j], ref[name_map[i]], ref[name_map[j]]
        y = 1.0 if ri["score"] > rj["score"] else 0.0 if ri["score"] < rj["score"] else 0.5
        p = _prob_first_wins(bi, bj)
        brier += (p - y) ** 2
        pc = min(max(p, eps), 1 - eps)
        logloss += -(y * math.log(pc) + (1 - y) * math.log(1 - pc))
        if _separable(bi, bj):
            sep += 1
            if _separable(ri, rj):
                same = (bi["score"] > bj["score"]) == (ri["score"] > rj["score"])
                agree += 1 if same else -1
                strict += 1 if same else 0
    bs = [bench[m]["score"] for m in models]
    rs = [ref[name_map[m]]["score"] for m in models]
    n = len(pairs)
    agreement = agree / sep if sep else 0.0
    with warnings.catch_warnings():  # constant scores (all tied) make correlations undefined -> None
        warnings.simplefilter("ignore")
        rho, tau = stats.spearmanr(bs, rs).statistic, stats.kendalltau(bs, rs).statistic
    return {
        "models": len(models),
        "pairs": n,
        "separability": sep / n,
        "agreement_with_confidence": agreement,
        "strict_agreement": strict / sep if sep else 0.0,
        "spearman": None if math.isnan(rho) else float(rho),
        "kendall_tau": None if math.isnan(tau) else float(tau),
        "brier": brier / n,
        "log_loss": logloss / n,
        "consistency_percent": 100.0 * agreement,
    }
