"""`arena watch`: the live leaderboard in a terminal (rich), over SSH as well as locally.

Two sources, same table:
- the Faust worker's JSON endpoint (`--url http://127.0.0.1:PORT`), the live state of the stream;
- the ledger (`--from-ledger`, the default when no URL is given): the same engine fitted on the
  verdicts in SQL, so it works with no worker running (e.g. after a demo).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from arena_flywheel.config import Config
from arena_flywheel.ratings import BradleyTerry
from arena_flywheel.store import open_ledger
from consumers.judging.health import JudgeHealth


@dataclass
class Snapshot:
    rows: list[dict[str, Any]]  # model, rating, lower, upper, rank, battles, win_rate
    verdicts: int = 0
    health: dict[str, float | None] = field(default_factory=dict)
    lag: int | None = None
    at: float = field(default_factory=time.time)
    source: str = ""


def from_ledger(cfg: Config, split: str = "eval") -> Snapshot:
    store = open_ledger(cfg.db.url)  # a mistyped URL is an error, not a new empty ledger
    try:
        verdicts = store.events("verdict", split=split)
        # answer lengths per battle, for the judge's longer-answer win rate
        lengths = {b.id: (sum(map(len, b.a.answers)), sum(map(len, b.b.answers)))
                   for b in store.events("battle", split=split)}
    finally:
        store.close()
    rows = [r.__dict__ for r in BradleyTerry.from_config(cfg.ratings).leaderboard_of_battles(
        (v.competitor_a, v.competitor_b, v.winner) for v in verdicts)]
    return Snapshot(rows=rows, verdicts=len(verdicts), health=judge_health(verdicts, lengths), source=cfg.db.url)


def judge_health(verdicts, lengths: dict[str, tuple[int, int]] | None = None) -> dict[str, float | None]:
    """The judge health rates (consumers/judging/health.py) of these verdicts."""
    h = JudgeHealth()
    for v in verdicts:
        h.add(v, *(lengths or {}).get(v.battle_id, (None, None)))
    return h.rates()


def from_url(url: str, timeout: float = 2.0) -> Snapshot:
    base = url.rstrip("/")
    r = httpx.get(base if base.endswith("/leaderboard") else base + "/leaderboard", timeout=timeout)
    r.raise_for_status()
    d = r.json()
    rows = d.get("rows") or d.get("leaderboard") or []
    return Snapshot(rows=rows, verdicts=int(d.get("verdicts", 0) or 0), health=d.get("health") or {},
                    lag=d.get("lag"), at=float(d.get("generated_at", time.time())), source=url)


def render(snap: Snapshot, start: dict[str, float] | None = None, rate: float | None = None):
    """The leaderboard as a rich renderable; `start` = ratings when watching began (for the change column)."""
    t = Table(expand=False)
    cols = [("rank", "right"), ("model", "left"), ("checkpoint", "left"), ("rating", "right"),
            ("95% CI", "right"), ("battles", "right"), ("win rate", "right")]
    if start is not None:
        cols.append(("change", "right"))
    for col, just in cols:
        t.add_column(col, justify=just, no_wrap=True)
    for r in snap.rows:
        model, _, ckpt = str(r["model"]).partition("@")
        delta = ""
        if start is not None and r["model"] in start:
            d = r["rating"] - start[r["model"]]
            delta = f"{d:+.0f}" if abs(d) >= 0.5 else "0"
        elif start is not None:
            delta = "new"
        cells = [str(r.get("rank", "")), model, ckpt or "base", f"{r['rating']:.0f}",
                 f"{r['lower']:.0f}..{r['upper']:.0f}", str(r.get("battles", "")), f"{r.get('win_rate', 0.0):.0%}"]
        t.add_row(*cells, *([delta] if start is not None else []))
    bits = [f"{snap.verdicts} verdicts"]
    if rate is not None:
        bits.append(f"{rate:.1f} verdicts/s")
    if snap.lag is not None:
        bits.append(f"lag {snap.lag}")
    if snap.health:
        bits.append("judge: " + ", ".join(f"{k.replace('_', ' ')} {'n/a' if v is None else format(v, '.0%')}"
                                          for k, v in snap.health.items()))
    bits.append(time.strftime("%H:%M:%S", time.localtime(snap.at)))
    return Group(t, Text(" | ".join(bits), style="dim"))


def render_text(snap: Snapshot, width: int = 120, **kw) -> str:
    """The same view as a plain string (tests, logs, non-terminals)."""
    console = Console(width=width, record=True, file=open("/dev/null", "w"), color_system=None)
    console.print(render(snap, **kw))
    return console.export_text()
