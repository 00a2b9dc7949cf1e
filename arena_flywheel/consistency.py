"""How well a benchmark leaderboard agrees with a human arena leaderboard, with arena-hard-auto's definitions.

The definitions are those of the notebook arena-hard-auto used for the table in its paper (arXiv 2406.11939,
notebook/benchmark_statistics.ipynb), over the pairs of models the name map pairs (docs/testset.md):

- An interval is a board's 95% confidence interval: its `lower`/`upper` (`rating_q025`/`rating_q975`), or
  the 2.5th/97.5th percentiles of its bootstrap `results` when it gives samples but no bounds, or the point
  score when it gives neither. A board SEPARATES a pair when the two intervals do not overlap: one model's
  lower bound is at or above the other's upper bound (intervals that only touch are separated, as in the
  notebook; two identical point intervals are a tie, not separated).
- separability: share of all pairs the benchmark separates.
- agreement_with_confidence: over the pairs the REFERENCE separates, 1 when the benchmark separates them in
  the same order, 0.5 when the benchmark's intervals overlap, 0 when it separates them in the opposite
  order; the mean (None when the reference separates no pair). As the notebook's agreement cell computes it
  (`get_overlap`; read in notebook/benchmark_for_benchmarks.ipynb at commit c39d1b7), "separates" here means the two intervals share no stretch of positive length, so a point
  interval inside another (the reference's anchor, CI [1114, 1114]; a benchmark's baseline at exactly 50) is
  separated from it, and the order of a separated pair is that of the (lower, upper) tuples; the separability
  cell counts such a pair as overlapping, and so does `separation()` below. This is what makes the paper's
  160/177 = 0.9040 (see agreement_separation).
- strict_agreement: share of all pairs whose point scores are in the same strict order on both boards.
- spearman (and the extra kendall_tau): rank correlation of the point scores (None when undefined).
- brier: mean over all pairs of (P - y)^2 with P = Phi((mu_a - mu_b) / sqrt(var_a + var_b)), the normal
  approximation of the two models' bootstrap distributions (mean and population variance of `results`;
  without samples, mu = score and sigma = (upper - lower) / (2 * 1.96)), and y = 1 when the reference
  rates a above b, 0 below, 0.5 on a tie. Extras: log_loss (same P and y) and brier_reference_separable
  (the Brier score over the pairs the reference separates only).

The Arena Learning paper (arXiv 2407.10627) Table 2 reports Spearman, "human agreement with 95% CI"
(= agreement_with_confidence) and "differentiation with 95% CI" (= separability); its "average consistency"
reads as their mean. They are reported again under `arena_learning_*` keys, labelled as the paper labels them.
"""
from __future__ import annotations

import itertools
import math
import warnings
from pathlib import Path

import numpy as np
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
    lower/upper: the row's (`lower`/`upper` or `rating_q025`/`rating_q975`), else the 2.5th/97.5th
    percentiles of its bootstrap `results`, else the score.
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
        samples = [_number(s, "results", where) for s in samples] if samples else None
        # a bound the row does not give: the bootstrap percentile, else the point score
        lo, hi = (float(v) for v in np.percentile(samples, [2.5, 97.5])) if samples else (score, score)
        lower = _number(lower, "lower", where) if lower not in (None, "") else lo
        upper = _number(upper, "upper", where) if upper not in (None, "") else hi
        if lower > upper:
            raise InputError(f"{where}: lower {lower:g} is above upper {upper:g}")
        board[model] = {"score": score, "lower": lower, "upper": upper, "samples": samples}
    return board


Z95 = 1.959963984540054  # Phi^-1(0.975): a 95% interval is mu +- Z95 * sigma
_EPS = float(np.finfo(np.float64).eps)  # log-loss clipping, as sklearn's log_loss(eps="auto") on float64

ARENA_HARD_KEYS = ("separability", "agreement_with_confidence", "strict_agreement", "spearman", "brier")
EXTRA_KEYS = ("kendall_tau", "log_loss", "brier_reference_separable")
ARENA_LEARNING_KEYS = ("arena_learning_spearman", "arena_learning_human_agreement_95ci",
                       "arena_learning_differentiation_95ci", "arena_learning_average_consistency")
GROUPS = {  # how `arena consistency` groups the keys of compute() in its table
    "pairs": ("models", "pairs", "reference_separable_pairs"),
    "arena-hard-auto (arXiv 2406.11939)": ARENA_HARD_KEYS,
    "Arena Learning Table 2 (arXiv 2407.10627): their mean is the average consistency": ARENA_LEARNING_KEYS,
    "extras": EXTRA_KEYS,
}


def separation(a: dict, b: dict) -> int:
    """+1 when a's 95% interval lies above b's, -1 when below, 0 when they overlap. Intervals that only
    touch are separated (arena-hard-auto's notebook); identical intervals (a tie of two points) are not."""
    if (a["lower"], a["upper"]) == (b["lower"], b["upper"]):
        return 0
    if a["lower"] >= b["upper"]:
        return 1
    if b["lower"] >= a["upper"]:
        return -1
    return 0


def agreement_separation(a: dict, b: dict) -> tuple[bool, int]:
    """(separated, order) as the notebook's agreement cell decides them: separated when the intervals overlap
    by no positive length (max(0, min(upper) - max(lower)) == 0: touching, disjoint, or a point inside or at
    an interval); order +1 / -1 when a's (lower, upper) is above / below b's, 0 when they are equal (two equal
    points: separated, but in no order, so such a pair scores 0 on either side)."""
    if min(a["upper"], b["upper"]) - max(a["lower"], b["lower"]) > 0:
        return False, 0
    ta, tb = (a["lower"], a["upper"]), (b["lower"], b["upper"])
    return True, (ta > tb) - (ta < tb)


def _normal(e: dict) -> tuple[float, float]:
    """(mean, variance) of a model's score: its bootstrap samples (population variance, as np.var), or
    the point score with sigma read off its 95% interval."""
    if e.get("samples"):
        return float(np.mean(e["samples"])), float(np.var(e["samples"]))
    return e["score"], ((e["upper"] - e["lower"]) / (2 * Z95)) ** 2


def prob_above(a: dict, b: dict) -> float:
    """P(a ranks above b) = Phi((mu_a - mu_b) / sqrt(var_a + var_b)); a step when both variances are 0."""
    (ma, va), (mb, vb) = _normal(a), _normal(b)
    d, s = ma - mb, math.sqrt(va + vb)
    if s == 0:
        return 1.0 if d > 0 else 0.0 if d < 0 else 0.5
    return 0.5 * math.erfc(-d / (s * math.sqrt(2)))


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def compute(bench: dict, ref: dict, name_map: dict[str, str]) -> dict:
    """The metrics of the module docstring for the models `name_map` pairs ({benchmark name: reference
    name}); a name missing from either board, or fewer than two models, is one InputError."""
    bad = next((k for k, v in name_map.items() if not isinstance(k, str) or not isinstance(v, str)), None)
    if bad is not None:
        raise InputError(f"name map entry {_short(bad)}: {_short(name_map[bad])} must map a name to a name")
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
    pairs = list(itertools.combinations(models, 2))
    bench_sep = strict = 0
    agreement, brier, brier_ref_sep, logloss = [], [], [], []
    for i, j in pairs:
        bi, bj, ri, rj = bench[i], bench[j], ref[name_map[i]], ref[name_map[j]]
        bench_sep += separation(bi, bj) != 0
        order = _sign(ri["score"] - rj["score"])
        strict += order != 0 and _sign(bi["score"] - bj["score"]) == order
        ref_sep, r = agreement_separation(ri, rj)
        if ref_sep:
            bench_apart, s = agreement_separation(bi, bj)
            agreement.append(0.5 if not bench_apart else 1.0 if s != 0 and s == r else 0.0)
        p, y = prob_above(bi, bj), (order + 1) / 2  # y: 1 when the reference rates i above j, 0.5 on a tie
        brier.append((p - y) ** 2)
        if ref_sep:
            brier_ref_sep.append((p - y) ** 2)
        pc = min(max(p, _EPS), 1 - _EPS)
        logloss.append(-(y * math.log(pc) + (1 - y) * math.log(1 - pc)))
    bs = [bench[m]["score"] for m in models]
    rs = [ref[name_map[m]]["score"] for m in models]
    with warnings.catch_warnings():  # constant scores (all tied) make correlations undefined -> None
        warnings.simplefilter("ignore")
        rho, tau = stats.spearmanr(bs, rs).statistic, stats.kendalltau(bs, rs).statistic
    rho = None if math.isnan(rho) else float(rho)
    tau = None if math.isnan(tau) else float(tau)
    n = len(pairs)
    separability, awc = bench_sep / n, _mean(agreement)
    triple = (rho, awc, separability)
    return {
        "models": len(models),
        "pairs": n,
        "reference_separable_pairs": len(agreement),
        "separability": separability,
        "agreement_with_confidence": awc,
        "strict_agreement": strict / n,
        "spearman": rho,
        "brier": _mean(brier),
        "kendall_tau": tau,
        "log_loss": _mean(logloss),
        "brier_reference_separable": _mean(brier_ref_sep),
        "arena_learning_spearman": rho,
        "arena_learning_human_agreement_95ci": awc,
        "arena_learning_differentiation_95ci": separability,
        "arena_learning_average_consistency": None if None in triple else sum(triple) / 3,
    }
