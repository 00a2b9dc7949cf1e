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
threshold (the largest margins are used), or on command: `close_now(target, N)` (what `arena train
--iteration N` and `arena demo` call) closes iteration N now with whatever qualifies on the topic. Targets are
`arena.targets`, or every target seen in failures when that list is empty; a target's base model is its
`[[competitors]]` entry (`model`).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from arena_flywheel.config import Config
from arena_flywheel.consume import Batch, ConsumerLoop, Service, run_loops
from arena_flywheel.errors import ConfigError, InputError
from arena_flywheel.events import Failure
from arena_flywheel.kafka import Publisher, read_checkpoints, read_topic
from arena_flywheel.store import LedgerStore

from .select import select, with_earlier
from .train import IterationResult, train_iteration

log = logging.getLogger(__name__)


def group_id(cfg: Config) -> str:
    return f"{cfg.kafka.topic_prefix}trainer"


def threshold_for(cfg: Config, iteration: int) -> float:
    return cfg.threshold_for(iteration)


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


def read_failure_events(cfg: Config, timeout_s: float = 10.0) -> list[Failure]:
    """Every Failure on the failures topic (all partitions, no group), in partition order."""
    return read_topic(cfg, "failures", Failure, timeout_s)


class TrainerService(Service):
    """`run(stop_event, max_idle_s)` in the foreground, or `start()` + `poll_once()` + `close()`;
    `close_now(target, iteration)` closes a round on command."""

    def __init__(self, cfg: Config, *, poll_timeout_ms: int = 500, publisher: Publisher | None = None):
        self.cfg = cfg
        self.targets: dict[str, TargetState] = {}
        self.results: list[IterationResult] = []
        self.selected: dict[tuple[str, int], int] = {}  # (target, iteration) -> failures newly selected
        self.loop = ConsumerLoop(cfg, [cfg.topic("failures")], group_id(cfg), self.handle, expect=Failure,
                                 stage="trainer", publisher=publisher, poll_timeout_ms=poll_timeout_ms)

    @property
    def bad_records(self) -> int:
        return self.loop.stats.bad_records

    # ------------------------------------------------------------------ lifecycle
    def publisher(self) -> Publisher:
        return self.loop.ensure_publisher()  # closed with the loop when the service made it

    def start(self) -> "TrainerService":
        if self.loop.consumer is not None:
            return self
        self.refresh_checkpoints()
        self.restore_used()
        self.loop.start()
        self.loop.join()
        return self

    def close(self) -> None:
        self.loop.close()

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
        for ev in read_checkpoints(self.cfg):
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
        t = self.cfg.threshold_for(st.iteration + 1)
        return select(st.current(), "pair-judge", budget=self.cfg.trainer.batch_size, threshold=t,
                      seed=self.cfg.trainer.seed)

    def close_round(self, target: str, iteration: int | None = None, force: bool = False) -> IterationResult | None:
        """Train the target's next iteration if its batch is full (or `force`); None when nothing ran."""
        st = self.state(target)
        n = st.iteration + 1
        if iteration is not None and iteration != n:
            raise InputError(f"{target}: the next iteration is {n} (iteration {st.iteration} is the last trained)")
        chosen = self.ready(st)
        if not chosen or (len(chosen) < self.cfg.trainer.batch_size and not force):
            return None
        if not st.path:
            raise ConfigError(f"{target}: no model path: add it to [[competitors]] (name = {target!r}, model = DIR)")
        log.info("%s: closing iteration %d with %d failures of %s (threshold %g)", target, n, len(chosen),
                 st.checkpoint, self.cfg.threshold_for(n))
        self.selected[(target, n)] = len(chosen)
        if self.cfg.trainer.accumulate:
            chosen = with_earlier(chosen, st.used)
        res = train_iteration(self.cfg, model_path=st.path, failures=chosen, iteration=n, target=target,
                              parent=st.checkpoint, publisher=self.publisher())
        if res.checkpoints:
            last = res.checkpoints[-1]
            st.checkpoint, st.path, st.iteration = last.checkpoint, last.path, n
            log.info("%s: iteration %d trained: %s", target, n, ", ".join(
                f"{k.checkpoint} (loss {k.metrics.get('train_loss')})" for k in res.checkpoints))
        self.results.append(res)
        return res

    def close_now(self, target: str | None = None, iteration: int | None = None) -> IterationResult:
        """Close the target's next round now with every failure on the topic that qualifies (`arena train
        --iteration N`, the demo). InputError when there is nothing to train on."""
        self.refresh_checkpoints()
        self.restore_used()
        for f in read_failure_events(self.cfg):
            self.add(f)
        targets = [target] if target else list(self.cfg.arena.targets) or sorted(self.targets)
        if len(targets) != 1:
            raise InputError(f"say which target: --target NAME (known: {', '.join(targets) or 'none: no failures '}"
                             f"{'on the topic yet' if not targets else ''})")
        res = self.close_round(targets[0], iteration=iteration, force=True)
        self.publisher().flush()
        if res is None:
            st = self.state(targets[0])
            raise InputError(f"{targets[0]}: no failures of {st.checkpoint} lost by >= "
                             f"{self.cfg.threshold_for(st.iteration + 1):g} yet; nothing to train")
        return res

    def handle(self, batch: Batch) -> None:
        """A batch of failures: remember each, then close every full round (the loop commits after)."""
        for item in batch.items:
            self.add(item.event)
        for target in list(self.targets):
            while self.close_round(target) is not None:
                pass

    def poll_once(self) -> int:
        """Read a batch of failures, close every full round; offsets committed after that. Returns records read."""
        self.start()
        return self.loop.poll_once()

    def run(self, stop_event: threading.Event | None = None, max_idle_s: float | None = None) -> list[IterationResult]:
        try:
            self.start()
            run_loops([self.loop], stop_event, max_idle_s)
            return self.results
        finally:
            self.close()


def _ledger_failures(cfg: Config, ids: set[str]) -> list[Failure]:
    """Failures with these ids from the SQL ledger; none when there is no ledger to read."""
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
