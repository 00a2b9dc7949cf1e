"""The flywheel's iteration table, shared by `arena iterations` and the demo's final table so the two
always agree: one fit of the ledger's verdicts, pinned on the fixed opponents.

Why pinned: a Bradley-Terry fit is defined only up to a shift. Centred on the mean of all models (the
leaderboard's default), every checkpoint that joins moves the mean and so every earlier checkpoint's number
(977, then 962 for the same checkpoint on a demo ledger). Pinning one fixed opponent helps less than one
would think: the opponents' positions relative to each other are re-estimated from each new checkpoint's
battles, and the pinned one carries that noise into every row. The mean of all fixed opponents is what each
checkpoint was measured against, and stays put: in a simulation (tests/test_user_edges.py's arena, 12
seeds, a stronger checkpoint joining) a checkpoint's rating moved by 1.6 Elo on average (max 2.9) pinned
on the opponents' mean, 11-27 (max 43) pinned on one opponent, 56 centred.
"""
from __future__ import annotations

import logging

from arena_flywheel.config import Config
from arena_flywheel.events import Checkpoint, competitor_name
from arena_flywheel.ratings import BradleyTerry, PairCounts
from arena_flywheel.store import LedgerStore, open_ledger

log = logging.getLogger(__name__)


def describe_anchor(anchor: str | tuple[str, ...] | None, rating: float) -> str:
    if anchor is None:
        return "centred (no fixed opponent to pin)"
    if isinstance(anchor, str):
        return f"anchored: {anchor} = {rating:g}"
    return f"anchored: mean of {', '.join(anchor)} = {rating:g}"


def anchored_board(cfg: Config, store: LedgerStore, split: str,
                   trained: set[str]) -> tuple[dict, str | tuple[str, ...] | None, int]:
    """{competitor: Row} of the split's verdicts with the default anchor pinned, the anchor, verdict count."""
    counts = PairCounts()
    n = 0
    for a, b, w, k in store.battle_counts(split):
        counts.add(a, b, w, n=k)
        n += k
    bt = BradleyTerry.from_config(cfg.ratings).pinned(counts.models, trained)
    anchor = bt.anchor
    if isinstance(anchor, str) and anchor not in counts.models:
        anchor = None  # a configured anchor without battles yet pins nothing: the fit is centred
    return {r.model: r for r in bt.leaderboard(counts)} if n else {}, anchor, n


def iteration_rows(cfg: Config, checkpoints: list[Checkpoint], split: str = "eval") -> tuple[list[dict], str]:
    """One row per checkpoint (examples, train loss, rating/CI vs its parent when verdicts exist), and a
    note saying where ratings came from (and which opponent is pinned) or why there are none."""
    ratings, note = {}, ""
    try:
        with open_ledger(cfg.db.url) as store:
            ratings, anchor, n = anchored_board(cfg, store, split, {c.model for c in checkpoints})
        note = (f"ratings: BT over {n} {split} verdicts in {cfg.db.url}; "
                f"{describe_anchor(anchor, cfg.ratings.anchor_rating)}")
    except Exception as exc:  # noqa: BLE001 - the table is still useful without ratings
        note = f"no ratings: {exc}"

    rows = []
    for ck in checkpoints:
        me, parent = ratings.get(competitor_name(ck.model, ck.checkpoint)), \
            ratings.get(competitor_name(ck.model, ck.parent or "base"))
        rows.append({"model": ck.model, "iteration": ck.iteration, "stage": ck.stage, "checkpoint": ck.checkpoint,
                     "parent": ck.parent,
                     "examples": ck.metrics.get("examples", ck.metrics.get("failures_used")),
                     "train_loss": ck.metrics.get("train_loss"),
                     "rating": me.rating if me else None, "lower": me.lower if me else None,
                     "upper": me.upper if me else None,
                     "vs_parent": (me.rating - parent.rating) if me and parent else None})
    return rows, note


def ledger_checkpoints(url: str) -> list[Checkpoint] | None:
    """Checkpoint events from the ledger (the durable copy: Tansu keeps topics in memory only), or None
    when there is no ledger to read (no such database)."""
    try:
        store = LedgerStore(url, create=False)
    except (FileNotFoundError, ValueError):
        return None
    try:
        return list(store.events("checkpoint"))
    except Exception as exc:  # noqa: BLE001 - e.g. a ledger without a checkpoint table yet
        log.debug("ledger checkpoints unreadable: %s", exc)
        return None
    finally:
        store.close()


def pair_counts(checkpoints: list[Checkpoint]) -> list[dict]:
    """Per dpo checkpoint: {checkpoint, iteration, chosen: {model: n}, rejected: {model: n}}."""
    return [{"model": ck.model, "checkpoint": ck.checkpoint, "iteration": ck.iteration,
             "chosen": dict((ck.metrics.get("pairs") or {}).get("chosen", {})),
             "rejected": dict((ck.metrics.get("pairs") or {}).get("rejected", {}))}
            for ck in checkpoints if ck.stage == "dpo"]
