"""The selection ablation (the paper's Table 3): one SFT checkpoint per selection method, all from the same
base on the same budget, rated together in one arena.

1. The base (the target) and the fixed opponents answer the training slice; the judge pool's judge
   (`JudgePool.judge_many`, the configured judge: the demo's is the reference judge) judges the target
   against each opponent.
2. `select.slice_pool` makes one record per instruction of the slice; every method chooses `budget` of
   them (pair-judge only among those the target lost by at least the iteration-1 threshold).
3. Each method's choice trains one SFT checkpoint from the base with the production stage
   (`train.train_stage`, the trainer section's settings), saved as `<trainer.output_dir>/<method>/it1-sft`.
4. The base, every checkpoint and the opponents answer the eval split; every checkpoint battles each
   opponent and the base, the base battles each opponent; one Bradley-Terry fit rates them all (95%
   bootstrap CIs), pinned as the iteration tables are (the opponents' mean at ratings.anchor_rating, or
   ratings.anchor_model); the win rate vs the base is observed in their direct battles (ties count half).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from arena_flywheel.config import CompetitorConfig, Config
from arena_flywheel.errors import InputError
from arena_flywheel.events import Battle, Contestant, Instruction, Response, competitor_name
from arena_flywheel.ratings import BradleyTerry, PairCounts
from consumers.backends import create_backend
from consumers.judge import JudgePool
from consumers.judging.single import answer_turns

from .batches import sft_rows
from .select import METHODS, select, slice_pool
from .train import train_stage

log = logging.getLogger(__name__)

# What each method is, in the table: ours, and the paper's name beside it where they differ.
LABELS = {
    "pair-judge": "pair-judge (Arena Learning)",
    "random": "random",
    "kmeans": "k-means on MiniLM embeddings",
    "length": "instruction length",
    "ifd": "IFD",
    "ifd-proxy": "IFD proxy (not IFD)",
    "tags": "INSTAG stand-in: keyword tags",
}
BASE = "base (no training)"


def answer(comp: CompetitorConfig, instructions: list[Instruction], path: str | None = None,
           checkpoint: str = "base") -> dict[str, Response]:
    """Every instruction answered by `comp` (with the weights at `path` when given), as Response events."""
    backend = create_backend(comp, model=path)  # no path: the competitor's own model
    try:
        texts, failed = answer_turns(backend, [i.user_turns for i in instructions], max_new_tokens=comp.max_new_tokens,
                                     temperature=comp.temperature, ids=[i.id for i in instructions])
    finally:
        backend.close()
    if failed:
        why = next(iter(failed.values()))
        raise InputError(f"{competitor_name(comp.name, checkpoint)} could not answer {len(failed)} instructions "
                         f"(first: {why})")
    return {i.id: Response(instruction_id=i.id, split=i.split, model=comp.name, checkpoint=checkpoint,
                           answers=t, backend=comp.backend) for i, t in zip(instructions, texts)}


def battles_of(instructions: list[Instruction], one: dict[str, Response], other: dict[str, Response]) -> list[Battle]:
    """One battle per instruction between two competitors' responses, sides in canonical order."""
    out = []
    for i in instructions:
        ra, rb = sorted((one[i.id], other[i.id]), key=lambda r: r.id)
        out.append(Battle(instruction_id=i.id, split=i.split, messages=i.messages, reference=i.reference,
                          references=i.references, category=i.category, plan="ablation",
                          a=Contestant(response_id=ra.id, model=ra.model, checkpoint=ra.checkpoint, answers=ra.answers),
                          b=Contestant(response_id=rb.id, model=rb.model, checkpoint=rb.checkpoint, answers=rb.answers)))
    return out


def run_ablation(cfg: Config, *, target: CompetitorConfig, opponents: list[CompetitorConfig],
                 train: list[Instruction], eval_set: list[Instruction], methods: list[str], budget: int,
                 seed: int = 0, say: Callable[[str], Any] = log.info) -> dict[str, Any]:
    """Run the ablation (module doc); returns {"rows": [...], "settings": {...}}, the base's row first.
    `cfg` needs a broker (the judge pool joins its battles group: give it a topic prefix of its own)."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise InputError(f"unknown selection methods {unknown}; known: {', '.join(METHODS)}")
    if budget < 1:
        raise InputError("--budget must be >= 1")
    t0 = time.monotonic()
    base = competitor_name(target.name)
    judge = JudgePool(cfg)
    try:
        say(f"the base ({target.name}) and {len(opponents)} opponents answer the {len(train)}-instruction slice")
        slice_ans = {c.name: answer(c, train) for c in [target, *opponents]}
        battles = [b for o in opponents for b in battles_of(train, slice_ans[target.name], slice_ans[o.name])]
        verdicts = judge.judge_many(battles)
        pool = slice_pool(battles, verdicts, base)
        threshold = cfg.threshold_for(1)
        lost = sum(f.margin >= threshold for f in pool)
        say(f"slice judged: {len(pool)} instructions, the target lost {lost} by >= {threshold:g}")

        rows: list[dict[str, Any]] = []
        checkpoints: dict[str, str] = {}
        for method in methods:
            t = time.monotonic()
            chosen = select(pool, method, budget, threshold=threshold, seed=seed, model_path=target.model)
            select_s = time.monotonic() - t
            res = train_stage(cfg, stage="sft", model_path=target.model, iteration=1, target=method,
                              rows=sft_rows(chosen, iteration=1), provenance={"ablation": method})
            if res.checkpoint is None:
                raise InputError(f"{method}: nothing to train on ({res.skipped})")
            checkpoints[method] = res.checkpoint.path
            rows.append({"method": method, "label": LABELS[method], "examples": len(chosen),
                         "mean_margin": round(sum(f.margin for f in chosen) / len(chosen), 3) if chosen else None,
                         "train_loss": res.metrics.get("train_loss"), "select_s": round(select_s, 1),
                         "train_s": round(res.metrics.get("train_s", 0.0), 1)})
            say(f"{method}: {len(chosen)} chosen in {select_s:.1f} s, trained in {rows[-1]['train_s']:.1f} s")

        say(f"rating on {len(eval_set)} eval instructions: base, {len(methods)} checkpoints, {len(opponents)} opponents")
        ev = {c.name: answer(c, eval_set) for c in [target, *opponents]}
        mine = {m: answer(target, eval_set, path=checkpoints[m], checkpoint=m) for m in methods}
        eval_battles = [b for o in opponents for b in battles_of(eval_set, ev[target.name], ev[o.name])]
        for m in methods:
            eval_battles += battles_of(eval_set, mine[m], ev[target.name])
            eval_battles += [b for o in opponents for b in battles_of(eval_set, mine[m], ev[o.name])]
        eval_verdicts = judge.judge_many(eval_battles)
    finally:
        judge.close()

    # pinned as the iteration tables are: the fixed opponents' mean at ratings.anchor_rating (docs/ratings.md)
    anchor = cfg.ratings.anchor_model or tuple(o.name for o in opponents)
    bt = replace(BradleyTerry.from_config(cfg.ratings), anchor=anchor, anchor_rating=cfg.ratings.anchor_rating)
    counts = PairCounts.from_battles((v.competitor_a, v.competitor_b, v.winner) for v in eval_verdicts)
    board = bt.leaderboard(counts, seed=seed)
    by_name = {r.model: r for r in board}
    vs_base = bt.win_rate_vs_baseline(counts, base)
    out = [{"method": "base", "label": BASE, "examples": 0, "mean_margin": None, "train_loss": None,
            "select_s": None, "train_s": None}]
    for r in out + rows:
        name = base if r["method"] == "base" else competitor_name(target.name, r["method"])
        row, observed = by_name[name], vs_base[name]["observed"]  # None without a valid direct battle
        r.update(competitor=name, rating=round(row.rating, 1), lower=round(row.lower, 1), upper=round(row.upper, 1),
                 battles=row.battles, win_rate_vs_base=None if observed is None else round(observed, 4),
                 battles_vs_base=vs_base[name]["battles"])
    opp = [{"competitor": o.name, "rating": round(by_name[o.name].rating, 1)} for o in opponents]
    return {"rows": out + rows, "opponents": opp,
            "settings": {"budget": budget, "slice": len(train), "eval": len(eval_set), "threshold": threshold,
                         "lost_by_threshold": lost, "seed": seed, "judge": cfg.judge.backend,
                         "learning_rate": cfg.trainer.learning_rate, "epochs": cfg.trainer.epochs,
                         "target": target.name, "opponents": [o.name for o in opponents],
                         "anchor": {"models": [anchor] if isinstance(anchor, str) else list(anchor),
                                    "rating": cfg.ratings.anchor_rating}},
            "regularised": board.note, "elapsed_s": round(time.monotonic() - t0, 1)}


def table_markdown(result: dict[str, Any]) -> str:
    """The ablation table as markdown (README, docs/evaluation.md, the report)."""
    lines = ["| method | examples | rating | 95% CI | win rate vs base |", "|---|---:|---:|---:|---:|"]
    for r in result["rows"]:
        wr = "" if r["win_rate_vs_base"] is None else f"{r['win_rate_vs_base']:.1%}"
        lines.append(f"| {r['label']} | {r['examples']} | {r['rating']:.0f} | {r['lower']:.0f} .. {r['upper']:.0f} "
                     f"| {wr} |")
    return "\n".join(lines) + "\n"


def write_result(result: dict[str, Any], out: Path) -> Path:
    """ablation.json and ablation.md in `out` (overwritten by the next run: one result per folder)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps(result, indent=1))
    (out / "ablation.md").write_text(table_markdown(result))
    return out / "ablation.json"
