"""`arena report --out DIR`: PNG plots (ratings with 95% CIs, each target's rating over iterations)
and the leaderboard as markdown and CSV, from the ledger. Same engine as the stream.

Also, when they exist under data_dir: the selection ablation (`arena ablation`: ablation/ablation.json ->
ablation.png and ablation.md) and MT-bench scores (`arena mt-bench`: mt_bench/*.json -> mt_bench_radar.png,
one polygon per competitor, the paper's Figure 6)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from arena_flywheel.config import Config
from arena_flywheel.ratings import BradleyTerry
from arena_flywheel.errors import InputError
from arena_flywheel.store import open_ledger
from trainer.ablation import table_markdown

COLUMNS = ("rank", "model", "rating", "lower", "upper", "battles", "wins", "ties", "losses", "win_rate")


def _rows(cfg: Config, split: str):
    store = open_ledger(cfg.db.url)  # a mistyped URL is an error, not a new empty ledger
    try:
        verdicts = store.events("verdict", split=split)
        checkpoints = store.events("checkpoint")
    finally:
        store.close()
    rows = BradleyTerry.from_config(cfg.ratings).leaderboard_of_battles(
        (v.competitor_a, v.competitor_b, v.winner) for v in verdicts)
    return rows, checkpoints


def write_tables(rows, out: Path) -> None:
    with open(out / "leaderboard.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow([getattr(r, c) if not isinstance(getattr(r, c), float) else round(getattr(r, c), 4)
                        for c in COLUMNS])
    lines = ["| rank | model | rating | 95% CI | battles | win rate |", "|---:|---|---:|---:|---:|---:|"]
    lines += [f"| {r.rank} | {r.model} | {r.rating:.0f} | {r.lower:.0f} .. {r.upper:.0f} | {r.battles} | "
              f"{r.win_rate:.1%} |" for r in rows]
    (out / "leaderboard.md").write_text("\n".join(lines) + "\n")


def plot_ratings(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r.rating)
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(rows) + 1.5))
    y = range(len(rows))
    ax.errorbar([r.rating for r in rows], list(y),
                xerr=[[r.rating - r.lower for r in rows], [r.upper - r.rating for r in rows]],
                fmt="o", capsize=4)
    ax.set_yticks(list(y), [r.model for r in rows])
    ax.set_xlabel("rating (Elo scale), 95% CI")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def iteration_series(rows, checkpoints) -> dict[str, list[tuple[int, str, object]]]:
    """target model -> [(iteration, checkpoint, Row)] for base and every checkpoint that has a rating."""
    by_name = {r.model: r for r in rows}
    series: dict[str, list] = {}
    for ck in sorted(checkpoints, key=lambda c: (c.model, c.iteration, c.created_at)):
        row = by_name.get(f"{ck.model}@{ck.checkpoint}")
        if row is None:
            continue
        s = series.setdefault(ck.model, [])
        if not s and ck.model in by_name:
            s.append((0, "base", by_name[ck.model]))
        s.append((ck.iteration, ck.checkpoint, row))
    return series


def plot_iterations(series, path: Path) -> bool:
    if not series:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for model, pts in series.items():
        xs = list(range(len(pts)))
        ax.errorbar(xs, [p[2].rating for p in pts],
                    yerr=[[p[2].rating - p[2].lower for p in pts], [p[2].upper - p[2].rating for p in pts]],
                    fmt="-o", capsize=4, label=model)
        ax.set_xticks(xs, [f"{p[1]}\n(it {p[0]})" for p in pts], fontsize=8)
    ax.set_ylabel("rating, 95% CI")
    ax.set_title("target rating per flywheel iteration")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_ablation(result: dict, path: Path) -> None:
    """The ablation's ratings with 95% CIs, one row per selection method (the base first)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.6))
    y = list(range(len(rows)))[::-1]
    ax.errorbar([r["rating"] for r in rows], y, xerr=[[r["rating"] - r["lower"] for r in rows],
                                                     [r["upper"] - r["rating"] for r in rows]], fmt="o", capsize=4)
    ax.set_yticks(y, [r["label"] for r in rows], fontsize=8)
    s = result["settings"]
    ax.set_title(f"selection ablation: {s['budget']} examples per method from a slice of {s['slice']}", fontsize=10)
    ax.set_xlabel("rating (Elo scale), 95% CI")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_mt_bench(results: list[dict], path: Path) -> None:
    """MT-bench score per category, one polygon per competitor on a 0-10 radar (the paper's Figure 6)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = list(dict.fromkeys(c for r in results for c in r["categories"]))
    angles = [2 * math.pi * k / len(cats) for k in range(len(cats))]
    fig, ax = plt.subplots(figsize=(6, 6), subplot_kw={"projection": "polar"})
    for r in results:
        vals = [r["categories"].get(c) or 0.0 for c in cats]  # a category without a rating: 0
        ax.plot(angles + angles[:1], vals + vals[:1], "-o", markersize=3,
                label=f"{r['competitor']} ({r['overall']:.2f})" if r.get("overall") is not None else r["competitor"])
        ax.fill(angles + angles[:1], vals + vals[:1], alpha=0.1)
    ax.set_theta_offset(math.pi / 2)  # the first category at the top, clockwise, as FastChat's radar
    ax.set_theta_direction(-1)
    ax.set_xticks(angles, cats)
    ax.set_ylim(0, 10)
    ax.set_title(f"MT-bench per category (judge: {', '.join(sorted({r['judge'] for r in results}))})", fontsize=10,
                 pad=24)
    ax.legend(loc="upper right", bbox_to_anchor=(1.3, 1.1), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluations(cfg: Config) -> tuple[dict | None, list[dict]]:
    """The saved ablation result and MT-bench results under data_dir (None / [] where there are none)."""
    data = Path(cfg.data_dir)
    ablation = data / "ablation" / "ablation.json"
    mt = sorted((data / "mt_bench").glob("*.json")) if (data / "mt_bench").is_dir() else []
    try:
        return (json.loads(ablation.read_text()) if ablation.is_file() else None,
                [json.loads(p.read_text()) for p in mt])
    except (OSError, ValueError) as exc:
        raise InputError(f"{data}: a saved evaluation result cannot be read ({exc}); run the command again") from None


def write_report(cfg: Config, out: str | Path, split: str = "eval") -> Path:
    out = Path(out)
    ablation, mt_bench = evaluations(cfg)
    try:
        rows, checkpoints = _rows(cfg, split)  # the ledger first: no output directory for a missing ledger
    except InputError:
        if ablation is None and not mt_bench:
            raise
        rows, checkpoints = None, []  # only the evaluations: a report without a ledger
    try:
        out.mkdir(parents=True, exist_ok=True)
        if rows is not None:
            write_tables(rows, out)
        if rows:
            plot_ratings(rows, out / "ratings.png")
            plot_iterations(iteration_series(rows, checkpoints), out / "iterations.png")
        if ablation is not None:
            plot_ablation(ablation, out / "ablation.png")
            (out / "ablation.md").write_text(table_markdown(ablation))
        if mt_bench:
            plot_mt_bench(mt_bench, out / "mt_bench_radar.png")
    except OSError as exc:
        raise InputError(f"--out {out}: cannot write the report there ({exc.strerror or exc}); "
                         f"pick a writable directory") from None
    return out
