"""`arena ablation`: the paper's selection ablation (Table 3) on the demo's zoo (trainer/ablation.py).

The zoo's weakest model is the base and the target, the three stronger ones its fixed opponents, the demo's
reference judge judges, the demo's SFT settings train. Results: <out>/ablation.json and ablation.md, which
`arena report` draws.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from arena_flywheel.broker import kafka_for
from arena_flywheel.config import Config
from arena_flywheel.errors import UsageError
from producers import tasks
from trainer.ablation import run_ablation, write_result
from trainer.select import METHODS

from ..demo import FAST_PLAN, _quiet_libraries, demo_config
from ..zoo import DEMO, build_zoo

DEFAULT_METHODS = ("pair-judge", "random", "kmeans", "length", "ifd", "tags")


@dataclass(frozen=True)
class Sizes:
    slice: int  # instructions the target battles: the pool every method chooses from
    budget: int
    eval: int


FULL = Sizes(slice=300, budget=100, eval=100)
FAST = Sizes(slice=40, budget=12, eval=20)  # the test suite's


def add_arguments(p) -> None:
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"comma-separated, from {', '.join(METHODS)} (default: {','.join(DEFAULT_METHODS)})")
    p.add_argument("--budget", type=int, default=None, help=f"examples per method (default {FULL.budget}; "
                                                          f"--fast {FAST.budget})")
    p.add_argument("--slice", type=int, default=None, help=f"training instructions the target battles "
                                                         f"(default {FULL.slice}; --fast {FAST.slice})")
    p.add_argument("--eval", type=int, default=None, help=f"eval instructions the checkpoints are rated on "
                                                        f"(default {FULL.eval}; --fast {FAST.eval})")
    p.add_argument("--fast", action="store_true", help="a small run (the test suite's)")
    p.add_argument("--seed", type=int, default=None, help="selection seed (default: trainer.seed)")
    p.add_argument("--out", metavar="DIR", help="where checkpoints and ablation.json/.md go "
                                                "(default: <data_dir>/ablation)")
    p.add_argument("--zoo-cache", metavar="DIR", help="the demo's zoo cache (default: $ARENA_ZOO_CACHE or "
                                                     "~/.cache/arena-flywheel/zoo)")


def run(args, cfg: Config) -> int:
    sizes = FAST if args.fast else FULL
    budget = sizes.budget if args.budget is None else args.budget
    n_slice = sizes.slice if args.slice is None else args.slice
    n_eval = sizes.eval if args.eval is None else args.eval
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise UsageError(f"--methods: unknown method {bad[0] if bad else '(none)'}; known: {', '.join(METHODS)}")
    if len(set(methods)) != len(methods):
        raise UsageError("--methods: a method is listed twice")
    for name, v in (("--budget", budget), ("--slice", n_slice), ("--eval", n_eval)):
        if v < 1:
            raise UsageError(f"{name} must be at least 1, e.g. {name} 20")
    if budget > n_slice:
        raise UsageError(f"--budget {budget} is larger than the slice ({n_slice}): every method would take it all")
    out = Path(args.out or Path(cfg.data_dir) / "ablation").resolve()
    console = Console()
    if not console.is_terminal:  # a pipe or a log: rich's 80 columns would fold the method names
        console = Console(width=120)
    t0 = time.monotonic()

    def say(msg: str) -> None:
        console.print(f"[{time.monotonic() - t0:6.1f}s] {msg}", highlight=False, soft_wrap=True)

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _quiet_libraries()
    zoo = build_zoo(Path(args.zoo_cache) if args.zoo_cache else None, DEMO,
                    progress=lambda n, steps: say(f"zoo model {n!r} ready after {steps} SFT steps"))
    # The demo's competitors, judge and SFT settings; a topic prefix of its own (its judge pool joins a group).
    run_cfg = demo_config(cfg, out, zoo, FAST_PLAN)
    run_cfg.kafka = cfg.kafka.model_copy(update={"topic_prefix": f"{cfg.kafka.topic_prefix}ablation."})
    run_cfg.trainer.output_dir = str(out / "checkpoints")
    comps = {c.name: c for c in run_cfg.competitors}
    target, opponents = comps["target"], [c for n, c in comps.items() if n != "target"]
    eval_set = list(tasks.generate(n_eval, seed=1, split="eval"))
    train = list(tasks.generate(n_slice, seed=2, split="train", exclude={i.messages[0].content for i in eval_set}))
    seed = cfg.trainer.seed if args.seed is None else args.seed
    with kafka_for(run_cfg) as (run_cfg, _embedded):
        result = run_ablation(run_cfg, target=target, opponents=opponents, train=train, eval_set=eval_set,
                              methods=methods, budget=budget, seed=seed, say=say)
    result["elapsed_s"] = round(time.monotonic() - t0, 1)  # the whole command, zoo and broker included
    path = write_result(result, out)
    print_table(console, result)
    console.print(f"{result['elapsed_s']:.0f} s; table and data: {path.parent / 'ablation.md'}, {path}")
    return 0


def print_table(console, result: dict) -> None:
    s = result["settings"]
    t = Table(title=f"selection ablation: {s['budget']} examples per method from a slice of {s['slice']}, rated on "
                    f"{s['eval']} eval instructions vs {', '.join(s['opponents'])} (95% bootstrap CI)",
              title_justify="left")
    for col in ("method", "examples", "rating", "95% CI", "win rate vs base", "select s", "train s"):
        t.add_column(col, justify="left" if col == "method" else "right", no_wrap=col != "method")
    for r in result["rows"]:
        wr = "" if r["win_rate_vs_base"] is None else f"{r['win_rate_vs_base']:.1%} ({r['battles_vs_base']})"
        t.add_row(r["label"], str(r["examples"]), f"{r['rating']:.0f}", f"{r['lower']:.0f} .. {r['upper']:.0f}", wr,
                  *(("", "") if r["method"] == "base" else (f"{r['select_s']:.1f}", f"{r['train_s']:.1f}")))
    console.print(t)
