"""Competitor generation pools: instructions in, Response events out, checkpoints hot-plugged.

One `GenerationPool` serves one competitor (a model name from `[[competitors]]`). It reads

- `instructions.train` under the consumer group `{p}-gen-{model}-train`: the model's train group. It
  survives hot-plugs, so the train split continues where it was; instructions read after a hot-plug
  (including any backlog not yet read) are answered by the new checkpoint.
- `instructions.eval` under `{p}-gen-{model}-{checkpoint}` (default prefix: `arena-gen-{model}-base`): a
  new group per checkpoint that starts from the earliest offset, so every checkpoint answers the whole
  eval split and gets its own rating.
- `checkpoints` (one partition, no group: every replica reads all of it). At start the latest Checkpoint
  for this model is loaded, so a restarted worker serves what it served before; later ones are loaded
  between batches with `backend.load(path)`, no restart. When several arrive together the latest wins.

`{p}` is the topic prefix without its trailing dot ("arena"). Replicas of the same competitor join the
same groups and share partitions (replicas beyond the partition count stay idle).

Delivery: at-least-once. A batch's Response and DeadLetter events are flushed (the broker has acked
them) before the offsets are committed; ids are deterministic (instruction, model, checkpoint, sample),
so a redelivered batch produces the same events and downstream consumers dedupe on id.

Failures: an undecodable record is dead-lettered with the decoder's reason. A backend exception on a
batch splits it into single requests; each request that fails is retried up to `max_retries` times
with exponential backoff, then dead-lettered with the reason and the instruction. BackendError (no GPU,
missing package, bad path) is not retryable and stops the worker: nothing is committed, nothing lost.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from arena_flywheel.config import CompetitorConfig, Config
from arena_flywheel.events import BadEvent, Checkpoint, Instruction, Response, chat, decode
from arena_flywheel.consume import Batch, ConsumerLoop, Item, Service, close_consumer, join_all, run_loops
from arena_flywheel.kafka import Publisher, make_consumer
from consumers.backends import Backend, BackendError, Completion, GenerationRequest, create_backend

log = logging.getLogger(__name__)

RESERVED_CHECKPOINTS = ("train", "base")
LOCAL_WEIGHTS = ("transformers", "vllm")  # backends whose load(path) reads this machine's files (openai: a served
# model name, replay: an answers file)


def checkpoint_roots(cfg: Config) -> list[str]:
    """Where pools may load checkpoints from: trainer.checkpoint_roots, or the trainer's own output_dir when
    none is configured (safe by default: a Checkpoint event cannot point a pool at an arbitrary path)."""
    return list(cfg.trainer.checkpoint_roots) or [cfg.trainer.output_dir]


def checkpoint_problem(cfg: Config, ev: Checkpoint) -> str | None:
    """Why a pool must not load this checkpoint (None: it may): a uri that names another place than its path,
    a path that resolves (symbolic links and `..` followed) outside trainer.checkpoint_roots, or a path that
    does not exist. Checked before anything loads: a hostile or mistyped event must not pick what a pool reads."""
    path = os.path.realpath(ev.path)
    if ev.uri is not None:
        parsed = urlparse(ev.uri)
        if parsed.scheme != "file":
            return f"uri {ev.uri!r}: pools load checkpoints from a filesystem they can read (file://)"
        if os.path.realpath(url2pathname(parsed.path)) != path:
            return f"uri {ev.uri!r} and path {ev.path!r} name different places"
    roots = [os.path.realpath(r) for r in checkpoint_roots(cfg)]
    if not any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots):
        return f"path {ev.path!r} is outside trainer.checkpoint_roots ({', '.join(roots)})"
    if not os.path.exists(path):
        return f"path {ev.path!r} does not exist (is the checkpoint storage mounted here?)"
    return None


def group_prefix(cfg: Config) -> str:
    return f"{cfg.kafka.topic_prefix.rstrip('.') or 'arena'}-gen-"


def train_group(cfg: Config, model: str) -> str:
    return f"{group_prefix(cfg)}{model}-train"


def eval_group(cfg: Config, model: str, checkpoint: str = "base") -> str:
    return f"{group_prefix(cfg)}{model}-{checkpoint}"


def conversation(inst: Instruction, answers: list[str], turn: int) -> list[dict[str, str]]:
    """The chat the model sees for user turn `turn` (0-based): system messages, the user turns so far,
    and the model's OWN previous answers in place of any assistant messages the instruction carries."""
    return chat(inst.messages, answers[:turn], turns=turn + 1)


@dataclass
class PoolStats:
    instructions: int = 0      # answered (a Response published)
    turns: int = 0             # generate calls' answers, one per user turn
    output_tokens: int = 0
    gen_seconds: float = 0.0   # wall time inside backend.generate
    batches: int = 0
    retries: int = 0           # per-request retries by the pool
    batch_splits: int = 0      # batches split into single requests after an exception
    errors: int = 0            # requests that failed after retries (each dead-lettered)
    bad_records: int = 0       # undecodable records (dead-lettered)
    dead_letters: int = 0
    duplicates: int = 0        # the same instruction twice in one batch (answered once)
    hot_plugs: int = 0
    commit_failures: int = 0


class GenerationPool(Service):
    """Answer instructions for one competitor. `run(stop_event, max_idle_s)` or `start()` + `run_once()`."""

    def __init__(self, cfg: Config, competitor: CompetitorConfig, backend: Backend | None = None, *,
                 log_every_s: float = 30.0, retry_backoff_s: float = 0.5, poll_timeout_ms: int = 200):
        self.cfg = cfg
        self.comp = competitor
        self.name = competitor.name
        self.backend = backend
        self.backend_name = getattr(backend, "name", competitor.backend)
        self._own_backend = backend is None
        self.log_every_s = log_every_s
        self.retry_backoff_s = retry_backoff_s
        self.poll_timeout_ms = poll_timeout_ms
        self.checkpoint = "base"
        self.checkpoint_path: str | None = None
        self.counters = PoolStats()
        self.lag: dict[str, int] = {}
        self.partitions: dict[str, list[int]] = {}  # split -> partitions this replica owns
        self._pub: Publisher | None = None
        self._loops: dict[str, ConsumerLoop] = {}  # split -> its consumer loop
        self._ckpt = None
        self._ckpt_tp = None
        self._started = False
        self._t0 = time.monotonic()
        self._last_log = time.monotonic()
        self._stats_lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "GenerationPool":
        if self._started:
            return self
        if self.backend is None:
            self.backend = create_backend(self.comp)
            self.backend_name = getattr(self.backend, "name", self.comp.backend)
        self._pub = Publisher(self.cfg)
        self._open_checkpoints()
        self._catch_up_checkpoints()
        self._loops = {}
        if "eval" in self.comp.splits:
            self._loops["eval"] = self._loop("instructions.eval", eval_group(self.cfg, self.name, self.checkpoint))
        if "train" in self.comp.splits:
            self._loops["train"] = self._loop("instructions.train", train_group(self.cfg, self.name))
        self._started = True
        self._t0 = self._last_log = time.monotonic()
        log.info("generation pool %s started: checkpoint %s, splits %s, backend %s", self.name, self.checkpoint,
                 ",".join(self.comp.splits), getattr(self.backend, "name", "?"))
        return self

    def _loop(self, topic: str, group: str) -> ConsumerLoop:
        return ConsumerLoop(self.cfg, [self.cfg.topic(topic)], group, self._process, expect=Instruction,
                            stage=f"generate:{self.name}", publisher=self._pub, max_records=self.comp.batch_size,
                            poll_timeout_ms=self.poll_timeout_ms)

    def close(self) -> None:
        for lp in self._loops.values():
            lp.close()
        close_consumer(self._ckpt)
        self._ckpt = None
        if self._pub is not None:
            self._pub.close()
            self._pub = None
        if self._own_backend and self.backend is not None:
            self.backend.close()
            self.backend = None
        self._started = False

    # ------------------------------------------------------------------ checkpoints
    def _open_checkpoints(self) -> None:
        from kafka import TopicPartition

        self._ckpt = make_consumer(self.cfg, None, None)
        self._ckpt_tp = TopicPartition(self.cfg.topic("checkpoints"), 0)
        self._ckpt.assign([self._ckpt_tp])
        self._ckpt.seek_to_beginning(self._ckpt_tp)

    def _read_checkpoints(self, timeout_ms: int) -> list[Checkpoint]:
        found = []
        batches = self._ckpt.poll(timeout_ms=timeout_ms)
        for tp, records in batches.items():
            for rec in records:
                try:
                    ev = decode(rec.value, Checkpoint, self.cfg.limits)
                except BadEvent as exc:
                    log.warning("bad record on %s[%d]@%d: %s", tp.topic, tp.partition, rec.offset, exc.reason)
                    continue
                if ev.model == self.name:
                    found.append(ev)
        return found

    def _catch_up_checkpoints(self) -> None:
        """At start, serve the latest checkpoint of this model that loads (a broken latest one is
        dead-lettered and the one before it is tried), so a restarted worker serves what it served."""
        end = self._ckpt.end_offsets([self._ckpt_tp])[self._ckpt_tp]
        found: list[Checkpoint] = []
        deadline = time.monotonic() + 30
        while self._ckpt.position(self._ckpt_tp) < end and time.monotonic() < deadline:
            found += self._read_checkpoints(200)
        seen = set()
        for ev in reversed(found):
            if ev.checkpoint in seen:
                continue
            seen.add(ev.checkpoint)
            if self._hot_plug(ev, startup=True):
                return

    def _poll_checkpoints(self) -> bool:
        found = self._read_checkpoints(0)
        if found:
            self._hot_plug(found[-1])
        return bool(found)

    def _hot_plug(self, ev: Checkpoint, startup: bool = False) -> bool:
        if ev.checkpoint == self.checkpoint and ev.path == self.checkpoint_path:
            return True
        source = f"{self.cfg.topic('checkpoints')}[0]:{ev.id}"
        if ev.checkpoint in RESERVED_CHECKPOINTS or not ev.checkpoint:
            self._dead_letter(source, f"checkpoint name {ev.checkpoint!r} is reserved; name it e.g. 'iter1'",
                              ev.encode(), flush=True)
            return False
        problem = checkpoint_problem(self.cfg, ev) if self.comp.backend in LOCAL_WEIGHTS else None
        if problem:
            reason = f"cannot hot-plug checkpoint {ev.checkpoint!r} of {self.name}, refused: {problem}"
            log.error("%s; still serving %s", reason, self.checkpoint)
            self._dead_letter(source, reason, ev.encode(), flush=True)
            return False
        t = time.monotonic()
        try:
            self.backend.load(ev.path)
        except Exception as exc:  # noqa: BLE001 - a bad checkpoint must not stop the pool
            reason = f"cannot hot-plug checkpoint {ev.checkpoint!r} of {self.name} from {ev.path!r}: " \
                     f"{type(exc).__name__}: {exc}"
            log.error("%s; still serving %s", reason, self.checkpoint)
            self._dead_letter(source, reason, ev.encode(), flush=True)
            return False
        old = self.checkpoint
        self.checkpoint, self.checkpoint_path = ev.checkpoint, ev.path
        self.counters.hot_plugs += 1
        if "eval" in self._loops:
            self._loops["eval"].regroup(eval_group(self.cfg, self.name, self.checkpoint))
        log.info("%s: %s checkpoint %s -> %s (%s) in %.1fs; eval split answered again under group %s",
                 self.name, "resumed" if startup else "hot-plugged", old, ev.checkpoint, ev.path,
                 time.monotonic() - t, eval_group(self.cfg, self.name, self.checkpoint))
        return True

    # ------------------------------------------------------------------ the loop
    def run_once(self) -> int:
        """Poll once (checkpoints, then an eval batch, then a train batch); returns records handled."""
        self.start()
        self._poll_checkpoints()
        loops = list(self._loops.values())
        join_all(loops)
        share = max(1, self.poll_timeout_ms // max(1, len(loops)))
        handled = sum(lp.poll_once(share) for lp in loops)
        self._after_poll()
        return handled

    def _after_poll(self) -> None:
        for name, lp in self._loops.items():
            self._update_lag(name, lp.consumer)
        self._maybe_log()

    def run(self, stop_event: threading.Event | None = None, max_idle_s: float | None = None) -> PoolStats:
        """Serve until `stop_event` is set, or (with max_idle_s) until nothing arrived for that long after
        the groups were joined. Closes the pool at the end and returns the counters."""
        try:
            self.start()
            run_loops(list(self._loops.values()), stop_event, max_idle_s,
                      tick=lambda: (self._after_poll(), self._poll_checkpoints())[1])
            return self.counters
        finally:
            self._log_line()
            self.close()

    # ------------------------------------------------------------------ one batch
    def _process(self, batch: Batch) -> None:
        stage = f"generate:{self.name}@{self.checkpoint}"
        insts: dict[str, Item] = {}
        self.counters.bad_records += len(batch.dead)
        self.counters.dead_letters += len(batch.dead)
        for item in batch.items:
            if item.event.id in insts:
                self.counters.duplicates += 1
                continue
            insts[item.event.id] = item
        if insts:
            results = self._answer([item.event for item in insts.values()])
            for iid, item in insts.items():
                res = results[iid]
                if isinstance(res, Response):
                    self._pub.send(res)
                    self.counters.instructions += 1
                else:
                    self.counters.errors += 1
                    log.warning("%s: instruction %s dead-lettered: %s", self.name, iid, res)
                    self._dead_letter(item.source, res, item.record.value, stage=stage)
        self.counters.batches += 1

    @property
    def _commit_failures(self) -> int:
        return sum(lp.stats.commit_failures for lp in self._loops.values())

    def _answer(self, insts: list[Instruction]) -> dict[str, Response | str]:
        """Answer every user turn of every instruction; returns id -> Response, or id -> failure reason."""
        c = self.comp
        answers: dict[str, list[str]] = {i.id: [] for i in insts}
        tokens = {i.id: 0 for i in insts}
        latency = {i.id: 0.0 for i in insts}
        finish: dict[str, str | None] = {i.id: None for i in insts}
        failed: dict[str, str] = {}
        n_turns = {i.id: len(i.user_turns) for i in insts}
        for turn in range(max(n_turns.values())):
            active = [i for i in insts if turn < n_turns[i.id] and i.id not in failed]
            if not active:
                break
            reqs = [GenerationRequest(messages=conversation(i, answers[i.id], turn), max_new_tokens=c.max_new_tokens,
                                      temperature=c.temperature, top_p=c.top_p, request_id=i.id,
                                      metadata={"instruction_id": i.id, "source": i.source, "source_id": i.source_id,
                                                "split": i.split, "turn": turn, "model": self.name,
                                                "checkpoint": self.checkpoint})
                    for i in active]
            t = time.monotonic()
            comps = self._call(reqs)
            dt = time.monotonic() - t
            self.counters.gen_seconds += dt
            for inst, comp in zip(active, comps):
                if comp.error:
                    failed[inst.id] = f"turn {turn + 1}: {comp.error}"
                    continue
                answers[inst.id].append(comp.text)
                tokens[inst.id] += comp.output_tokens
                latency[inst.id] += dt * 1000
                finish[inst.id] = comp.finish_reason
                self.counters.turns += 1
                self.counters.output_tokens += comp.output_tokens
        sampling = {"temperature": c.temperature, "top_p": c.top_p, "max_new_tokens": c.max_new_tokens}
        out: dict[str, Response | str] = {}
        for i in insts:
            if i.id in failed:
                out[i.id] = failed[i.id]
                continue
            out[i.id] = Response(instruction_id=i.id, split=i.split, model=self.name, checkpoint=self.checkpoint,
                                 sample=0, answers=answers[i.id], backend=self.backend_name,
                                 sampling=sampling, output_tokens=tokens[i.id], latency_ms=round(latency[i.id], 3),
                                 finish_reason=finish[i.id])
        return out

    def _call(self, reqs: list[GenerationRequest], attempt: int = 0) -> list[Completion]:
        """backend.generate with the pool's failure policy (see the module docstring)."""
        try:
            comps = list(self.backend.generate(reqs))
            if len(comps) != len(reqs):
                raise RuntimeError(f"backend returned {len(comps)} completions for {len(reqs)} requests")
        except BackendError:
            raise
        except Exception as exc:  # noqa: BLE001 - OOM, HTTP, timeouts, anything a backend throws
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
            if len(reqs) > 1:
                self.counters.batch_splits += 1
                log.warning("%s: batch of %d failed (%s); retrying one by one", self.name, len(reqs), reason)
                return [c for r in reqs for c in self._call([r], attempt)]
            comps = [Completion(text="", error=reason, retryable=True)]
        retry = [k for k, comp in enumerate(comps) if comp.error and comp.retryable]
        if retry and attempt < self.comp.max_retries:
            self.counters.retries += len(retry)
            time.sleep(self.retry_backoff_s * (2 ** attempt))
            again = self._call([reqs[k] for k in retry], attempt + 1)
            for k, comp in zip(retry, again):
                comps[k] = comp
        elif retry:
            for k in retry:
                comps[k] = Completion(text="", error=f"{comps[k].error} (after {attempt + 1} attempts)",
                                      retryable=False)
        return comps

    def _dead_letter(self, source: str, reason: str, raw, stage: str = "", flush: bool = False) -> None:
        self.counters.dead_letters += 1
        self._pub.dead_letter(source, reason, raw, stage=stage or f"generate:{self.name}")
        if flush:
            self._pub.flush()

    # ------------------------------------------------------------------ observability
    def _update_lag(self, name: str, consumer) -> None:
        if consumer is None:
            return
        total = 0
        assigned = consumer.assignment()
        with self._stats_lock:
            self.partitions[name] = sorted(tp.partition for tp in assigned)
        for tp in assigned:
            hw = consumer.highwater(tp)
            if hw is None:
                continue
            try:
                total += max(0, hw - consumer.position(tp, timeout_ms=0))
            except Exception:  # noqa: BLE001 - position not known yet
                continue
        with self._stats_lock:
            self.lag[name] = total

    def stats(self) -> dict[str, Any]:
        """Counters, throughput and lag (as of the last poll). Safe to call from another thread."""
        with self._stats_lock:
            self.counters.commit_failures = self._commit_failures
            c = asdict(self.counters)
            lag = dict(self.lag)
            parts = {k: list(v) for k, v in self.partitions.items()}
        c.update(partitions=parts, model=self.name, checkpoint=self.checkpoint, backend=self.backend_name,
                 tokens_per_s=round(c["output_tokens"] / c["gen_seconds"], 2) if c["gen_seconds"] else 0.0,
                 uptime_s=round(time.monotonic() - self._t0, 1), lag=lag,
                 groups={"train": train_group(self.cfg, self.name) if "train" in self.comp.splits else None,
                         "eval": eval_group(self.cfg, self.name, self.checkpoint)
                         if "eval" in self.comp.splits else None})
        return c

    def _log_line(self) -> None:
        s = self.stats()
        log.info("gen %s@%s: %d answered, %d tokens, %.1f tok/s, lag %s, errors %d, dead-letters %d, hot-plugs %d",
                 s["model"], s["checkpoint"], s["instructions"], s["output_tokens"], s["tokens_per_s"],
                 " ".join(f"{k}={v}" for k, v in s["lag"].items()) or "-", s["errors"], s["dead_letters"],
                 s["hot_plugs"])

    def _maybe_log(self) -> None:
        if self.log_every_s and time.monotonic() - self._last_log >= self.log_every_s:
            self._last_log = time.monotonic()
            self._log_line()
