"""`arena report --out DIR`: PNG plots and leaderboard tables from the ledger."""
from __future__ import annotations

from arena_flywheel.config import Config

from ..report import write_report



def add_arguments(p) -> None:
    p.add_argument("--out", required=True, help="directory for ratings.png, iterations.png, leaderboard.md/.csv")
    p.add_argument("--db", metavar="URL", help="ledger URL (default: db.url / $ARENA_DB_URL)")
    p.add_argument("--split", default="eval", choices=("eval", "train"), help="verdicts to rate (default eval)")


def run(args, cfg: Config) -> int:
    out = write_report(cfg, args.out, args.split)
    files = sorted(p.name for p in out.iterdir())
    print(f"report in {out}: {', '.join(files)}")
    return 0
