"""The dashboard from the SQL ledger: the same page and the same /api/state dict as the live worker's
(streams/dashboard.py), built from the ledger's tables, so it works after the stream has stopped
(the demo's SQLite file, a production PostgreSQL). `arena dashboard --db URL` serves it.

ledger_state(store, bt, split) builds the dict; LedgerDashboard caches it per split and rebuilds only when
the ledger's row counts change; make_app(view) is the aiohttp application (GET /, /api/state?split=,
/api/events?since=&split=). Every part is bounded: the heat maps and the fit come from GROUP BY counts,
rating over time from at most HISTORY_POINTS time buckets, judge health from the latest HEALTH_WINDOW
verdicts, and the failures and checkpoints lists from the latest few rows.
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import sqlalchemy as sa
from aiohttp import web

from arena_flywheel.events import Failure, Verdict
from arena_flywheel.ratings import BradleyTerry, PairCounts
from arena_flywheel.store import CheckpointRow, FailureRow, LedgerStore, VerdictRow, open_ledger
from consumers.judging.health import JudgeHealth

from .dashboard import MAX_CHECKPOINTS, MAX_FAILURES, SPLITS, DashboardState, _version, page_response

HISTORY_POINTS = 40     # time buckets of the rating-over-time chart (one refit each)
HEALTH_WINDOW = 10_000  # judge health over this many latest verdicts of the split
LENGTH_CHUNK = 500      # battle ids per IN (...) when reading answer lengths


def masked(url: str) -> str:
    """The URL without its password (it is shown on the page and printed)."""
    return sa.engine.make_url(url).render_as_string(hide_password=True)


def _json(p: Any) -> dict:
    return json.loads(p) if isinstance(p, (str, bytes)) else dict(p)


def _event(cls, payload: Any):
    p = _json(payload)
    p.pop("schema", None)
    return cls.model_validate(p)


def _pairs(rows: list[tuple[str, str, str, int]]) -> dict[tuple[str, str], dict]:
    """{(a, b) sorted: {a, b, a_wins, ties, b_wins}} of (competitor_a, competitor_b, winner, n) counts;
    invalid verdicts left out (they are no tie), as DashboardState.add_verdict does."""
    out: dict[tuple[str, str], dict] = {}
    for a, b, w, n in rows:
        if w == "invalid" or a == b:
            continue
        key = tuple(sorted((a, b)))
        p = out.setdefault(key, {"a": key[0], "b": key[1], "a_wins": 0, "ties": 0, "b_wins": 0})
        won = a if w == "model_a" else b if w == "model_b" else None
        p["ties" if won is None else "a_wins" if won == key[0] else "b_wins"] += n
    return out


def _history(conn, bt: BradleyTerry, split: str, points: int) -> dict[str, list[list]]:
    """{competitor: [[t, rating, None, None], ...]}: the fit on all verdicts up to the end of each of
    `points` equal time buckets, counted by the database (GROUP BY bucket)."""
    t = VerdictRow.__table__
    lo, hi = conn.execute(sa.select(sa.func.min(t.c.created_at), sa.func.max(t.c.created_at))
                          .where(t.c.split == split)).one()
    if lo is None:
        return {}
    width = (hi - lo) / points or 1.0
    # CAST truncates on SQLite and rounds on PostgreSQL: either way a bucket's time is the latest verdict in it
    bucket = sa.cast((t.c.created_at - lo) / width, sa.Integer).label("k")
    q = (sa.select(bucket, t.c.competitor_a, t.c.competitor_b, t.c.winner, sa.func.count(), sa.func.max(t.c.created_at))
         .where(t.c.split == split)
         .group_by(sa.literal_column("k"), t.c.competitor_a, t.c.competitor_b, t.c.winner))
    by_bucket: dict[int, list] = {}
    for k, a, b, w, n, at in conn.execute(q):
        by_bucket.setdefault(int(k), []).append((a, b, w, int(n), float(at)))
    counts, warm, hist = PairCounts(), None, {}
    for k in sorted(by_bucket):
        rows = by_bucket[k]
        for a, b, w, n, _ in rows:
            counts.add(a, b, w, n=n)
        if not counts.models:  # only invalid verdicts so far
            continue
        warm = bt.fit(counts, warm=warm)
        at = max(r[4] for r in rows)
        for m, r in warm.items():
            hist.setdefault(m, []).append([at, r, None, None])
    return hist


def _health(store: LedgerStore, conn, split: str, window: int) -> dict[str, float | None]:
    """Judge health rates (consumers/judging/health.py) of the latest `window` verdicts of `split`, with answer
    lengths (for the longer-answer win rate) from the verdict, or from its battle for verdicts written before
    verdicts carried them, as `arena watch` measures it."""
    t = VerdictRow.__table__
    q = sa.select(t.c.payload).where(t.c.split == split).order_by(t.c.created_at.desc(), t.c.id.desc()).limit(window)
    verdicts = [_event(Verdict, p) for p in conn.execute(q).scalars()]
    ids = sorted({v.battle_id for v in verdicts if v.length_a is None or v.length_b is None})  # older verdicts
    lengths: dict[str, tuple[int, int]] = {}
    for i in range(0, len(ids), LENGTH_CHUNK):
        for b in store.payloads("battle", id=ids[i:i + LENGTH_CHUNK]):
            lengths[b["id"]] = (sum(map(len, b["a"]["answers"])), sum(map(len, b["b"]["answers"])))
    h = JudgeHealth()
    for v in reversed(verdicts):
        h.add(v, *lengths.get(v.battle_id, (None, None)))
    return h.rates()


def _latest_failures(conn, n: int) -> list[Failure]:
    """The `n` most recent failures, the latest record per (instruction, target, checkpoint), oldest first."""
    t = FailureRow.__table__
    q = sa.select(t.c.payload).order_by(t.c.created_at.desc(), t.c.losses.desc(), t.c.id.desc()).limit(10 * n)
    seen, out = set(), []
    for p in conn.execute(q).scalars():
        f = _event(Failure, p)
        key = (f.instruction_id, f.target, f.target_checkpoint)
        if key not in seen:
            seen.add(key)
            out.append(f)
        if len(out) == n:
            break
    return out[::-1]


def ledger_state(store: LedgerStore, bt: BradleyTerry, split: str = "eval", *,
                 history_points: int = HISTORY_POINTS, health_window: int = HEALTH_WINDOW) -> dict:
    """The /api/state dict of the live page (DashboardState.to_dict), from the ledger: the `split`'s
    leaderboard (bootstrap CIs as the stream fits them), its rating over time, its judge health; both
    splits' heat maps; every checkpoint with its rating in this split; the latest failures."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: one of {', '.join(SPLITS)}")
    ds = DashboardState()
    by_split = {sp: store.battle_counts(sp) for sp in SPLITS}
    for sp, rows in by_split.items():
        ds.pairs[sp] = _pairs(rows)
    counts = PairCounts()
    for a, b, w, n in by_split[split]:
        counts.add(a, b, w, n=n)
    with store.engine.connect() as conn:
        c = CheckpointRow.__table__
        checkpoints = [_json(p) for p in reversed(conn.execute(
            sa.select(c.c.payload).order_by(c.c.created_at.desc(), c.c.id.desc()).limit(MAX_CHECKPOINTS)
        ).scalars().all())]
    bt = bt.pinned(counts.models, {ck["model"] for ck in checkpoints})  # as `arena iterations` pins it
    rows = [r.as_dict() for r in bt.leaderboard(counts, ci="bootstrap", seed=0)] if counts.models else []
    with store.engine.connect() as conn:
        history = _history(conn, bt, split, history_points)
        end = max((h[-1][0] for h in history.values()), default=time.time())
        ds.set_leaderboard(rows, t=end)
        for m, h in history.items():  # the last point is the leaderboard itself, with its CI
            r = next((r for r in rows if r["model"] == m), None)
            if r is not None:
                h[-1] = [h[-1][0], r["rating"], r["lower"], r["upper"]]
        ds.history = history
        ds.set_health(_health(store, conn, split, health_window))
        for f in _latest_failures(conn, MAX_FAILURES):
            ds.add_failure(f)
        for ck in checkpoints:
            ds.add_checkpoint(ck["model"], ck["checkpoint"], ck.get("iteration", 0), ck.get("stage"),
                              t=ck.get("created_at"))
    d = ds.to_dict()
    d.update(source="ledger", split=split, ledger=masked(store.url), verdicts=store.count("verdict"))
    return d


class LedgerDashboard:
    """The ledger's state per split, rebuilt (in a thread) only when the ledger's row counts change, and at
    most every `rebuild_s` seconds while a ledger consumer keeps writing (a rebuild refits and rereads)."""

    def __init__(self, url: str, bt: BradleyTerry, *, check_s: float = 1.0, wait_s: float = 10.0,
                 rebuild_s: float = 5.0):
        self.store = open_ledger(url)  # a missing ledger is an InputError: never an empty new one
        self.name = masked(url)
        self.bt, self.check_s, self.wait_s, self.rebuild_s = bt, check_s, wait_s, rebuild_s
        self._cache: dict[str, tuple[dict, float, dict]] = {}  # split -> (row counts, built at, state)
        self._lock = asyncio.Lock()

    def state_now(self, split: str) -> dict:
        cached = self._cache.get(split)
        if cached is not None and time.monotonic() - cached[1] < self.rebuild_s:
            return cached[2]
        fingerprint = self.store.counts()
        if cached is not None and cached[0] == fingerprint:
            return cached[2]
        d = ledger_state(self.store, self.bt, split)
        d["version"] = _version(d)
        self._cache[split] = (fingerprint, time.monotonic(), d)
        return d

    async def state(self, split: str) -> dict:
        async with self._lock:  # one rebuild at a time; the others then find it cached
            return await asyncio.to_thread(self.state_now, split)

    def close(self) -> None:
        self.store.close()


def make_app(view: LedgerDashboard, split: str = "eval") -> web.Application:
    """GET / (the page, `split` preselected), /api/state?split=, /api/events?since=&split= (long poll)."""

    def split_of(request) -> str:
        sp = request.query.get("split") or split
        if sp not in SPLITS:
            raise web.HTTPBadRequest(text=f"split must be one of {', '.join(SPLITS)}")
        return sp

    async def answer(request, since: str | None) -> web.Response:
        sp = split_of(request)
        deadline = time.monotonic() + view.wait_s
        try:
            d = await view.state(sp)
            while since is not None and d["version"] == since and time.monotonic() < deadline:
                await asyncio.sleep(view.check_s)
                d = await view.state(sp)
        except sa.exc.SQLAlchemyError as exc:  # the database went away: the page says so and retries
            return web.json_response({"error": f"cannot read the ledger: {type(exc).__name__}"}, status=503)
        d = dict(d, generated_at=time.time())
        return web.json_response(d)

    async def index(request):
        status, body, headers = page_response(request.headers, split_of(request))
        return web.Response(body=body, status=status, headers=headers)

    async def api_state(request):
        return await answer(request, None)

    async def api_events(request):
        return await answer(request, request.query.get("since", ""))

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/api/state", api_state)
    app.router.add_get("/api/events", api_events)
    return app


async def serve(view: LedgerDashboard, host: str, port: int, split: str = "eval", on_start=None) -> None:
    """Serve make_app(view) until cancelled (Ctrl-C). Binding errors (port in use) raise OSError before
    `on_start()`, which runs once the port is bound."""
    runner = web.AppRunner(make_app(view, split), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        if on_start is not None:
            on_start()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        view.close()
