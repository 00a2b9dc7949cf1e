"""The trainer service: failures in, checkpoints out (`arena train`, `arena iterations`).

State is derived from two topics, so a restarted service picks up where it was:
- `checkpoints` (one partition, read whole): each target's current checkpoint, its path and the last
  iteration number; the next round is iteration last + 1, with threshold
  `threshold_schedule[min(N - 1, len - 1)]` (the paper moves it 3 -> 2 -> 1).
- `failures` (compacted, keyed by instruction) under the group `<prefix>trainer`: the latest record
  per (instruction, target) wins. Only failures of the target's CURRENT checkpoint count: once a round
  trains, the target moves to the new checkpoint, so failures already used can never be used again,
  even when a crash re-delivers them (offsets are committed after the round's checkpoints are
  published: at-least-once, and a re-trained round reproduces the same checkpoint names and ids).

A round closes when `trainer.batch_size` failures of the current checkpoint pass the iteration's
threshold (the largest margins are used), or on command: `arena train --iteration N` closes iteration
N now with whatever qualifies (it reads the failures topic itself and exits). Targets are
`arena.targets`, or every target seen in failures when that list is empty; a target's base model is its
`[[competitors]]` entry (`model`).
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field

from arena_flywheel.config import Config
from arena_flywheel.events import BadEvent, Checkpoint, Failure, decode
from arena_flywheel.kafka import Publisher, make_consumer

from .select import select, with_earlier
from .train import IterationResult, train_iteration

log = logging.getLogger(__name__)


def group_id(cfg: Config) -> str:
    return f"{cfg.kafka.topic_prefix}trainer"


def threshold_for(cfg: Config, iteration: int) -> float:
    s = cfg.trainer.threshold_schedule or [0.0]
    return float(s[min(max(iteration, 1) - 1, len(s) - 1)])


@dataclass
class TargetState:
    name: str
    checkpoint: str = "base"
    path: str | None = None
    iteration: int = 0  # last trained iteration
    failures: dict[str, Failure] = field(default_factory=dict)  # instruction id -> latest failure
    used: dict[str, Failure] = field(default_factory=dict)  # trainer.accumulate: earlier rounds' selections
    used_ids: list[str] = field(default_factory=list)  # the failure ids the current checkpoint trained on

    def current(self) -> list[Failure]:
        return [f for f in self.failures.values() if f.target_checkpoint == self.checkpoint]


def read_checkpoint_events(cfg: Config, timeout_s: float = 10.0) -> list[Checkpoint]:
    from consumers.generate import read_checkpoints

    return read_checkpoints(cfg, timeout_s)


class TrainerService:
    """`run(stop_event, max_idle_s)` in the foreground, or `start()` + `poll_once()` + `close()`."""

    def __init__(self, cfg: Config, *, poll_timeout_ms: int = 500):
        self.cfg = cfg
        self.poll_timeout_ms = poll_timeout_ms
        self.targets: dict[str, TargetState] = {}
        self.results: list[IterationResult] = []
        self.bad_records = 0
        self._consumer = None
        self._pending = None
        self._pub: Publisher | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "TrainerService":
        if self._consumer is not None:
            return self
        self._pub = Publisher(self.cfg)
        self.refresh_checkpoints()
        self.restore_used()
        self._consumer = make_consumer(self.cfg, [self.cfg.topic("failures")], group_id(self.cfg))
        self._join()
        return self

    def _join(self) -> None:
        # kafka-python drops a JoinGroup result that completes between two short polls, and Tansu holds
        # the reply for about half the session timeout: join with one long wait (as consumers/generate does).
        timeout_ms = self.cfg.kafka.session_timeout_ms + 5000
        ensure = getattr(getattr(self._consumer, "_coordinator", None), "ensure_active_group", None)
        if callable(ensure):
            try:
                ensure(timeout_ms=timeout_ms)
                return
            except Exception as exc:  # noqa: BLE001 - the next poll reports real errors
                log.debug("trainer: group join did not finish: %s", exc)
        self._pending = self._consumer.poll(timeout_ms=timeout_ms, max_records=500)

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close(autocommit=False)
            self._consumer = None
        if self._pub is not None:
            self._pub.close()
            self._pub = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ state
    def wanted(self, target: str) -> bool:
        return not self.cfg.arena.targets or target in self.cfg.arena.targets

    def state(self, target: str) -> TargetState:
        st = self.targets.get(target)
        if st is None:
            st = self.targets[target] = TargetState(target, path=self.base_path(target))
        return st

    def base_path(self, target: str) -> str | None:
        return next((c.model for c in self.cfg.competitors if c.name == target), None)

    def refresh_checkpoints(self) -> None:
        for ev in read_checkpoint_events(self.cfg):
            if not self.wanted(ev.model):
                continue
            st = self.state(ev.model)
            if ev.iteration >= st.iteration:  # the latest iteration's last stage is what the pool serves
                st.checkpoint, st.path, st.iteration = ev.checkpoint, ev.path, ev.iteration
                st.used_ids = list(ev.metrics.get("failure_ids") or [])

    def restore_used(self) -> None:
        """trainer.accumulate after a restart: the failures the current checkpoints trained on (their ids
        are in the checkpoint's metrics; with accumulate that is every earlier round's), read back from
        the failures topic, and from the SQL ledger for any the topic no longer has (a broker restart)."""
        todo = {t: st for t, st in self.targets.items() if st.used_ids and not st.used}
        if not self.cfg.trainer.accumulate or not todo:
            return
        wanted = {i for st in todo.values() for i in st.used_ids}
        found = {f.id: f for f in read_failure_events(self.cfg) if f.id in wanted}
        missing = wanted - found.keys()
        if missing:
            found.update({f.id: f for f in _ledger_failures(self.cfg, missing)})
        for st in todo.values():
            got = [found[i] for i in st.used_ids if i in found]
            st.used = {f.instruction_id: f for f in got}
            log.info("%s: trainer.accumulate restored %d of the %d failures %s trained on", st.name, len(got),
                     len(st.used_ids), st.checkpoint)
            if len(got) < len(st.used_ids):
                log.warning("%s: %d failures %s trained on are on neither the failures topic nor the ledger "
                            "(%s); the next round accumulates without them", st.name,
                            len(st.used_ids) - len(got), st.checkpoint, self.cfg.db.url)

    def add(self, f: Failure) -> None:
        if self.wanted(f.target):
            self.state(f.target).failures[f.instruction_id] = f  # latest record per (instruction, target)

    # ------------------------------------------------------------------ rounds
    def ready(self, st: TargetState) -> list[Failure]:
        t = threshold_for(self.cfg, st.iteration + 1)
        return select(st.current(), "pair-judge", budget=self.cfg.trainer.batch_size, threshold=t,
                      seed=self.cfg.trainer.seed)

    def close_round(self, target: str, iteration: int | None = None, force: bool = False) -> IterationResult | None:
        """Train the target's next iteration if its batch is full (or `force`); None when nothing ran."""
        st = self.state(target)
        n = st.iteration + 1
        if iteration is not None and iteration != n:
            raise ValueError(f"{target}: the next iteration is {n} (iteration {st.iteration} is the last trained)")
        chosen = self.ready(st)
        if not chosen or (len(chosen) < self.cfg.trainer.batch_size and not force):
            return None
        if not st.path:
            raise ValueError(f"{target}: no model path: add it to [[competitors]] (name = {target!r}, model = DIR)")
        log.info("%s: closing iteration %d with %d failures of %s (threshold %g)", target, n, len(chosen),
                 st.checkpoint, threshold_for(self.cfg, n))
        if self.cfg.trainer.accumulate:
            chosen = with_earlier(chosen, st.used)
        res = train_iteration(self.cfg, model_path=st.path, failures=chosen, iteration=n, target=target,
                              parent=st.checkpoint, publisher=self._pub)
        if res.checkpoints:
            last = res.checkpoints[-1]
            st.checkpoint, st.path, st.iteration = last.checkpoint, last.path, n
            log.info("%s: iteration %d trained: %s", target, n, ", ".join(
                f"{k.checkpoint} (loss {k.metrics.get('train_loss')})" for k in res.checkpoints))
        self.results.append(res)
        return res

    def poll_once(self) -> int:
        """Read a batch of failures, close every full round; offsets committed after that. Returns records read."""
        self.start()
        batches, self._pending = self._pending or self._consumer.poll(timeout_ms=self.poll_timeout_ms,
                                                                      max_records=500), None
        n = 0
        for tp, records in batches.items():
            for rec in records:
                n += 1
                try:
                    self.add(decode(rec.value, Failure))
                except BadEvent as exc:
                    self.bad_records += 1
                    self._pub.dead_letter(f"{tp.topic}[{tp.partition}]@{rec.offset}", exc.reason, rec.value,
                                          stage="trainer")
        trained = False
        for target in list(self.targets):
            while self.close_round(target) is not None:
                trained = True
        if n or trained:
            self._pub.flush()
            try:
                self._consumer.commit()
            except Exception as exc:  # noqa: BLE001 - e.g. a round longer than max_poll_interval_ms
                # The group moved on while we trained; the records come again after the rejoin, and
                # failures of the checkpoint just trained no longer count, so nothing is used twice.
                log.warning("trainer: offset commit failed (%s: %s); records will be re-read",
                            type(exc).__name__, exc)
        return n

    def run(self, stop_event: threading.Event | None = None, max_idle_s: float | None = None) -> list[IterationResult]:
        stop_event = stop_event or threading.Event()
        try:
            self.start()
            last = time.monotonic()
            while not stop_event.is_set():
                if self.poll_once():
                    last = time.monotonic()
                elif max_idle_s is not None and time.monotonic() - last >= max_idle_s:
                    break
            return self.results
        finally:
            self.close()


def read_failure_events(cfg: Config, timeout_s: float = 10.0) -> list[Failure]:
    """Every Failure on the failures topic (all partitions, no group), in partition order."""
    from kafka import TopicPartition

    c = make_consumer(cfg, None, None)
    try:
        parts = c.partitions_for_topic(cfg.topic("failures")) or set()
        tps = [TopicPartition(cfg.topic("failures"), p) for p in sorted(parts)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        end = c.end_offsets(tps)
        out: list[Failure] = []
        deadline = time.monotonic() + timeout_s
        while any(c.position(tp) < end[tp] for tp in tps) and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=200).values():
                for r in recs:
                    try:
                        out.append(decode(r.value, Failure))
                    except BadEvent:
                        continue  # the running service dead-letters it
        return out
    finally:
        c.close(autocommit=False)


def _ledger_failures(cfg: Config, ids: set[str]) -> list[Failure]:
    """Failures with these ids from the SQL ledger; none when there is no ledger to read."""
    from consumers.ledger import LedgerStore

    try:
        store = LedgerStore(cfg.db.url, create=False)
    except (FileNotFoundError, ValueError):
        return []
    try:
        return store.events("failure", id=sorted(ids))
    except Exception as exc:  # noqa: BLE001 - an unreachable or older ledger: restore what the topic had
        log.warning("trainer: cannot read failures from the ledger %s: %s", cfg.db.url, exc)
        return []
    finally:
        store.close()


# ---------------------------------------------------------------------- CLI: arena train
def add_arguments(p) -> None:
    p.add_argument("--iteration", type=int, metavar="N", help="close iteration N now with the failures that "
                   "qualify, train it and exit (default: run the service in the foreground)")
    p.add_argument("--target", help="the target model (default: the only one in arena.targets / failures)")
    p.add_argument("--max-idle", type=float, default=None, metavar="S", help="stop after S seconds without failures")


def _need_broker(cfg: Config, hint: str = "") -> None:
    from arena_flywheel.cli import UsageError

    if not cfg.kafka.bootstrap_servers:
        raise UsageError(f"needs a running broker: start `arena broker` (or set KAFKA_BOOTSTRAP_SERVERS){hint}")


def run(args, cfg: Config) -> int:
    from arena_flywheel.cli import UsageError

    _need_broker(cfg)
    if args.iteration is not None:
        if args.iteration < 1:
            raise UsageError("--iteration must be at least 1, e.g. --iteration 1")
        svc = TrainerService(cfg)
        svc.refresh_checkpoints()
        for f in read_failure_events(cfg):
            svc.add(f)
        targets = [args.target] if args.target else list(cfg.arena.targets) or sorted(svc.targets)
        if len(targets) != 1:
            raise UsageError(f"say which target: --target NAME (known: {', '.join(targets) or 'none: no failures '}"
                             f"{'on the topic yet' if not targets else ''})")
        with Publisher(cfg) as pub:
            svc._pub = pub
            try:
                res = svc.close_round(targets[0], iteration=args.iteration, force=True)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
        if res is None:
            st = svc.state(targets[0])
            raise UsageError(f"{targets[0]}: no failures of {st.checkpoint} lost by >= "
                             f"{threshold_for(cfg, args.iteration):g} yet; nothing to train")
        for ck in res.checkpoints:
            print(f"{ck.model}@{ck.checkpoint} {ck.path} train_loss={ck.metrics.get('train_loss')} "
                  f"failures_used={ck.metrics.get('failures_used')}")
        return 0
    # a closed round is the foreground command's output: show it without -v
    log.setLevel(min(logging.getLogger().getEffectiveLevel(), logging.INFO))
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set()) \
        if threading.current_thread() is threading.main_thread() else None
    print(f"trainer on {cfg.kafka.bootstrap_servers}: group {group_id(cfg)}, rounds of {cfg.trainer.batch_size}, "
          f"stages {' -> '.join(cfg.trainer.stages)}", flush=True)
    try:
        results = TrainerService(cfg).run(stop, max_idle_s=args.max_idle)
    except KeyboardInterrupt:
        results = []
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print(f"trained {len(results)} iteration(s)")
    return 0


# ---------------------------------------------------------------------- CLI: arena iterations
def iteration_rows(cfg: Config, checkpoints: list[Checkpoint], split: str = "eval") -> tuple[list[dict], str]:
    """One row per checkpoint (failures used, train loss, rating/CI vs its parent when verdicts exist),
    and a note saying where ratings came from or why there are none."""
    ratings, note = {}, ""
    try:
        from streams.engine import leaderboard_from_battles
        from streams.leaderboard_cmd import ledger_verdicts

        triples = ledger_verdicts(cfg.db.url, split)
        ratings = {r.model: r for r in leaderboard_from_battles(triples, cfg.ratings)}
        note = f"ratings: BT over {len(triples)} {split} verdicts in {cfg.db.url}"
    except ImportError as exc:
        note = f"no ratings: {exc.name or exc} is not installed"
    except Exception as exc:  # noqa: BLE001 - the table is still useful without ratings
        note = f"no ratings: {exc}"
    from arena_flywheel.events import competitor_name

    rows = []
    for ck in checkpoints:
        me, parent = ratings.get(competitor_name(ck.model, ck.checkpoint)), \
            ratings.get(competitor_name(ck.model, ck.parent or "base"))
        rows.append({"model": ck.model, "iteration": ck.iteration, "stage": ck.stage, "checkpoint": ck.checkpoint,
                     "parent": ck.parent, "failures_used": ck.metrics.get("failures_used"),
                     "train_loss": ck.metrics.get("train_loss"),
                     "rating": me.rating if me else None, "lower": me.lower if me else None,
                     "upper": me.upper if me else None,
                     "vs_parent": (me.rating - parent.rating) if me and parent else None})
    return rows, note


def ledger_checkpoints(url: str) -> list[Checkpoint] | None:
    """Checkpoint events from the ledger (the durable copy: Tansu keeps topics in memory only), or None
    when there is no ledger to read (consumers.ledger missing, or no such database)."""
    try:
        from consumers.ledger import LedgerStore
    except ImportError:
        return None
    try:
        store = LedgerStore(url, create=False)
    except (FileNotFoundError, ValueError):
        return None
    try:
        return list(store.events("checkpoint"))
    except Exception as exc:  # noqa: BLE001 - e.g. a ledger without a checkpoint table yet
        log.debug("ledger checkpoints unreadable: %s", exc)
        return None
    finally:
        store.close()


def _it_args(p) -> None:
    p.add_argument("--split", default="eval", help="verdict split the ratings come from (default eval)")
    p.add_argument("--json", action="store_true", help="JSON rows instead of a table")
    p.add_argument("--from-topic", action="store_true", help="read checkpoints from the checkpoints topic "
                   "(default: the ledger when it has any, else the topic)")


def _it_run(args, cfg: Config) -> int:
    import json

    checkpoints = None if args.from_topic else ledger_checkpoints(cfg.db.url)
    if not checkpoints:
        _need_broker(cfg, f"; or run `arena ledger` so that {cfg.db.url} holds the checkpoints")
        checkpoints = read_checkpoint_events(cfg)
    rows, note = iteration_rows(cfg, checkpoints, args.split)
    if args.json:
        print(json.dumps({"rows": rows, "note": note}, indent=1))
        return 0

    def f(v, fmt="{:.3f}"):
        return "-" if v is None else fmt.format(v) if isinstance(v, float) else str(v)

    print(f"{'model':12s} {'it':>3s} {'stage':6s} {'checkpoint':12s} {'failures':>8s} {'loss':>8s} "
          f"{'rating':>7s} {'95% CI':>13s} {'vs parent':>9s}")
    for r in rows:
        ci = "-" if r["lower"] is None else f"{r['lower']:.0f}..{r['upper']:.0f}"
        print(f"{r['model']:12s} {r['iteration']:>3d} {r['stage']:6s} {r['checkpoint']:12s} "
              f"{f(r['failures_used']):>8s} {f(r['train_loss']):>8s} {f(r['rating'], '{:.0f}'):>7s} {ci:>13s} "
              f"{f(r['vs_parent'], '{:+.0f}'):>9s}")
    if not rows:
        print("(no checkpoints yet)")
    print(note)
    return 0


def _make_iterations_cmd():
    from arena_flywheel.cli import Command

    return Command(_it_args, _it_run)


iterations = _make_iterations_cmd()
