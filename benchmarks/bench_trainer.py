"""Trainer speed: every selection method on a large failure pool, and each TRL stage on a tiny model.

    python benchmarks/bench_trainer.py [--failures 5000] [--budget 500] [--train 64] [--stages sft,dpo,reward,rl]
                                       [--hidden 64] [--layers 2] [--epochs 1] [--skip-train]

Selection: wall time of select() per method (ifd-proxy stands in for ifd, which is a forward pass per
failure and scales with the model). Training: train_iteration() on --train failures with a randomly
initialised tiny Llama (arena_flywheel.tinymodel), one stage at a time, examples/s per stage.
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from arena_flywheel.config import load_config  # noqa: E402
from arena_flywheel.events import Failure, JudgeInfo, Message  # noqa: E402

VERBS = ["sort", "reverse", "count", "upper", "sum", "copy", "explain", "list", "name", "compare", "translate", "fix"]
NOUNS = ["words", "letters", "digits", "colours", "fruits", "cities", "numbers", "rivers", "planets", "tools"]


def make_failures(n: int, seed: int = 0) -> list[Failure]:
    rng = random.Random(seed)
    judge = JudgeInfo(backend="reference", template_id="dual", template_hash="h")
    out = []
    for i in range(n):
        words = " ".join(rng.choice(NOUNS) for _ in range(rng.randint(2, 12)))
        q = f"{rng.choice(VERBS)} the {rng.choice(NOUNS)}: {words} ({i})"
        out.append(Failure(instruction_id=f"i{i}", target="target", messages=[Message(role="user", content=q)],
                           target_answers=[words[: rng.randint(1, 20)]], winner_model="ace",
                           winner_answers=[" ".join(reversed(words.split()))], margin=float(rng.randint(1, 9)),
                           battle_ids=[f"b{i}"], verdict_ids=[f"v{i}"], judge=judge))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--failures", type=int, default=5000)
    ap.add_argument("--budget", type=int, default=500)
    ap.add_argument("--train", type=int, default=64)
    ap.add_argument("--stages", default="sft,dpo,reward,rl")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--skip-train", action="store_true")
    a = ap.parse_args()

    from trainer.select import select

    pool = make_failures(a.failures)
    result: dict = {"failures": a.failures, "budget": a.budget, "select_s": {}}
    for method in ("pair-judge", "random", "length", "ifd-proxy", "tags", "kmeans"):
        t = time.perf_counter()
        got = select(pool, method, budget=a.budget, threshold=0.0, seed=0)
        result["select_s"][method] = round(time.perf_counter() - t, 3)
        assert len(got) == a.budget
    if not a.skip_train:
        from arena_flywheel.tinymodel import build_tiny_model
        from trainer.train import train_iteration

        with tempfile.TemporaryDirectory() as tmp:
            model = build_tiny_model(Path(tmp) / "m", hidden_size=a.hidden, layers=a.layers)
            fs = make_failures(a.train, seed=1)
            stages = [s for s in a.stages.split(",") if s]
            cfg = load_config(env={}, overrides={"trainer.output_dir": f"{tmp}/ckpt", "trainer.stages": stages,
                                                 "trainer.per_device_batch_size": 8, "trainer.epochs": a.epochs})
            t = time.perf_counter()
            res = train_iteration(cfg, model_path=str(model), failures=fs, iteration=1, target="target")
            total = time.perf_counter() - t
            result["train"] = {"examples": a.train, "epochs": a.epochs, "stages": stages, "total_s": round(total, 2),
                               "losses": {s: v.get("train_loss") for s, v in res.metrics["stages"].items()},
                               "checkpoints": [c.checkpoint for c in res.checkpoints]}
            # per-stage time: rerun each stage alone from the base model
            per = {}
            for s in stages:
                c = cfg.model_copy(deep=True)
                c.trainer.stages = ["reward", "rl"] if s == "rl" else [s]
                t = time.perf_counter()
                train_iteration(c, model_path=str(model), failures=fs, iteration=2, target="target")
                per[s] = round(time.perf_counter() - t, 2)
            per["rl"] = round(per.get("rl", 0) - per.get("reward", 0), 2) if "rl" in per else None
            result["train"]["stage_s"] = {k: v for k, v in per.items() if v is not None}
            result["train"]["examples_per_s"] = {k: round(a.train * a.epochs / v, 1)
                                                 for k, v in result["train"]["stage_s"].items() if v > 0}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
