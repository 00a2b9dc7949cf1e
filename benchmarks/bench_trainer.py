"""Trainer speed: every selection method on a large failure pool, and each TRL stage on a tiny model.

    python benchmarks/bench_trainer.py [--failures 5000] [--budget 500] [--train 64] [--stages sft,dpo,rl]
                                       [--hidden 64] [--layers 2] [--epochs 1] [--skip-train]

Selection: wall time of select() per method (ifd-proxy stands in for ifd, which is a forward pass per
failure and scales with the model). Training: train_stage() per stage from a randomly initialised tiny Llama
(arena_flywheel.tinymodel): sft on --train failures; dpo and rl on a slice of --train instructions, each
answered by the target and three opponents and judged (target against each opponent) with synthetic
scores; rl's time includes its reward model (reported apart as reward_s). Examples/s per stage.
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
from arena_flywheel.events import Battle, Contestant, Failure, JudgeInfo, Message, Verdict  # noqa: E402

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


def make_slice(n: int, seed: int = 0) -> tuple[list[Battle], list[Verdict]]:
    """n instructions, each answered by the target and three opponents of rising skill; the target battles
    each opponent; scores 1-10 drawn around each model's skill (score-sum, mean)."""
    rng = random.Random(seed)
    judge = JudgeInfo(backend="reference", template_id="dual", template_hash="h")
    skill = {"target": 5, "novice": 3, "solid": 6, "ace": 8}
    battles, verdicts = [], []
    for i in range(n):
        words = " ".join(rng.choice(NOUNS) for _ in range(rng.randint(2, 8)))
        msgs = [Message(role="user", content=f"{rng.choice(VERBS)} the {rng.choice(NOUNS)}: {words} ({i})")]
        said = {m: " ".join(rng.sample(words.split(), len(words.split()))) + f" ({m})" for m in skill}
        mine = Contestant(response_id=f"t{i}", model="target", checkpoint="it1-sft", answers=[said["target"]])
        for m in ("novice", "solid", "ace"):
            b = Battle(instruction_id=f"s{i}", messages=msgs, a=mine,
                       b=Contestant(response_id=f"{m}{i}", model=m, answers=[said[m]]))
            sa, sb = (float(min(10, max(1, skill[x] + rng.randint(-2, 2)))) for x in ("target", m))
            battles.append(b)
            verdicts.append(Verdict(battle_id=b.id, instruction_id=b.instruction_id, competitor_a=mine.competitor,
                                    competitor_b=m, model_a="target", model_b=m, checkpoint_a="it1-sft",
                                    score_a=sa, score_b=sb, margin=abs(sa - sb), judge=judge,
                                    winner="model_a" if sa > sb else "model_b" if sb > sa else "tie"))
    return battles, verdicts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--failures", type=int, default=5000)
    ap.add_argument("--budget", type=int, default=500)
    ap.add_argument("--train", type=int, default=64)
    ap.add_argument("--stages", default="sft,dpo,rl")
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
        from trainer.batches import dpo_pairs, reward_rows, rl_prompts, sft_rows, texts_from_battles
        from trainer.train import train_stage

        with tempfile.TemporaryDirectory() as tmp:
            model = build_tiny_model(Path(tmp) / "m", hidden_size=a.hidden, layers=a.layers)
            battles, verdicts = make_slice(a.train, seed=1)
            rows = {"sft": sft_rows(make_failures(a.train, seed=1), 1),
                    "dpo": dpo_pairs(battles, verdicts, 1.0, 1)[0], "rl": rl_prompts(battles, 1, verdicts)}
            reward = reward_rows(verdicts, 1, *texts_from_battles(battles))
            stages = [s for s in a.stages.split(",") if s]
            cfg = load_config(env={}, overrides={"trainer.output_dir": f"{tmp}/ckpt", "trainer.stages": stages,
                                                 "trainer.per_device_batch_size": 8, "trainer.epochs": a.epochs})
            train: dict = {"instructions": a.train, "epochs": a.epochs, "stages": stages, "examples": {},
                           "stage_s": {}, "losses": {}, "checkpoints": []}
            path, parent = str(model), "base"
            for s in stages:  # each stage from the previous one's checkpoint, as the service chains them
                t = time.perf_counter()
                res = train_stage(cfg, stage=s, model_path=path, iteration=1, target="target", parent=parent,
                                  rows=rows[s], reward_rows=reward if s == "rl" else None)
                train["stage_s"][s] = round(time.perf_counter() - t, 2)
                train["examples"][s] = len(rows[s])
                train["losses"][s] = res.metrics.get("train_loss")
                if s == "rl":
                    train.update(reward_pairs=len(reward), reward_s=res.metrics.get("reward_s"),
                                 mean_kl=res.metrics.get("mean_kl"), mean_reward=res.metrics.get("mean_reward"))
                if res.checkpoint is not None:
                    train["checkpoints"].append(res.checkpoint.checkpoint)
                    path, parent = res.checkpoint.path, res.checkpoint.checkpoint
            train["total_s"] = round(sum(train["stage_s"].values()), 2)
            train["examples_per_s"] = {s: round(train["examples"][s] * a.epochs / v, 1)
                                       for s, v in train["stage_s"].items() if v > 0}
            result["train"] = train
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
