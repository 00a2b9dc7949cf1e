"""`arena iterations`: the flywheel's table, one row per round (each stage of each iteration: examples, loss,
rating vs its parent, the paper's Table 5 shape); `--pairs`: where the DPO pairs came from (its Table 7)."""
from __future__ import annotations

import json

from arena_flywheel.config import Config
from arena_flywheel.errors import need_broker
from arena_flywheel.events import Checkpoint
from arena_flywheel.kafka import read_checkpoints

from ..iterations import iteration_rows, ledger_checkpoints, pair_counts


def add_arguments(p) -> None:
    p.add_argument("--split", default="eval", choices=("eval", "train"),
                   help="verdict split the ratings come from (default eval)")
    p.add_argument("--json", action="store_true", help="JSON rows instead of a table")
    p.add_argument("--pairs", action="store_true", help="per dpo round, how many chosen and rejected answers "
                   "came from each battle model (the paper's Table 7)")
    p.add_argument("--db", metavar="URL", help="ledger URL (default: db.url / $ARENA_DB_URL)")
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
