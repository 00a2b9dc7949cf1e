"""`arena demo`: the whole Arena Learning flywheel on a laptop CPU, with no configuration.

Every part is the real one, wired as in production, only small:
- the embedded Kafka-protocol broker (Tansu) and a SQLite ledger,
- a zoo of tiny competitor models of different strength, trained on the spot on verifiable tasks
  (cached after the first run); the weakest is the target,
- one generation pool per competitor, a judge pool with the reference judge (two games per pair),
- the Faust worker (pairing + ratings agents) in its own process,
- the trainer: pair-judge selection of the target's failures -> TRL SFT (and DPO) -> checkpoint ->
  hot-plugged by the target's pool, which re-answers the eval split so the checkpoint gets a rating.

It ends with a table of the target's rating per iteration (95% CIs) and a JSON summary.
"""
from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import httpx
import transformers
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from arena_flywheel.broker import DIE_WITH_PARENT, free_port, kafka_for
from arena_flywheel.config import CompetitorConfig, Config
from arena_flywheel.errors import ArenaError, InputError
from arena_flywheel.events import Instruction, competitor_name
from arena_flywheel.kafka import Publisher
from arena_flywheel.store import LedgerStore
from consumers.generate import GenerationPool
from consumers.judge import JudgePool
from consumers.ledger import Ledger
from producers import tasks
from trainer.service import TrainerService

from .iterations import anchored_board, describe_anchor
from .report import write_report
from .watch import from_ledger, render
from .zoo import DEMO, build_zoo

log = logging.getLogger("arena.demo")


@dataclass(frozen=True)
class DemoPlan:
    eval_size: int
    train_per_iteration: int
    iterations: int
    stages: tuple[str, ...]
    max_new_tokens: int = 16
    # Measured on the zoo: 8 epochs at 5e-3 moves the target's mean reference score 1.4 -> 3.2 in
    # three iterations (win rate vs the strongest 0.05 -> 0.24); 3 epochs at 1e-3 barely moves it.
    learning_rate: float = 5e-3
    epochs: float = 8.0
    # DPO after that SFT: at the SFT settings it overfits (loss 0.02) and cost 45 s per iteration.
    dpo_args: tuple[tuple[str, object], ...] = (("num_train_epochs", 2.0), ("learning_rate", 5e-4))
    # The rl stage (RLOO against a reward model trained on the slice's battles) and that reward model.
    rl_args: tuple[tuple[str, object], ...] = (("num_train_epochs", 1.0), ("learning_rate", 1e-5))
    reward_args: tuple[tuple[str, object], ...] = (("num_train_epochs", 2.0), ("learning_rate", 1e-3))


# Full: the paper's schedule, sft -> dpo -> rl per iteration, each on its own fresh slice battled by the newest
# checkpoint. With accumulated failures (trainer.accumulate) 5 SFT epochs; DPO at 5e-4 scored below the SFT
# checkpoint it started from in 4 of 5 measured iterations (-26..-130, +42 once) when it trained on the same
# failures; at 1e-4 it was level or above (-8..+25) in all six measured.
FULL_PLAN = DemoPlan(eval_size=100, train_per_iteration=150, iterations=3, stages=("sft", "dpo", "rl"), epochs=5.0,
                     dpo_args=(("num_train_epochs", 1.0), ("learning_rate", 1e-4)))
FAST_PLAN = DemoPlan(eval_size=60, train_per_iteration=100, iterations=3, stages=("sft",))
def demo_config(cfg: Config, data_dir: Path, zoo: dict[str, Path], plan: DemoPlan) -> Config:
    """The demo's configuration: the zoo as competitors, the reference judge, target-vs-all battles."""
    cfg = cfg.model_copy(deep=True)
    cfg.data_dir = str(data_dir)
    cfg.db.url = f"sqlite:///{data_dir / 'demo-ledger.db'}"
    cfg.kafka.topic_prefix = "demo."
    cfg.competitors = [
        CompetitorConfig(name=name, backend="transformers", model=str(path), max_new_tokens=plan.max_new_tokens,
                         batch_size=64, temperature=0.0, device="cpu")
        for name, path in zoo.items()
    ]
    cfg.arena.targets = ["target"]
    cfg.arena.battle_plan = "target-vs-all"
    cfg.judge.backend = "reference"
    cfg.judge.policy = "score-sum"
    cfg.trainer.output_dir = str(data_dir / "checkpoints")
    cfg.trainer.stages = list(plan.stages)
    cfg.trainer.learning_rate = plan.learning_rate
    cfg.trainer.epochs = plan.epochs
    cfg.trainer.per_device_batch_size = 16
    cfg.trainer.stage_args = {"dpo": dict(plan.dpo_args), "rl": dict(plan.rl_args), "reward": dict(plan.reward_args)}
    cfg.trainer.rl_max_completion_length = plan.max_new_tokens  # the pools answer in as many tokens
    # Measured (--fast): training on each round's failures alone went 726 -> 997 -> 894 -> 1079 (the small
    # second round overfit); with the earlier rounds' failures kept, 726 -> 997 -> 1052 -> 1087.
    cfg.trainer.accumulate = True
    # A round trains on every failure of the slice that passes the threshold (the slice is the budget).
    cfg.trainer.batch_size = plan.train_per_iteration
    cfg.trainer.slice_size = plan.train_per_iteration
    return cfg


@dataclass
class Services:
    """The running parts; stop() ends them all (threads cooperatively, the Faust worker by SIGTERM)."""

    stop_event: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def thread(self, name: str, target, *a):
        def body():
            try:
                target(*a)
            except Exception as exc:  # noqa: BLE001 - reported to the user, demo stops
                log.exception("%s failed", name)
                self.errors.append(f"{name}: {type(exc).__name__}: {exc}")
                self.stop_event.set()

        t = threading.Thread(target=body, name=name, daemon=True)
        t.start()
        self.threads.append(t)

    def check(self):
        for p in self.procs:
            if p.poll() is not None:
                self.errors.append(f"Faust worker exited with code {p.returncode} (log: {getattr(p, 'log_path', '?')})")
        if self.errors:
            raise RuntimeError("; ".join(self.errors))

    def stop(self):
        self.stop_event.set()
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        for t in self.threads:
            t.join(20)


def _write_toml(cfg: Config, path: Path) -> None:
    """Write the config the Faust worker subprocess reads (TOML, only what differs from defaults matters)."""
    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        return json.dumps(str(v))

    data = cfg.model_dump(exclude_none=True)
    lines = []
    for k, v in data.items():
        if not isinstance(v, (dict, list)) or (isinstance(v, list) and not (v and isinstance(v[0], dict))):
            lines.append(f"{k} = {val(v)}")
    for k, v in data.items():
        if isinstance(v, dict):
            lines.append(f"\n[{k}]")
            lines += [f"{kk} = {val(vv)}" for kk, vv in v.items() if not isinstance(vv, dict)]
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for item in v:
                lines.append(f"\n[[{k}]]")
                lines += [f"{kk} = {val(vv)}" for kk, vv in item.items() if not isinstance(vv, dict)]
    path.write_text("\n".join(lines) + "\n")


class LedgerView:
    """What the demo asks of the ledger while it runs: progress, ratings, the summary. Ratings are the
    iteration table's anchored fit (arena_cli/iterations.py), so the demo's table and `arena iterations`
    on the same ledger print the same numbers."""

    def __init__(self, cfg: Config, trained: set[str] = frozenset({"target"})):
        self.cfg = cfg
        self.trained = set(trained)
        self.store = LedgerStore(cfg.db.url)
        self.anchor: str | None = None

    def verdicts_of(self, competitor: str, split: str) -> int:
        # counted by the database: the demo polls this every second over thousands of verdicts
        return sum(n for a, b, _, n in self.store.battle_counts(split) if competitor in (a, b))

    def answered(self, model: str, checkpoint: str, split: str = "eval") -> int:
        return len(self.store.payloads("response", split=split, model=model, checkpoint=checkpoint))

    def leaderboard(self, split: str = "eval") -> list:
        board, self.anchor, _ = anchored_board(self.cfg, self.store, split, self.trained)
        return sorted(board.values(), key=lambda r: r.rank)

    def row(self, competitor: str, board: list | None = None) -> dict:
        for r in board if board is not None else self.leaderboard():
            if r.model == competitor:
                return {"rating": r.rating, "lower": r.lower, "upper": r.upper, "rank": r.rank,
                        "battles": r.battles, "win_rate": r.win_rate}
        raise RuntimeError(f"{competitor} has no rated eval battles yet")

    def counts(self) -> dict[str, int]:
        return self.store.counts()

    def close(self):
        self.store.close()


def _live_view(cfg: Config, title: str):
    """The `arena watch` table over the demo's ledger, under a line saying what the demo waits for."""
    return Group(Text(title), render(from_ledger(cfg)))


def _quiet_libraries() -> None:
    """The demo prints its own progress lines: no per-load / per-map progress bars from the libraries."""
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


class DemoTimeout(ArenaError, TimeoutError):
    """A demo phase waited longer than --timeout (one line for the user, not a traceback)."""


class Demo:
    def __init__(self, cfg: Config, plan: DemoPlan, data_dir: Path, live: bool = True, timeout: float = 900,
                 zoo_cache: Path | None = None):
        self.cfg = cfg
        self.plan = plan
        self.data_dir = data_dir
        self.console = Console()
        self.live = live and self.console.is_terminal
        self.timeout = timeout
        self.services = Services()
        self.rows: list[dict] = []  # one per rated target checkpoint
        self.failures_used: dict[int, int] = {}  # trained on (with trainer.accumulate: earlier rounds' too)
        self.failures_selected: dict[int, int] = {}  # newly selected in the iteration
        self.t0 = time.monotonic()
        self.web_port = 0
        self.zoo_cache = zoo_cache

    def say(self, msg: str) -> None:
        self.console.print(f"[{time.monotonic() - self.t0:6.1f}s] {msg}", highlight=False, soft_wrap=True)

    # --- the pieces ---------------------------------------------------------------------------
    def start_services(self, cfg: Config) -> None:
        s = self.services
        s.thread("ledger", Ledger(cfg).run, s.stop_event)
        for comp in cfg.competitors:
            s.thread(f"pool-{comp.name}", GenerationPool(cfg, comp).run, s.stop_event)
        s.thread("judge", JudgePool(cfg).run, s.stop_event)
        toml = self.data_dir / "demo-arena.toml"
        _write_toml(cfg, toml)
        self.web_port = free_port()
        log_path = self.data_dir / "faust-worker.log"
        env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=cfg.kafka.bootstrap_servers)
        p = subprocess.Popen([sys.executable, "-m", "arena_cli", "--config", str(toml), "stream",
                              "--web-port", str(self.web_port)],
                             stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, env=env,
                             cwd=str(self.data_dir), preexec_fn=DIE_WITH_PARENT)  # gone with the demo, kill -9 too
        p.log_path = log_path
        s.procs.append(p)

    def publish(self, cfg: Config, instructions: list[Instruction]) -> None:
        with Publisher(cfg) as pub:
            for ins in instructions:
                pub.send(ins)

    def wait_for(self, what: str, done, view: LedgerView, interval: float = 1.0):
        """Poll `done() -> (ok, progress)`; show the live leaderboard (or a line every 10 s) meanwhile."""
        deadline = time.monotonic() + self.timeout
        last = 0.0
        live = None
        if self.live:
            live = Live(console=self.console, refresh_per_second=2, transient=True)
            live.start()
        try:
            while True:
                self.services.check()
                ok, progress = done()
                if ok:
                    return
                if time.monotonic() > deadline:
                    raise DemoTimeout(f"timed out after {self.timeout:.0f}s waiting for {what} ({progress}); "
                                      f"a slow machine needs a larger --timeout (now {self.timeout:.0f})")
                if live is not None:
                    live.update(_live_view(view.cfg, f"live ratings (eval split) - waiting for {what}: {progress}"))
                elif time.monotonic() - last > 10:
                    self.say(f"waiting for {what}: {progress}")
                    last = time.monotonic()
                time.sleep(interval)
        finally:
            if live is not None:
                live.stop()

    # --- the flywheel -------------------------------------------------------------------------
    def run(self) -> dict:
        _quiet_libraries()

        plan = self.plan
        self.say(f"zoo of tiny competitors (trained once, then cached): {', '.join(n for n, _ in DEMO.snapshots)}")
        zoo = build_zoo(self.zoo_cache, DEMO,
                        progress=lambda n, steps: self.say(f"  zoo model {n!r} ready after {steps} SFT steps"))
        cfg = demo_config(self.cfg, self.data_dir, zoo, plan)
        db_file = self.data_dir / "demo-ledger.db"
        for f in (db_file, db_file.with_name(db_file.name + "-wal"), db_file.with_name(db_file.name + "-shm")):
            f.unlink(missing_ok=True)  # the embedded broker starts empty; so does the demo's ledger
        shutil.rmtree(cfg.trainer.output_dir, ignore_errors=True)
        shutil.rmtree(self.data_dir / "faust", ignore_errors=True)  # Faust state of a broker that is gone

        eval_set = list(tasks.generate(plan.eval_size, seed=1, split="eval"))
        exclude = {i.messages[0].content for i in eval_set}
        train_all = list(tasks.generate(plan.train_per_iteration * (plan.iterations * len(plan.stages) + 1), seed=2,
                                        split="train",
                                        exclude=exclude))
        n_slices = plan.iterations * len(plan.stages) + 1  # one per round, and the last checkpoint's
        slices = [train_all[i * plan.train_per_iteration:(i + 1) * plan.train_per_iteration]
                  for i in range(n_slices)]

        with kafka_for(cfg) as (cfg, _embedded):
            self.say(f"embedded Kafka broker on {cfg.kafka.bootstrap_servers}; ledger {cfg.db.url}")
            self.start_services(cfg)
            self.say(f"Faust worker (pairing + ratings) running; live dashboard at "
                     f"http://127.0.0.1:{self.web_port}/ (JSON: /leaderboard)")
            view = LedgerView(cfg)
            try:
                return self._loop(cfg, view, eval_set, slices)
            finally:
                self.services.stop()
                view.close()

    def _loop(self, cfg: Config, view: LedgerView, eval_set, slices) -> dict:
        plan = self.plan
        target = "target"
        opponents = [c.name for c in cfg.competitors if c.name != target]
        checkpoint = "base"
        rounds = plan.iterations * len(plan.stages)
        # The production trainer service (what `arena train` runs); the demo closes each round on command
        # once its slice is judged, as `arena train --iteration N` does.
        trainer = TrainerService(cfg)
        self.publish(cfg, eval_set + slices[0])
        battled = {competitor_name(target, checkpoint): 1}  # train slices each target checkpoint answered
        self.say(f"fed {len(eval_set)} eval and {len(slices[0])} train instructions; "
                 f"{target} battles {', '.join(opponents)} (two games per battle, reference judge); "
                 f"{plan.iterations} iterations of {' -> '.join(plan.stages)}, each round on a fresh slice")
        round_info: dict = {"iteration": 0, "stage": "base", "selected": 0, "examples": 0}
        try:
            for k in range(rounds + 1):
                comp = competitor_name(target, checkpoint)
                want_eval = len(eval_set) * len(opponents)
                want_train = battled.get(comp, 0) * plan.train_per_iteration * len(opponents)

                def progress(comp=comp, want_eval=want_eval, want_train=want_train):
                    e, t = view.verdicts_of(comp, "eval"), view.verdicts_of(comp, "train")
                    return e >= want_eval and t >= want_train, f"{e}/{want_eval} eval and {t}/{want_train} train verdicts"

                self.wait_for(f"verdicts of {comp}", progress, view)
                row = {**round_info, "checkpoint": checkpoint, "competitor": comp, **view.row(comp),
                       "failures_selected": self.failures_selected.get(round_info["iteration"], 0)
                       if round_info["stage"] == "sft" else 0,
                       "failures_used": self.failures_used.get(round_info["iteration"], 0)
                       if round_info["stage"] == "sft" else 0}
                self.rows.append(row)
                self.say(f"iteration {row['iteration']} {row['stage']}: {comp} rated {row['rating']:.0f} "
                         f"(95% CI {row['lower']:.0f}..{row['upper']:.0f}) over {row['battles']} eval battles")
                if k == rounds:
                    break
                # Failures come from the stream worker: wait until it has applied every verdict the ledger has.
                self.wait_for("the stream worker to apply every verdict", self._stream_caught_up(view), view,
                              interval=0.2)
                try:
                    rnd = trainer.close_now(target)
                except InputError as exc:
                    raise RuntimeError(f"nothing to train on: {exc}") from None
                if rnd.stage == "sft":
                    self.failures_selected[rnd.iteration] = rnd.selected
                    self.failures_used[rnd.iteration] = rnd.used
                round_info = {"iteration": rnd.iteration, "stage": rnd.stage, "selected": rnd.selected,
                              "examples": rnd.used, "skipped": rnd.result.skipped}
                what = (f"{rnd.selected} failures selected, {rnd.used} trained on" if rnd.stage == "sft"
                        else f"{rnd.used} examples from a slice of {rnd.slice} instructions")
                if rnd.checkpoint is None:
                    self.say(f"iteration {rnd.iteration} {rnd.stage}: skipped ({rnd.result.skipped})")
                else:
                    checkpoint = rnd.checkpoint.checkpoint
                    loss = rnd.checkpoint.metrics.get("train_loss")
                    self.say(f"iteration {rnd.iteration} {rnd.stage}: {what}; checkpoint {checkpoint} saved"
                             + (f" (train loss {loss:.3f})" if isinstance(loss, (int, float)) else "")
                             + "; the target pool hot-plugs it and answers the eval split again")

                    def plugged(ckpt=checkpoint):
                        n = view.answered(target, ckpt)
                        return n >= len(eval_set), f"{n}/{len(eval_set)} eval answers"

                    self.wait_for(f"{target}@{checkpoint} to answer", plugged, view)
                self.publish(cfg, slices[k + 1])
                battled[competitor_name(target, checkpoint)] = battled.get(competitor_name(target, checkpoint), 0) + 1
                self.say(f"fed {len(slices[k + 1])} new train instructions")
        finally:
            trainer.close()
        return self.summary(view)

    def _stream_caught_up(self, view: LedgerView):
        """done() for wait_for: the worker's /leaderboard counts as many applied verdicts as the ledger holds
        (its failures are then on the failures topic)."""
        url = f"http://127.0.0.1:{self.web_port}/leaderboard"

        def done():
            want = view.counts().get("verdict", 0)
            try:
                got = int(httpx.get(url, timeout=2.0).json().get("verdicts") or 0)
            except (httpx.HTTPError, ValueError):
                got = -1
            return got >= want, f"{max(got, 0)}/{want} verdicts applied"

        return done

    def summary(self, view: LedgerView) -> dict:
        counts = view.counts()
        board = view.leaderboard()
        # The table is the final ledger's fit, as `arena iterations` computes it: the lines printed during
        # the run rated each checkpoint with the verdicts there were then.
        for r in self.rows:
            r.update(view.row(r["competitor"], board))
        plots = str(write_report(view.cfg, self.data_dir / "report"))
        first, last = self.rows[0], self.rows[-1]
        return {
            "target": "target",
            "iterations": self.rows,
            "improved": last["rating"] > first["rating"],
            "ci_separated": last["lower"] > first["upper"],
            "events": counts,
            "failures_selected": {str(k): v for k, v in self.failures_selected.items()},
            "failures_used": {str(k): v for k, v in self.failures_used.items()},
            "leaderboard": [r.__dict__ for r in board],
            "ledger": view.cfg.db.url,
            "anchor": list(view.anchor) if isinstance(view.anchor, tuple) else view.anchor,
            "anchor_rating": view.cfg.ratings.anchor_rating,
            "next": follow_up_commands(view.cfg.db.url, self.data_dir / "report"),
            "report": plots,
            "elapsed_s": round(time.monotonic() - self.t0, 1),
        }


def follow_up_commands(db_url: str, report_dir: Path) -> list[str]:
    """What to run after the demo: its broker is gone, its ledger stays (and is not ./arena-data's default)."""
    db = shlex.quote(db_url)
    return [f"arena watch --once --db {db}", f"arena iterations --db {db}",
            f"arena leaderboard --from-ledger --db {db}", f"arena dashboard --db {db}",
            f"arena report --db {db} --out {shlex.quote(str(report_dir))}",
            f"arena export --db {db} --what verdicts --out verdicts.jsonl"]


def print_table(console, summary: dict) -> None:
    pinned = describe_anchor(summary.get("anchor"), summary.get("anchor_rating", 1000.0))
    t = Table(title="the target's rating per round (eval split, 95% bootstrap CI, final ledger, "
                    f"{pinned}; new = failures selected, trained = examples trained on)", title_justify="left")
    for col in ("iter", "stage", "checkpoint", "rating", "95% CI", "battles", "new", "trained"):
        t.add_column(col, justify="left" if col in ("checkpoint", "stage") else "right", no_wrap=True)
    for r in summary["iterations"]:
        t.add_row(str(r["iteration"]), r["stage"], r["checkpoint"], f"{r['rating']:.0f}",
                  f"{r['lower']:.0f} .. {r['upper']:.0f}", str(r["battles"]), str(r["selected"]),
                  str(r["examples"]) + (" (skipped)" if r.get("skipped") else ""))
    console.print(t)
    ev = ", ".join(f"{k} {v}" for k, v in summary["events"].items())
    console.print(f"events: {ev}")
    console.print(f"ledger: {summary['ledger']}" + (f"; plots and tables: {summary['report']}" if summary["report"] else ""))
    console.print("next (the broker is gone, the ledger stays; from a clone, ./arena instead of arena):",
                  highlight=False)
    for cmd in summary.get("next", []):
        console.print(f"  {cmd}", highlight=False, soft_wrap=True)
