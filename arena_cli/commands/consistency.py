"""`arena consistency`: agreement of a benchmark leaderboard with a human arena: arena-hard-auto's metrics and
the Arena Learning paper's triple (arena_flywheel/consistency.py, docs/testset.md)."""
from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from arena_flywheel.consistency import GROUPS, compute, load_board
from arena_flywheel.errors import UsageError


def add_arguments(parser) -> None:
    parser.add_argument("--benchmark", required=True, type=Path, help="benchmark leaderboard (CSV/JSONL/JSON)")
    parser.add_argument("--reference", required=True, type=Path, help="human arena leaderboard CSV")
    parser.add_argument("--name-map", required=True, type=Path, help="JSON {benchmark name: reference name}")
    parser.add_argument("--format", choices=("table", "json"), default="table")


def run(args, cfg) -> int:
    try:
        name_map = json.loads(Path(args.name_map).read_text())
    except (OSError, ValueError, RecursionError) as exc:  # unreadable, not UTF-8, not JSON, too deep
        raise UsageError(f"--name-map {args.name_map}: {exc}") from None
    if not isinstance(name_map, dict):
        raise UsageError("--name-map must be a JSON object {benchmark name: reference name}")
    result = compute(load_board(args.benchmark), load_board(args.reference, ("rating", "score")), name_map)
    if args.format == "json":
        print(json.dumps(result, indent=2))
        return 0
    console = Console()
    for title, keys in GROUPS.items():  # one table per group: arena-hard-auto, Arena Learning, extras
        table = Table(title=f"benchmark vs reference: {title}")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for k in keys:
            v = result[k]
            table.add_row(k, "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v))
        console.print(table)
    return 0
