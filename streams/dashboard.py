"""Live web dashboard on the Faust app's own web server (no CDN, no network: plain HTML + vanilla JS + SVG).

install_dashboard(app, state) adds GET / (page), GET /api/state (JSON) and GET /api/events (long poll:
?since=VERSION answers as soon as the state's version differs, or after ~10 s with the same one).
drop_builtin_routes(app) stops Faust from serving its built-in routes (/router/, /table/, ...) beside them.
Long polling rather than SSE because a Faust page handler returns one response; it works through any proxy.
DashboardState is the small in-memory model the stream feeds; its to_dict() is the `state` callable.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import deque
from typing import Any, Callable

from arena_flywheel.events import competitor_name

MAX_FAILURES = 20
MAX_HISTORY = 500


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

    def add_checkpoint(self, model: str, checkpoint: str, iteration: int) -> None:
        self.checkpoints.append({"model": model, "checkpoint": checkpoint, "iteration": iteration})

    def _checkpoint_view(self, c: dict) -> dict:
        # ratings are keyed by competitor ("target@it1-sft"), not by the bare checkpoint name
        comp = competitor_name(c["model"], c["checkpoint"])
        return {**c, "competitor": comp, "rating": self.elo.get(comp)}

    def set_health(self, health: dict) -> None:
        self.health = dict(health)

    def to_dict(self) -> dict:
        return {
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


def install_dashboard(app: Any, state: Callable[[], dict], *, poll_s: float = 0.25, wait_s: float = 10.0) -> None:
    """Register /, /api/state and /api/events on the Faust app's web server (bound where the app binds it)."""

    def snap() -> dict:
        d = state()
        d["version"] = _version(d)
        return d

    @app.page("/")
    async def index(web, request):
        return web.html(PAGE)

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


PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>arena-flywheel</title>
<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}
.fail{border:1px solid #c66;margin:4px;padding:4px}pre{white-space:pre-wrap;max-height:8em;overflow:auto}</style></head>
<body><h1>arena-flywheel</h1><div id="meta"></div>
<h2>Leaderboard</h2><table id="lb"><thead><tr><th>rank</th><th>model</th><th>rating</th><th>95% CI</th><th>battles</th><th>win rate</th></tr></thead><tbody></tbody></table>
<h2>Rating over time</h2><svg id="hist" width="700" height="260"></svg>
<h2>Checkpoints</h2><ul id="ckpt"></ul>
<h2>Pairwise win rate (row beats column, valid verdicts only), split <select id="split" onchange="last&&render(last)"><option>eval</option><option>train</option></select></h2><table id="heat"></table>
<h2>Judge health</h2><pre id="health"></pre>
<h2>Recent failures</h2><div id="fails"></div>
<script>
function esc(s){return String(s==null?'':s).replace(/[&<>"]/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]))}
function f1(x){return x==null?'':Number(x).toFixed(1)}
var last=null;
function render(s){
 last=s;var sp=document.getElementById('split').value,pairs=(s.pairs_by_split||{})[sp]||[];
 document.getElementById('meta').textContent='verdicts: '+s.verdicts+' | updated '+new Date(s.generated_at*1000).toLocaleTimeString();
 document.querySelector('#lb tbody').innerHTML=s.leaderboard.map(r=>'<tr><td>'+esc(r.rank)+'</td><td>'+esc(r.model)+'</td><td>'+f1(r.rating)+'</td><td>'+f1(r.lower)+' .. '+f1(r.upper)+'</td><td>'+esc(r.battles)+'</td><td>'+(r.win_rate==null?'':(100*r.win_rate).toFixed(1)+'%')+'</td></tr>').join('');
 var svg=document.getElementById('hist'),pts=[],W=700,H=260,cols=['#1f77b4','#ff7f0e','#2ca02c','#d62728','#9467bd','#8c564b','#e377c2','#7f7f7f'];
 for(var m in s.history)s.history[m].forEach(p=>pts.push(p));
 var h='';if(pts.length){var t0=Math.min(...pts.map(p=>p[0])),t1=Math.max(...pts.map(p=>p[0]))||t0+1,y0=Math.min(...pts.map(p=>p[2])),y1=Math.max(...pts.map(p=>p[3]));if(t1==t0)t1=t0+1;if(y1==y0){y0-=1;y1+=1}
 var X=t=>40+(W-150)*(t-t0)/(t1-t0),Y=y=>H-20-(H-40)*(y-y0)/(y1-y0),i=0;
 h+='<text x="2" y="15" font-size="10">'+f1(y1)+'</text><text x="2" y="'+(H-20)+'" font-size="10">'+f1(y0)+'</text>';
 for(var m in s.history){var c=cols[i++%cols.length],ps=s.history[m];h+='<polyline fill="none" stroke="'+c+'" points="'+ps.map(p=>X(p[0])+','+Y(p[1])).join(' ')+'"/>'+ps.map(p=>'<circle r="2" fill="'+c+'" cx="'+X(p[0])+'" cy="'+Y(p[1])+'"/>').join('');var l=ps[ps.length-1];h+='<text x="'+(X(l[0])+4)+'" y="'+Y(l[1])+'" font-size="11" fill="'+c+'">'+esc(m)+'</text>'}}
 svg.innerHTML=h;
 document.getElementById('ckpt').innerHTML=s.checkpoints.map(c=>'<li>'+esc(c.model)+' iteration '+esc(c.iteration)+': '+esc(c.competitor||c.checkpoint)+(c.rating!=null?' (rating '+f1(c.rating)+')':' (not rated yet)')+'</li>').join('');
 var ms=[...new Set(pairs.flatMap(p=>[p.a,p.b]))].sort(),cell={};
 pairs.forEach(p=>{var n=p.a_wins+p.ties+p.b_wins;cell[p.a+'|'+p.b]=[(p.a_wins+p.ties/2)/n,n];cell[p.b+'|'+p.a]=[(p.b_wins+p.ties/2)/n,n]});
 document.getElementById('heat').innerHTML='<tr><th></th>'+ms.map(m=>'<th>'+esc(m)+'</th>').join('')+'</tr>'+ms.map(r=>'<tr><th>'+esc(r)+'</th>'+ms.map(c=>{var v=cell[r+'|'+c];if(!v)return'<td></td>';var g=Math.round(255*v[0]),b='rgb('+(255-g)+','+g+',120)';return'<td style="background:'+b+'" title="'+v[1]+' battles">'+(100*v[0]).toFixed(0)+'% ('+v[1]+')</td>'}).join('')+'</tr>').join('');
 document.getElementById('health').textContent=Object.keys(s.health).map(k=>k.replace(/_/g,' ')+': '+(s.health[k]==null?'n/a':(100*s.health[k]).toFixed(1)+'%')).join('\\n')||'n/a';
 document.getElementById('fails').innerHTML=s.failures.map(f=>'<div class="fail"><b>'+esc(f.instruction_id||f.id)+'</b> '+esc(f.loser||f.target||'')+' lost to '+esc(f.winner_model||'')+' (margin '+(f.margin==null?'n/a':esc(Number(f.margin).toFixed(2)))+')<pre>'+esc((f.messages||[]).map(m=>m.role+': '+m.content).join('\\n'))+'</pre>'+(f.reference?'<b>reference</b><pre>'+esc(f.reference)+'</pre>':'')+'<b>'+esc(f.loser||'target')+'</b><pre>'+esc((f.target_answers||[]).join('\\n---\\n'))+'</pre><b>'+esc(f.winner_model||'winner')+'</b><pre>'+esc((f.winner_answers||[]).join('\\n---\\n'))+'</pre>'+(f.judge_id?'<b>judge</b> '+esc(f.judge_id):'')+'</div>').join('');
}
var ver='';
async function loop(){for(;;){try{var r=await fetch('/api/events?since='+ver);var s=await r.json();ver=s.version;render(s)}catch(e){await new Promise(r=>setTimeout(r,1000))}}}
loop();
</script></body></html>
"""
