"""The trainer service: the paper's schedule as rounds, one stage each, checkpoints out (`arena train`).

An iteration is its stages (trainer.stages, in order sft -> dpo -> rl), and every stage is one round on its
own fresh slice of train instructions, battled by the newest checkpoint (Arena Learning's Table 5: "three
slices of data for SFT, DPO, and PPO training"). The newest checkpoint is what the target's generation pool
serves, so the train instructions it answers after a round are the next round's slice:

- sft: the failures of the current checkpoint (the failures topic, group `<prefix>trainer`) where the target
  lost by at least the iteration's threshold (`threshold_schedule`, the paper moves it 3 -> 2 -> 1), largest
  margins first; the round closes at `trainer.batch_size` of them.
- dpo: every battle model's answers to the slice's instructions (the current checkpoint's own included),
  read with their verdicts from the SQL ledger: chosen = the best-judged answer, rejected = the worst, pairs
  whose judged gap passes the threshold. The round closes once `trainer.slice_size` train instructions were
  battled and judged with the current checkpoint.
- rl: a reward model trained on the slice's judged battles (ties excluded), then RLOO or GRPO on the
  slice's prompts with a KL penalty (`trainer.rl_beta`) against the stage's starting checkpoint.

State is derived from the topics, so a restarted service picks up where it was: `checkpoints` (read whole)
gives each target's current checkpoint, its iteration and stage, hence the next round; only failures and
battles of the CURRENT checkpoint count, so a crash that redelivers them cannot train on them twice.
`close_now(target)` (what `arena train --iteration N` and `arena demo` call) closes the next round at once
with whatever its slice holds.

A round trains as a launched job (trainer/job.py: its datasets written, `accelerate launch`), while the
consumer is paused but keeps polling, so a round of any length keeps the group; a restarted service takes over
the round's running or finished job. `export_round` writes a round's batch from the ledger (`arena export`).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from arena_flywheel.config import Config
from arena_flywheel.consume import Batch, ConsumerLoop, Service, run_loops
from arena_flywheel.errors import ConfigError, InputError
from arena_flywheel.events import Battle, Checkpoint, DeadLetter, Failure, Verdict, competitor_name
from arena_flywheel.kafka import Publisher, read_checkpoints, read_topic
from arena_flywheel.store import LedgerStore, open_ledger

from .batches import KINDS, dpo_pairs, reward_rows, rl_prompts, sft_rows, texts_from_battles, write_dataset
from .job import JobFailed, JobRunner, job_dir, prepare, result_of, running, spec_of
from .select import select, with_earlier
from .train import StageResult, too_few, train_stage

log = logging.getLogger(__name__)


def group_id(cfg: Config) -> str:
    return f"{cfg.kafka.topic_prefix}trainer"


@dataclass
class TargetState:
    name: str
    checkpoint: str = "base"
    path: str | None = None
    iteration: int = 0  # iteration of the current checkpoint (0: the base model)
    stage: str | None = None  # its stage (None: the base model)
    failures: dict[str, Failure] = field(default_factory=dict)  # instruction id -> latest failure
    used: dict[str, Failure] = field(default_factory=dict)  # trainer.accumulate: earlier rounds' selections
    used_ids: list[str] = field(default_factory=list)  # the failure ids the current checkpoint trained on

    @property
    def competitor(self) -> str:
        return competitor_name(self.name, self.checkpoint)

    def current(self) -> list[Failure]:
        return [f for f in self.failures.values() if f.target_checkpoint == self.checkpoint]


@dataclass
class Round:
    """One closed round: a stage of an iteration, what it trained on and what it made."""
    target: str
    iteration: int
    stage: str
    result: StageResult
    selected: int = 0  # sft: failures newly selected (before trainer.accumulate adds earlier rounds')
    used: int = 0  # examples it trained on (sft: failures, dpo: pairs, rl: prompts)
    slice: int = 0  # instructions of the slice (dpo, rl)

    @property
    def checkpoint(self) -> Checkpoint | None:
        return self.result.checkpoint


def next_round(cfg: Config, st: TargetState) -> tuple[int, str]:
    """(iteration, stage) of the target's next round."""
    stages = list(cfg.trainer.stages)
    if st.stage in stages and st.stage != stages[-1]:
        return st.iteration, stages[stages.index(st.stage) + 1]
    return st.iteration + 1, stages[0]


def read_failure_events(cfg: Config, timeout_s: float = 10.0) -> list[Failure]:
    """Every Failure on the failures topic (all partitions, no group), in partition order."""
    return read_topic(cfg, "failures", Failure, timeout_s)


class TrainerService(Service):
    """`run(stop_event, max_idle_s)` in the foreground, or `start()` + `poll_once()` + `close()`;
    `close_now(target, iteration)` closes a round on command."""

    def __init__(self, cfg: Config, *, poll_timeout_ms: int = 500, publisher: Publisher | None = None):
        self.cfg = cfg
        self.targets: dict[str, TargetState] = {}
        self.rounds: list[Round] = []
        self._training = False
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
        for jobs in Path(self.cfg.trainer.output_dir).glob("*/jobs"):  # rounds a stopped service left running
            if self.wanted(jobs.parent.name):
                self.state(jobs.parent.name)
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
            if ev.iteration >= st.iteration:  # the topic is in order: the latest round is what the pool serves
                st.checkpoint, st.path, st.iteration = ev.checkpoint, ev.path, ev.iteration
                st.stage = ev.stage or None
                if ev.stage == "sft" or "failure_ids" in ev.metrics:
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
        """sft: the current checkpoint's failures that pass the next iteration's threshold, largest first."""
        t = self.cfg.threshold_for(next_round(self.cfg, st)[0])
        return select(st.current(), "pair-judge", budget=self.cfg.trainer.batch_size, threshold=t,
                      seed=self.cfg.trainer.seed)

    def slice_of(self, st: TargetState) -> tuple[list[Battle], list[Verdict]]:
        """The train battles the current checkpoint fought and their verdicts, from the SQL ledger."""
        try:
            store = LedgerStore(self.cfg.db.url, create=False)
        except (FileNotFoundError, ValueError):
            raise ConfigError(f"the dpo and rl stages read their slice's battles from the ledger, and "
                              f"{self.cfg.db.url} has none: run `arena ledger` (db.url / ARENA_DB_URL)") from None
        try:
            return slice_from(store, st.competitor)
        finally:
            store.close()

    def close_round(self, target: str, iteration: int | None = None, force: bool = False) -> Round | None:
        """Train the target's next round if its data is complete (or `force`); None when nothing ran."""
        st = self.state(target)
        n, stage = next_round(self.cfg, st)
        if iteration is not None and iteration != n:
            raise InputError(f"{target}: the next round is iteration {n} ({stage}); {st.checkpoint} is iteration "
                             f"{st.iteration}{' ' + st.stage if st.stage else ''}")
        taken = self.take_over(st, n, stage)
        if taken is not None:
            return taken
        threshold = self.cfg.threshold_for(n)
        provenance = {"target_checkpoint": st.checkpoint, "threshold": threshold}
        reward: list[dict] | None = None
        selected = size = 0
        counts: dict = {}
        if stage == "sft":
            chosen = self.ready(st)
            if not chosen or (len(chosen) < self.cfg.trainer.batch_size and not force):
                return None
            selected = len(chosen)
            if self.cfg.trainer.accumulate:
                chosen = with_earlier(chosen, st.used)
            rows = sft_rows(chosen, n)
            provenance["failure_ids"] = sorted(f.id for f in chosen)
        else:
            battles, verdicts = self.slice_of(st)
            size = len({b.instruction_id for b in battles})
            if not size or (size < self.cfg.trainer.slice_size and not force):
                return None
            if stage == "dpo":
                rows, counts = dpo_pairs(battles, verdicts, threshold, n)
                provenance["pairs"] = counts
            else:
                rows = rl_prompts(battles, n, verdicts)
                reward = reward_rows(verdicts, n, *texts_from_battles(battles))
        if not st.path:  # checked once there is something to train: a service may run before it is configured
            raise ConfigError(f"{target}: no model path: add it to [[competitors]] (name = {target!r}, model = DIR)")
        log.info("%s: closing iteration %d, %s, on %s (%s; threshold %g)", target, n, stage, st.checkpoint,
                 f"{selected} failures" if stage == "sft" else f"a slice of {size} instructions", threshold)
        res = self.train(stage=stage, model_path=st.path, iteration=n, target=target, parent=st.checkpoint,
                         rows=rows, reward_rows=reward, provenance=provenance)
        return self._closed(st, n, stage, res, selected=selected, used=len(rows) if res.checkpoint else 0, slice=size)

    def _closed(self, st: TargetState, n: int, stage: str, res: StageResult, **counts) -> Round:
        st.iteration, st.stage = n, stage
        if res.checkpoint is not None:
            st.checkpoint, st.path = res.checkpoint.checkpoint, res.checkpoint.path
            log.info("%s: iteration %d %s trained: %s (loss %s)", st.name, n, stage, res.checkpoint.checkpoint,
                     res.checkpoint.metrics.get("train_loss"))
        else:
            log.warning("%s: iteration %d %s skipped: %s", st.name, n, stage, res.skipped)
        rnd = Round(st.name, n, stage, res, **counts)
        self.rounds.append(rnd)
        return rnd

    def take_over(self, st: TargetState, n: int, stage: str) -> Round | None:
        """The round's job left by an earlier service (stopped or killed mid-round), running or finished, for
        the same parent checkpoint: wait for it / use its result instead of training the round again. Its
        data are the round's, whatever has arrived since. None when there is no such job."""
        d = job_dir(self.cfg, st.name, n, stage)
        spec = spec_of(d)
        if self.cfg.trainer.launcher == "inline" or not spec or spec.get("parent") != st.checkpoint:
            return None
        if result_of(d) is None and not running(d):
            return None  # failed, or died without a result: the round is trained anew
        res = self._job(st.name, n, stage, lambda runner: runner.existing(d))
        if res is None:
            return None
        return self._closed(st, n, stage, res, used=int(res.metrics.get("examples", 0)) if res.checkpoint else 0)

    def train(self, *, stage: str, model_path: str, iteration: int, target: str, parent: str, rows: list[dict],
              reward_rows: list[dict] | None, provenance: dict) -> StageResult:
        """Train a round: as a launched job (trainer.launcher accelerate|python) with the consumer paused, or
        inline; then publish its Checkpoint. A job that fails on every attempt is dead-lettered with its output
        tail and JobFailed raised: the batch that closed the round is not committed, and the service stops."""
        kw = dict(stage=stage, model_path=model_path, iteration=iteration, target=target, parent=parent, rows=rows,
                  reward_rows=reward_rows, provenance=provenance)
        if self.cfg.trainer.launcher == "inline" or too_few(stage, rows, reward_rows):
            return train_stage(self.cfg, publisher=self.publisher(), **kw)  # a skipped round trains nothing
        return self._job(target, iteration, stage, lambda runner: runner.run(prepare(self.cfg, **kw)))

    def _job(self, target: str, iteration: int, stage: str, work) -> StageResult | None:
        """`work(runner)` with the consumer paused (polls go on, so the group is kept; fetches stop until the
        round is trained), then the Checkpoint published."""
        self.loop.pause()
        self._training = True
        try:
            res = work(JobRunner(self.cfg, keepalive=self._keepalive))
        except JobFailed as exc:
            pub = self.publisher()
            pub.send(DeadLetter.of(f"trainer:{target}/it{iteration}-{stage}", str(exc), exc.tail, "trainer",
                                   self.cfg.limits))
            pub.flush()
            log.error("%s: %s\n%s", target, exc, exc.tail[-1500:])
            raise
        finally:
            self._training = False
            self.loop.resume()
        if res is not None and res.checkpoint is not None:
            pub = self.publisher()
            pub.send(res.checkpoint)
            pub.flush()
        return res

    def _keepalive(self) -> None:
        """While a job trains: poll the paused partitions (max_poll_interval_ms never passes, no rebalance)."""
        if self.loop.consumer is not None:
            self.loop.poll_once(100)

    def close_now(self, target: str | None = None, iteration: int | None = None) -> Round:
        """Close the target's next round now with what its data holds (`arena train --iteration N`, the demo).
        InputError when there is nothing to train on."""
        self.refresh_checkpoints()
        self.restore_used()
        for f in read_failure_events(self.cfg):
            self.add(f)
        targets = [target] if target else list(self.cfg.arena.targets) or sorted(self.targets)
        if len(targets) != 1:
            raise InputError(f"say which target: --target NAME (known: {', '.join(targets) or 'none: no failures '}"
                             f"{'on the topic yet' if not targets else ''})")
        rnd = self.close_round(targets[0], iteration=iteration, force=True)
        self.publisher().flush()
        if rnd is None:
            st = self.state(targets[0])
            n, stage = next_round(self.cfg, st)
            what = (f"no failures of {st.checkpoint} lost by >= {self.cfg.threshold_for(n):g}" if stage == "sft"
                    else f"no train battles of {st.competitor} in the ledger")
            raise InputError(f"{targets[0]}: {what} yet; nothing to train for iteration {n} ({stage})")
        return rnd

    def tick(self) -> bool:
        """Close every round whose data is complete (dpo and rl rounds wait on the ledger, not on failures).
        A round that cannot start yet (no ledger, no model path) is logged and waits; the service goes on."""
        if self._training:  # a keepalive poll during a job: the round in progress is closed already
            return False
        closed = False
        for target in list(self.targets):
            try:
                while self.close_round(target) is not None:
                    closed = True
            except ConfigError as exc:
                log.warning("trainer: %s", exc)
        return closed

    def handle(self, batch: Batch) -> None:
        """A batch of failures: remember each, then close every complete round (the loop commits after)."""
        for item in batch.items:
            self.add(item.event)
        self.tick()

    def poll_once(self) -> int:
        """Read a batch of failures, close every full round; offsets committed after that. Returns records read."""
        self.start()
        return self.loop.poll_once()

    def run(self, stop_event: threading.Event | None = None, max_idle_s: float | None = None) -> list[Round]:
        try:
            self.start()
            run_loops([self.loop], stop_event, max_idle_s, tick=self._tick_every(5.0))
            return self.rounds
        finally:
            self.close()


    def _tick_every(self, seconds: float):
        last = [0.0]

        def tick() -> bool:  # the ledger is read at most every `seconds`
            if time.monotonic() - last[0] < seconds:
                return False
            last[0] = time.monotonic()
            return self.tick()
        return tick


def slice_from(store: LedgerStore, competitor: str) -> tuple[list[Battle], list[Verdict]]:
    """The train battles `competitor` fought and their verdicts, from the SQL ledger."""
    verdicts = [v for side in ("competitor_a", "competitor_b")
                for v in store.events("verdict", split="train", **{side: competitor})]
    battles = store.events("battle", id=sorted({v.battle_id for v in verdicts})) if verdicts else []
    return battles, verdicts


def export_round(cfg: Config, url: str, kind: str, iteration: int, out: str, target: str | None = None) -> dict:
    """Write one round's batch (`kind`: sft, dpo, reward or rl) from the SQL ledger as a dataset under `out`
    (`batches.write_dataset`). A trained round (its Checkpoint is in the ledger) gives the data it trained on:
    sft its `failure_ids`; dpo, reward and rl the slice battled by its parent checkpoint (what the ledger holds
    of it now). The target's next round, not trained yet, gives what the service would train it on.
    Returns the provenance written (with `rows`)."""
    if kind not in KINDS:
        raise InputError(f"--what {kind}: the batch kinds are {', '.join(KINDS)}")
    stage = "rl" if kind == "reward" else kind
    store = open_ledger(url)
    try:
        cks = [c for c in store.events("checkpoint") if not target or c.model == target]
        targets = sorted({c.model for c in cks} | ({target} if target else set())
                         | {f.target for f in ([] if target or cks else store.failures())})
        if len(targets) != 1:
            raise InputError(f"say which target: --target NAME (known: {', '.join(targets) or 'none in ' + url})")
        target = targets[0]
        cks = [c for c in cks if c.model == target]
        done = next((c for c in cks if c.iteration == iteration and c.stage == stage), None)
        st = TargetState(target)
        for c in cks:  # the ledger keeps them in order: the latest round is the current checkpoint
            if c.iteration >= st.iteration and c is not done:
                st.checkpoint, st.iteration, st.stage = c.checkpoint, c.iteration, c.stage or None
        if done is not None:
            parent = done.parent or "base"
            threshold = float(done.metrics.get("threshold", cfg.threshold_for(iteration)))
        elif next_round(cfg, st) == (iteration, stage):
            parent, threshold = st.checkpoint, cfg.threshold_for(iteration)
        else:
            n, nxt = next_round(cfg, st)
            raise InputError(f"{target}: iteration {iteration} {stage} is neither in the ledger's checkpoints nor the "
                             f"next round (iteration {n} {nxt}, after {st.checkpoint})")
        if stage == "sft":
            if done is not None:
                ids = list(done.metrics.get("failure_ids") or [])
                by_id = {f.id: f for f in store.events("failure", id=ids)} if ids else {}
                failures = [by_id[i] for i in ids if i in by_id]  # in the checkpoint's order
            else:
                failures = select(store.failures(target=target, checkpoint=parent), "pair-judge",
                                  budget=cfg.trainer.batch_size, threshold=threshold, seed=cfg.trainer.seed)
            rows = sft_rows(failures, iteration)
        else:
            battles, verdicts = slice_from(store, competitor_name(target, parent))
            if kind == "dpo":
                rows = dpo_pairs(battles, verdicts, threshold, iteration)[0]
            elif kind == "reward":
                rows = reward_rows(verdicts, iteration, *texts_from_battles(battles))
            else:
                rows = rl_prompts(battles, iteration, verdicts)
    finally:
        store.close()
    meta = {"target": target, "iteration": iteration, "stage": stage, "parent": parent, "threshold": threshold,
            "trained": done.checkpoint if done else None}  # not the ledger's URL: it may hold a password
    write_dataset(rows, out, kind, meta)
    return {**meta, "rows": len(rows)}


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
