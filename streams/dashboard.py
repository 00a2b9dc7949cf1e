"""Live web dashboard on the Faust app's own web server: one self-contained page (HTML, our script and
plotly.js from the installed `plotly` wheel, inlined), so it needs no CDN and no network.

install_dashboard(app, state) adds GET / (page), GET /api/state (JSON) and GET /api/events (long poll:
?since=VERSION answers as soon as the state's version differs, or after ~10 s with the same one).
drop_builtin_routes(app) stops Faust from serving its built-in routes (/router/, /table/, ...) beside them.
Long polling rather than SSE because a Faust page handler returns one response; it works through any proxy.
The assets are inlined rather than served as files so the worker's routes stay exactly those three (and
the page still works when saved to disk). DashboardState is the small in-memory model the stream feeds;
its to_dict() is the `state` callable. streams/ledger_view.py serves the same page from the SQL ledger.
"""
from __future__ import annotations

import asyncio
import functools
import gzip
import hashlib
import json
import re
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

import plotly

from arena_flywheel.events import competitor_name

WEB = Path(__file__).with_name("web")
SPLITS = ("eval", "train")
MAX_FAILURES = 20
MAX_HISTORY = 500
MAX_CHECKPOINTS = 200


def _get(obj: Any, name: str, default: Any = None) -> Any:
    return obj.get(name, default) if isinstance(obj, dict) else getattr(obj, name, default)


class DashboardState:
    """What the page shows; fed by the stream (verdicts, leaderboard refits, failures, checkpoints)."""

    def __init__(self) -> None:
        self.leaderboard: list[dict] = []
        self.elo: dict[str, float] = {}
        self.history: dict[str, list[list[float]]] = {}
        self.checkpoints: list[dict] = []
        self.pairs: dict[str, dict[tuple[str, str], dict]] = {}  # split -> pair -> counts
        self.health: dict = {}
        self.failures: deque = deque(maxlen=MAX_FAILURES)
        self.verdicts = 0
        self.seen: set[str] = set()

    def add_verdict(self, verdict: Any, split: str | None = None) -> None:
        """Count one verdict in the pairwise table of its split (`split`, else the verdict's own, else
        "eval"). An invalid verdict is counted in `verdicts` but not in the pairwise table: it is no tie."""
        # at-least-once delivery: a redelivered verdict (same id) is counted once
        vid = _get(verdict, "id")
        if vid is not None:
            if vid in self.seen:
                return
            self.seen.add(vid)
        self.verdicts += 1
        a, b = _get(verdict, "model_a"), _get(verdict, "model_b")
        winner = _get(verdict, "winner")
        if a is None or b is None or winner == "invalid":
            return
        split = split or _get(verdict, "split") or "eval"
        key = tuple(sorted((a, b)))
        pairs = self.pairs.setdefault(split, {})
        p = pairs.setdefault(key, {"a": key[0], "b": key[1], "a_wins": 0, "ties": 0, "b_wins": 0})
        w = winner if winner in (a, b) else ({"model_a": a, "a": a, "model_b": b, "b": b}.get(winner))
        if w is None:
            p["ties"] += 1
        elif w == key[0]:
            p["a_wins"] += 1
        else:
            p["b_wins"] += 1

    def set_leaderboard(self, rows: list[dict], t: float | None = None) -> None:
        t = time.time() if t is None else t
        self.leaderboard = [dict(r) for r in rows]
        for r in self.leaderboard:
            m = r["model"]
            self.elo[m] = r.get("elo", r.get("rating"))
            h = self.history.setdefault(m, [])
            h.append([t, r.get("rating"), r.get("lower", r.get("rating")), r.get("upper", r.get("rating"))])
            del h[:-MAX_HISTORY]

    def add_failure(self, failure: Any) -> None:
        f = dict(failure) if isinstance(failure, dict) else failure.model_dump(mode="json")
        if f.get("target"):  # the losing competitor, as the leaderboard names it (target@checkpoint)
            f["loser"] = competitor_name(f["target"], f.get("target_checkpoint") or "base")
        if isinstance(f.get("margin"), (int, float)):
            f["margin"] = round(f["margin"], 3)
        judge = f.get("judge")
        if isinstance(judge, dict):  # one line naming the judge: "backend:model template_id"
            who = ":".join(x for x in (judge.get("backend"), judge.get("model")) if x)
            f["judge_id"] = " ".join(x for x in (who, judge.get("template_id")) if x) or None
        self.failures.appendleft(f)

    def add_checkpoint(self, model: str, checkpoint: str, iteration: int, stage: str | None = None,
                       t: float | None = None) -> None:
        """A checkpoint announced at `t` (default now: when this worker read it; the page marks it on the
        rating-over-time chart). A redelivered announcement is kept once."""
        if any(c["model"] == model and c["checkpoint"] == checkpoint for c in self.checkpoints):
            return
        self.checkpoints.append({"model": model, "checkpoint": checkpoint, "iteration": iteration,
                                 "stage": stage or None, "t": time.time() if t is None else t})
        del self.checkpoints[:-MAX_CHECKPOINTS]

    def _checkpoint_view(self, c: dict) -> dict:
        # ratings are keyed by competitor ("target@it1-sft"), not by the bare checkpoint name
        comp = competitor_name(c["model"], c["checkpoint"])
        row = next((r for r in self.leaderboard if r.get("model") == comp), {})
        return {**c, "competitor": comp, "rating": self.elo.get(comp), "lower": row.get("lower"),
                "upper": row.get("upper")}

    def set_health(self, health: dict) -> None:
        self.health = dict(health)

    def to_dict(self) -> dict:
        return {
            "source": "stream", "split": "eval",  # the stream rates eval verdicts; both splits' heat maps
            "leaderboard": self.leaderboard, "elo": dict(self.elo), "history": self.history,
            "checkpoints": [self._checkpoint_view(c) for c in self.checkpoints],
            # the heat map beside the (eval) leaderboard: eval pairs; the train split apart
            "pairs": list(self.pairs.get("eval", {}).values()),
            "pairs_by_split": {sp: list(ps.values()) for sp, ps in sorted(self.pairs.items())},
            "health": self.health,
            "failures": list(self.failures), "verdicts": self.verdicts, "generated_at": time.time(),
        }


def _version(d: dict) -> str:
    # generated_at changes every call; the version reflects content only
    body = {k: v for k, v in d.items() if k != "generated_at"}
    return hashlib.sha1(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def drop_builtin_routes(app: Any) -> None:
    """Serve none of Faust's built-in blueprints: /router/ (cluster topology, which worker owns a key),
    /table/ (raw table state, key by key), the statistics or {"status": "OK"} index at /, /assignment/,
    /graph, /performance/. Only the routes registered with app.page stay. Call before the worker starts:
    Faust applies its blueprints when the web server starts. (Faust is imported here only: the page
    itself needs none.)"""
    from faust.web.base import BlueprintManager

    app.web.blueprints = BlueprintManager()


@functools.cache
def page(split: str | None = None) -> str:
    """The page: streams/web/dashboard.html with plotly.min.js (from the installed wheel) and
    streams/web/dashboard.js inlined; `split` preselects the split selector."""
    plotly_js = (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_text(encoding="utf-8")
    app_js = (WEB / "dashboard.js").read_text(encoding="utf-8")

    def inline(js: str) -> str:  # "</script" inside the code would end the element early
        return "<script>" + re.sub(r"</(script)", r"<\\/\1", js, flags=re.IGNORECASE) + "</script>"

    html = (WEB / "dashboard.html").read_text(encoding="utf-8")
    if split is not None:
        html = html.replace("<body>", f'<body data-split="{split}">', 1)
    return html.replace("<!--PLOTLY-->", inline(plotly_js), 1).replace("<!--APP-->", inline(app_js), 1)


@functools.cache
def page_body(split: str | None = None) -> tuple[bytes, bytes, str]:
    """(plain bytes, gzip bytes, ETag) of page(split), built once (4.8 MB, 1.5 MB gzipped with plotly 7.1)."""
    raw = page(split).encode("utf-8")
    return raw, gzip.compress(raw, 6, mtime=0), '"' + hashlib.sha1(raw).hexdigest()[:20] + '"'


def page_response(headers: Any, split: str | None = None) -> tuple[int, bytes, dict[str, str]]:
    """(status, body, headers) for a GET of the page given the request's headers: gzip when the client
    accepts it, 304 when it already holds this version (the page is big; the state comes by the API)."""
    raw, packed, etag = page_body(split)
    out = {"Content-Type": "text/html; charset=utf-8", "ETag": etag, "Cache-Control": "no-cache",
           "Vary": "Accept-Encoding"}
    if headers.get("If-None-Match") == etag:
        return 304, b"", out
    if "gzip" in headers.get("Accept-Encoding", ""):
        return 200, packed, {**out, "Content-Encoding": "gzip"}
    return 200, raw, out


def install_dashboard(app: Any, state: Callable[[], dict], *, poll_s: float = 0.25, wait_s: float = 10.0) -> None:
    """Register /, /api/state and /api/events on the Faust app's web server (bound where the app binds it)."""

    def snap() -> dict:
        d = state()
        d["version"] = _version(d)
        return d

    @app.page("/")
    async def index(web, request):
        status, body, headers = page_response(request.headers)
        return web.bytes(body, status=status, headers=headers)

    @app.page("/api/state")
    async def api_state(web, request):
        return web.json(snap())

    @app.page("/api/events")
    async def api_events(web, request):
        since = request.query.get("since", "")
        deadline = time.monotonic() + wait_s
        d = snap()
        while d["version"] == since and time.monotonic() < deadline:
            await asyncio.sleep(poll_s)
            d = snap()
        return web.json(d)
