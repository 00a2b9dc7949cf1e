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

import itertools
import math
import warnings
from pathlib import Path

from scipy import stats

from .errors import InputError
from .records import limits_of, read_records
from .safejson import JSONLimitError, loads

_BOARD_KEYS = ("leaderboard", "models", "data")


def _read_rows(path: Path, limits=None) -> list[tuple[str, dict]]:
    """(location, row) of a leaderboard file: CSV, a JSON list, {"leaderboard"|"models": [...]}, or JSONL;
    one InputError for the first bad row or a broken file."""
    rows = []
    for rec in read_records(path, limits, name=str(path), sniff=True, unwrap=_BOARD_KEYS, single_object=True):
        if rec.error:
            raise InputError(f"{rec.source}: {rec.error}")
        rows.append((rec.source, rec.data))
    if len(rows) == 1:  # one JSON line holding the whole board
        where, only = rows[0]
        inner = next((only[k] for k in _BOARD_KEYS if isinstance(only.get(k), list)), None)
        if inner is not None:
            key = next(k for k in _BOARD_KEYS if only.get(k) is inner)
            rows = [(f"{where}.{key}[{i}]", r) for i, r in enumerate(inner)]
            bad = next(((w, r) for w, r in rows if not isinstance(r, dict)), None)
            if bad is not None:
                raise InputError(f"{bad[0]}: expected a JSON object, got {type(bad[1]).__name__}")
    return rows


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _number(value, what: str, where: str) -> float:
    if isinstance(value, bool):
        raise InputError(f"{where}: {what} {_short(value)} is not a number")
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{where}: {what} {_short(value)} is not a number") from None
    if not math.isfinite(v):
        raise InputError(f"{where}: {what} {_short(value)} is not a finite number")
    return v


def load_board(path: Path, score_keys=("score", "rating"), limits=None) -> dict[str, dict]:
    """model -> {score, lower, upper, samples}; accepts arena-hard, LMSYS and `arena leaderboard` shapes.
    A malformed file or row (not a number, bad JSON or UTF-8, too deep, a huge integer) is one InputError
    naming its location."""
    lim = limits_of(limits)
    board = {}
    for where, row in _read_rows(Path(path), lim):
        key = next((k for k in score_keys if row.get(k) not in (None, "")), None)
        if "model" not in row or key is None:
            raise InputError(f"{where}: every row needs `model` and one of {', '.join(score_keys)}")
        model = row["model"]
        if not isinstance(model, str) or not model:
            raise InputError(f"{where}: model {_short(model)} is not a name")
        score = _number(row[key], key, where)
        lower = row.get("lower", row.get("rating_q025"))
        upper = row.get("upper", row.get("rating_q975"))
        samples = row.get("results")
        if isinstance(samples, str):
            try:
                samples = loads(samples, max_bytes=lim.max_record_bytes, max_depth=lim.max_depth,
                                max_int_digits=lim.max_int_digits) if samples.strip() else None
            except JSONLimitError as exc:
                raise InputError(f"{where}: results: {exc}") from None
        if samples is not None and not isinstance(samples, list):
            raise InputError(f"{where}: results must be a list of numbers, not {type(samples).__name__}")
        board[model] = {
            "score": score,
            "lower": _number(lower, "lower", where) if lower not in (None, "") else score,
            "upper": _number(upper, "upper", where) if upper not in (None, "") else score,
            "samples": [_number(s, "results", where) for s in samples] if samples else None,
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
