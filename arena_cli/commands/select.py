"""`arena select`: choose training data from a file of failures (pair-judge and the ablation baselines)."""
from __future__ import annotations

from pathlib import Path

from arena_flywheel.errors import UsageError
from arena_flywheel.events import BadEvent
from trainer.select import METHODS, read_failures, select, write_failures



def add_arguments(p) -> None:
    p.add_argument("--method", default="pair-judge", choices=METHODS)
    p.add_argument("--budget", type=int, default=None, help="how many to choose (default: all that qualify)")
    p.add_argument("--threshold", type=float, default=0.0, help="pair-judge: minimum margin the target lost by")
    p.add_argument("--seed", type=int, default=None, help="default: trainer.seed")
    p.add_argument("--model-path", help="ifd: the target model")
    p.add_argument("--from", dest="src", required=True, metavar="FILE", help="JSONL of Failure events")
    p.add_argument("--out", required=True, metavar="FILE", help="where the chosen failures go (JSONL)")


def run(args, cfg) -> int:
    if not Path(args.src).is_file():
        raise UsageError(f"--from {args.src!r}: no such file (a JSONL of Failure events)")
    if args.budget is not None and args.budget < 0:
        raise UsageError("--budget must be >= 0, e.g. --budget 100")
    if args.method == "ifd" and not args.model_path:
        raise UsageError("--method ifd needs --model-path DIR (the target model), or use --method ifd-proxy")
    try:
        pool = read_failures(args.src)
    except BadEvent as exc:
        raise UsageError(exc.reason) from None
    seed = cfg.trainer.seed if args.seed is None else args.seed
    chosen = select(pool, args.method, args.budget, threshold=args.threshold, seed=seed, model_path=args.model_path)
    write_failures(args.out, chosen)
    print(f"{len(chosen)} of {len(pool)} failures chosen by {args.method} -> {args.out}")
    return 0
