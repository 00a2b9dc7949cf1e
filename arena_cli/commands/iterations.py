"""`arena iterations`: the flywheel's table, one row per round (each stage of each iteration: examples, loss,
rating vs its parent, the paper's Table 5 shape); `--pairs`: where the DPO pairs came from (its Table 7)."""
from __future__ import annotations

import json
import logging

from arena_flywheel.config import Config
from arena_flywheel.errors import need_broker
from arena_flywheel.events import Checkpoint, competitor_name
from arena_flywheel.kafka import read_checkpoints
from arena_flywheel.ratings import BradleyTerry
from arena_flywheel.store import LedgerStore, open_ledger

log = logging.getLogger(__name__)


def iteration_rows(cfg: Config, checkpoints: list[Checkpoint], split: str = "eval") -> tuple[list[dict], str]:
    """One row per checkpoint (failures used, train loss, rating/CI vs its parent when verdicts exist),
    and a note saying where ratings came from or why there are none."""
    ratings, note = {}, ""
    try:
        with open_ledger(cfg.db.url) as store:
            triples = store.battles(split)
        ratings = {r.model: r for r in BradleyTerry.from_config(cfg.ratings).leaderboard_of_battles(triples)}
        note = f"ratings: BT over {len(triples)} {split} verdicts in {cfg.db.url}"
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


def add_arguments(p) -> None:
    p.add_argument("--split", default="eval", help="verdict split the ratings come from (default eval)")
    p.add_argument("--json", action="store_true", help="JSON rows instead of a table")
    p.add_argument("--pairs", action="store_true", help="per dpo round, how many chosen and rejected answers "
                   "came from each battle model (the paper's Table 7)")
    p.add_argument("--from-topic", action="store_true", help="read checkpoints from the checkpoints topic "
                   "(default: the ledger when it has any, else the topic)")


def run(args, cfg: Config) -> int:
    checkpoints = None if args.from_topic else ledger_checkpoints(cfg.db.url)
    if not checkpoints:
        need_broker(cfg, "arena iterations", f"; or run `arena ledger` so that {cfg.db.url} holds the checkpoints")
        checkpoints = read_checkpoints(cfg)
    rows, note = iteration_rows(cfg, checkpoints, args.split)
    if args.pairs:
        return _print_pairs(checkpoints, args.json)
    if args.json:
        print(json.dumps({"rows": rows, "note": note}, indent=1))
        return 0

    def f(v, fmt="{:.3f}"):
        return "-" if v is None else fmt.format(v) if isinstance(v, float) else str(v)

    print(f"{'model':12s} {'it':>3s} {'stage':6s} {'checkpoint':12s} {'examples':>8s} {'loss':>8s} "
          f"{'rating':>7s} {'95% CI':>13s} {'vs parent':>9s}")
    for r in rows:
        ci = "-" if r["lower"] is None else f"{r['lower']:.0f}..{r['upper']:.0f}"
        print(f"{r['model']:12s} {r['iteration']:>3d} {r['stage']:6s} {r['checkpoint']:12s} "
              f"{f(r['examples']):>8s} {f(r['train_loss']):>8s} {f(r['rating'], '{:.0f}'):>7s} {ci:>13s} "
              f"{f(r['vs_parent'], '{:+.0f}'):>9s}")
    if not rows:
        print("(no checkpoints yet)")
    print(note)
    return 0


def pair_counts(checkpoints: list[Checkpoint]) -> list[dict]:
    """Per dpo checkpoint: {checkpoint, iteration, chosen: {model: n}, rejected: {model: n}}."""
    return [{"model": ck.model, "checkpoint": ck.checkpoint, "iteration": ck.iteration,
             "chosen": dict((ck.metrics.get("pairs") or {}).get("chosen", {})),
             "rejected": dict((ck.metrics.get("pairs") or {}).get("rejected", {}))}
            for ck in checkpoints if ck.stage == "dpo"]


def _print_pairs(checkpoints: list[Checkpoint], as_json: bool) -> int:
    table = pair_counts(checkpoints)
    if as_json:
        print(json.dumps(table, indent=1))
        return 0
    if not table:
        print("(no dpo rounds yet)")
        return 0
    for t in table:
        models = sorted(set(t["chosen"]) | set(t["rejected"]))
        print(f"{t['model']}@{t['checkpoint']} (iteration {t['iteration']}): {sum(t['chosen'].values())} pairs")
        print(f"  {'battle model':24s} {'chosen':>7s} {'rejected':>9s}")
        for m in models:
            print(f"  {m:24s} {t['chosen'].get(m, 0):>7d} {t['rejected'].get(m, 0):>9d}")
    return 0
