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

import json
import logging
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from arena_flywheel.config import CompetitorConfig, Config
from arena_flywheel.events import BadEvent, Checkpoint, Instruction, Response, decode
from arena_flywheel.kafka import Publisher, make_consumer
from consumers.backends import Backend, BackendError, Completion, GenerationRequest, create_backend

log = logging.getLogger(__name__)

RESERVED_CHECKPOINTS = ("train", "base")


def group_prefix(cfg: Config) -> str:
    return f"{cfg.kafka.topic_prefix.rstrip('.') or 'arena'}-gen-"


def train_group(cfg: Config, model: str) -> str:
    return f"{group_prefix(cfg)}{model}-train"


def eval_group(cfg: Config, model: str, checkpoint: str = "base") -> str:
    return f"{group_prefix(cfg)}{model}-{checkpoint}"


def conversation(inst: Instruction, answers: list[str], turn: int) -> list[dict[str, str]]:
    """The chat the model sees for user turn `turn` (0-based): system messages, the user turns so far,
    and the model's OWN previous answers in place of any assistant messages the instruction carries."""
    msgs: list[dict[str, str]] = []
    k = -1
    for m in inst.messages:
        if m.role == "system":
            msgs.append({"role": "system", "content": m.content})
        elif m.role == "user":
            k += 1
            if k > turn:
                break
            if k > 0:
                msgs.append({"role": "assistant", "content": answers[k - 1]})
            msgs.append({"role": "user", "content": m.content})
    return msgs


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


class GenerationPool:
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
        self._train = None
        self._eval = None
        self._ckpt = None
        self._ckpt_tp = None
        self._started = False
        self._t0 = time.monotonic()
        self._last_log = time.monotonic()
        self._joined_at: float | None = None
        self._waiting_since = time.monotonic()
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
        if "train" in self.comp.splits:
            self._train = make_consumer(self.cfg, [self.cfg.topic("instructions.train")],
                                        train_group(self.cfg, self.name))
        self._open_eval()
        self._started = True
        self._t0 = self._last_log = time.monotonic()
        log.info("generation pool %s started: checkpoint %s, splits %s, backend %s", self.name, self.checkpoint,
                 ",".join(self.comp.splits), getattr(self.backend, "name", "?"))
        return self

    def close(self) -> None:
        for c in (self._train, self._eval, self._ckpt):
            if c is not None:
                try:
                    c.close(autocommit=False)
                except Exception:  # noqa: BLE001 - closing anyway
                    log.debug("consumer close failed", exc_info=True)
        self._train = self._eval = self._ckpt = None
        if self._pub is not None:
            self._pub.close()
            self._pub = None
        if self._own_backend and self.backend is not None:
            self.backend.close()
            self.backend = None
        self._started = False

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def _open_eval(self) -> None:
        if "eval" not in self.comp.splits:
            return
        self._eval = make_consumer(self.cfg, [self.cfg.topic("instructions.eval")],
                                   eval_group(self.cfg, self.name, self.checkpoint), auto_offset_reset="earliest")
        self._joined_at = None
        self._waiting_since = time.monotonic()

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
                    ev = decode(rec.value, Checkpoint)
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

    def _poll_checkpoints(self) -> None:
        found = self._read_checkpoints(0)
        if found:
            self._hot_plug(found[-1])

    def _hot_plug(self, ev: Checkpoint, startup: bool = False) -> bool:
        if ev.checkpoint == self.checkpoint and ev.path == self.checkpoint_path:
            return True
        source = f"{self.cfg.topic('checkpoints')}[0]:{ev.id}"
        if ev.checkpoint in RESERVED_CHECKPOINTS or not ev.checkpoint:
            self._dead_letter(source, f"checkpoint name {ev.checkpoint!r} is reserved; name it e.g. 'iter1'",
                              ev.encode(), flush=True)
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
        if self._started and self._eval is not None:
            self._eval.close(autocommit=False)  # its batches are committed already
            self._eval = None
        if self._started:
            self._open_eval()
        log.info("%s: %s checkpoint %s -> %s (%s) in %.1fs; eval split answered again under group %s",
                 self.name, "resumed" if startup else "hot-plugged", old, ev.checkpoint, ev.path,
                 time.monotonic() - t, eval_group(self.cfg, self.name, self.checkpoint))
        return True

    # ------------------------------------------------------------------ the loop
    def run_once(self) -> int:
        """Poll once (checkpoints, then an eval batch, then a train batch); returns records handled."""
        self.start()
        self._poll_checkpoints()
        handled = 0
        consumers = [c for c in (self._eval, self._train) if c is not None]
        short = max(1, self.poll_timeout_ms // max(1, len(consumers)))
        joined = self._ensure_joined([c for c in consumers if not c.assignment()])
        for consumer in consumers:
            timeout = short if consumer.assignment() or consumer in joined else self._join_timeout_ms()
            batches = consumer.poll(timeout_ms=timeout, max_records=self.comp.batch_size)
            records = [r for recs in batches.values() for r in recs]
            if records:
                handled += self._process(consumer, records)
            self._update_lag(consumer)
        if self._joined_at is None and all(c.assignment() for c in consumers):
            self._joined_at = time.monotonic()
        self._maybe_log()
        return handled

    def _join_timeout_ms(self) -> int:
        return self.cfg.kafka.session_timeout_ms + 5000

    def _ensure_joined(self, consumers: list) -> set:
        """Finish group joins (in parallel) before polling; returns the consumers that were handled.

        kafka-python (3.0) drops a JoinGroup/SyncGroup result that completes between two polls and
        joins again, and Tansu holds a JoinGroup reply for about half the session timeout, so short
        polls on a joining consumer can rejoin forever. Joining with the coordinator's own
        ensure_active_group (long timeout) avoids that without a long, possibly idle, poll. Without
        that method (another client version) the caller falls back to one long poll.
        """
        usable = [c for c in consumers
                  if callable(getattr(getattr(c, "_coordinator", None), "ensure_active_group", None))]

        def join(c):
            try:
                c._coordinator.ensure_active_group(timeout_ms=self._join_timeout_ms())
            except Exception as exc:  # noqa: BLE001 - the next poll reports real errors
                log.debug("%s: group join did not finish: %s", self.name, exc)

        if len(usable) == 1:
            join(usable[0])
        elif usable:
            threads = [threading.Thread(target=join, args=(c,), daemon=True) for c in usable]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        return set(usable)

    def run(self, stop_event: threading.Event | None = None, max_idle_s: float | None = None) -> PoolStats:
        """Serve until `stop_event` is set, or (with max_idle_s) until nothing arrived for that long after
        the groups were joined. Closes the pool at the end and returns the counters."""
        stop_event = stop_event or threading.Event()
        grace = 3 * self.cfg.kafka.session_timeout_ms / 1000
        try:
            self.start()
            last = time.monotonic()
            while not stop_event.is_set():
                if self.run_once():
                    last = time.monotonic()
                elif max_idle_s is not None:
                    now = time.monotonic()
                    ready = self._joined_at or (self._waiting_since + grace if now > self._waiting_since + grace
                                                else None)
                    if ready is not None and now - max(last, ready) >= max_idle_s:
                        break
            return self.counters
        finally:
            self._log_line()
            self.close()

    # ------------------------------------------------------------------ one batch
    def _process(self, consumer, records) -> int:
        stage = f"generate:{self.name}@{self.checkpoint}"
        insts: dict[str, tuple[Instruction, Any]] = {}
        for rec in records:
            source = f"{rec.topic}[{rec.partition}]@{rec.offset}"
            try:
                inst = decode(rec.value, Instruction)
            except BadEvent as exc:
                self.counters.bad_records += 1
                self._dead_letter(source, exc.reason, rec.value, stage=stage)
                continue
            if inst.id in insts:
                self.counters.duplicates += 1
                continue
            insts[inst.id] = (inst, rec)
        if insts:
            results = self._answer([i for i, _ in insts.values()])
            for iid, (inst, rec) in insts.items():
                res = results[iid]
                if isinstance(res, Response):
                    self._pub.send(res)
                    self.counters.instructions += 1
                else:
                    self.counters.errors += 1
                    log.warning("%s: instruction %s dead-lettered: %s", self.name, iid, res)
                    self._dead_letter(f"{rec.topic}[{rec.partition}]@{rec.offset}", res, rec.value, stage=stage)
        self.counters.batches += 1
        self._commit(consumer, records)
        return len(records)

    def _commit(self, consumer, records) -> None:
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        try:
            self._pub.flush()
        except Exception as exc:  # noqa: BLE001 - not acked: read the batch again
            log.error("%s: publishing failed (%s); the batch will be answered again", self.name, exc)
            firsts: dict = {}
            for r in records:
                tp = TopicPartition(r.topic, r.partition)
                firsts[tp] = min(firsts.get(tp, r.offset), r.offset)
            for tp, off in firsts.items():
                consumer.seek(tp, off)
            return
        offsets: dict = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            if r.offset + 1 > offsets.get(tp, -1):
                offsets[tp] = r.offset + 1
        try:
            consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()})
        except Exception as exc:  # noqa: BLE001 - e.g. a rebalance: the new owner answers again (same ids)
            self.counters.commit_failures += 1
            log.warning("%s: commit failed (%s); records will be redelivered", self.name, exc)

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
    def _update_lag(self, consumer) -> None:
        name = "eval" if consumer is self._eval else "train"
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


# ---------------------------------------------------------------------- CLI: arena generate
def _need_broker(cfg: Config, what: str) -> None:
    from arena_flywheel.cli import UsageError

    if not cfg.kafka.bootstrap_servers:
        raise UsageError(f"{what} needs a running broker: export KAFKA_BOOTSTRAP_SERVERS=host:port "
                         f"(the address `arena broker` prints), or set kafka.bootstrap_servers in arena.toml")


def add_arguments(p) -> None:
    p.add_argument("--model", metavar="NAME", help="competitor name from [[competitors]] in arena.toml")
    p.add_argument("--name", metavar="NAME", help="ad-hoc competitor name (with --backend and --model-path)")
    p.add_argument("--backend", choices=["transformers", "vllm", "openai", "replay"], help="ad-hoc backend")
    p.add_argument("--model-path", metavar="PATH", help="ad-hoc model: directory/hub id, served model name, or "
                   "answers file (replay)")
    p.add_argument("--base-url", help="OpenAI-compatible server, e.g. http://localhost:8000/v1")
    p.add_argument("--splits", help="comma list of splits to answer: train,eval")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1")
    p.add_argument("--dtype", help="auto, float32, bfloat16, float16")
    p.add_argument("--max-idle", type=float, metavar="S", help="exit after S seconds with nothing to do "
                   "(default: run until Ctrl-C / SIGTERM)")
    p.add_argument("--stats-every", type=float, default=30.0, metavar="S", help="log a stats line every S seconds")


def competitor_from_args(args, cfg: Config) -> CompetitorConfig:
    from arena_flywheel.cli import UsageError
    from pydantic import ValidationError

    if args.model:
        found = [c for c in cfg.competitors if c.name == args.model]
        if not found:
            known = ", ".join(c.name for c in cfg.competitors) or "none configured"
            raise UsageError(f"no competitor named {args.model!r} in [[competitors]] (known: {known}); "
                             f"or run an ad-hoc one: --name X --backend transformers --model-path DIR")
        data = found[0].model_dump()
    elif args.name:
        if not args.backend or not args.model_path:
            raise UsageError("an ad-hoc competitor needs --name, --backend and --model-path "
                             "(e.g. --name tiny --backend transformers --model-path ./ckpt)")
        data = {"name": args.name, "backend": args.backend, "model": args.model_path}
    else:
        raise UsageError("say which competitor: --model NAME (from arena.toml) or "
                         "--name X --backend transformers --model-path DIR")
    if args.model and args.backend:
        data["backend"] = args.backend
    if args.model and args.model_path:
        data["model"] = args.model_path
    for key, val in (("base_url", args.base_url), ("batch_size", args.batch_size),
                     ("max_new_tokens", args.max_new_tokens), ("temperature", args.temperature),
                     ("device", args.device), ("dtype", args.dtype)):
        if val is not None:
            data[key] = val
    if args.splits:
        data["splits"] = [s.strip() for s in args.splits.split(",") if s.strip()]
    try:
        return CompetitorConfig.model_validate(data)
    except ValidationError as exc:
        e = exc.errors()[0]
        raise UsageError(f"competitor {data.get('name')!r}: {'.'.join(map(str, e['loc']))}: {e['msg']}") from None


def run(args, cfg: Config) -> int:
    from arena_flywheel.cli import UsageError

    comp = competitor_from_args(args, cfg)
    _need_broker(cfg, "arena generate")
    try:
        backend = create_backend(comp)
    except BackendError as exc:
        raise UsageError(f"competitor {comp.name!r}: {exc}") from None
    # the stats line is the foreground command's output: show it without -v
    logging.getLogger(__name__).setLevel(min(logging.getLogger().getEffectiveLevel(), logging.INFO))
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set()) \
        if threading.current_thread() is threading.main_thread() else None
    pool = GenerationPool(cfg, comp, backend, log_every_s=args.stats_every)
    print(f"generation pool {comp.name} ({comp.backend}: {comp.model}) on {cfg.kafka.bootstrap_servers}; "
          f"groups {train_group(cfg, comp.name)} / {eval_group(cfg, comp.name, '<checkpoint>')}", flush=True)
    try:
        pool.run(stop, max_idle_s=args.max_idle)
    except KeyboardInterrupt:
        pass
    except BackendError as exc:
        raise UsageError(f"competitor {comp.name!r}: {exc}") from None
    finally:
        backend.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print(json.dumps(pool.stats(), sort_keys=True), flush=True)
    return 0


# ---------------------------------------------------------------------- CLI: arena checkpoint
def _ckpt_args(p) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    a = sub.add_parser("add", help="announce a checkpoint: the model's pools hot-load it and re-answer eval")
    a.add_argument("--model", required=True, metavar="NAME", help="competitor name the checkpoint belongs to")
    a.add_argument("--path", required=True, metavar="DIR", help="checkpoint directory (full weights or a LoRA "
                   "adapter), as the workers see it; for openai competitors, the served model name")
    a.add_argument("--name", metavar="CKPT", help="checkpoint name (default: the directory's name)")
    a.add_argument("--iteration", type=int, default=0)
    a.add_argument("--stage", default="", help="sft, dpo, reward, rl, ...")
    a.add_argument("--parent", help="checkpoint this one was trained from")
    a.add_argument("--remote", action="store_true", help="do not check that --path exists on this machine")
    sub.add_parser("list", help="list the checkpoints announced so far")


def read_checkpoints(cfg: Config, timeout_s: float = 10.0) -> list[Checkpoint]:
    """Every Checkpoint event on the checkpoints topic, in order."""
    from kafka import TopicPartition

    c = make_consumer(cfg, None, None)
    tp = TopicPartition(cfg.topic("checkpoints"), 0)
    try:
        c.assign([tp])
        c.seek_to_beginning(tp)
        end = c.end_offsets([tp])[tp]
        out: list[Checkpoint] = []
        deadline = time.monotonic() + timeout_s
        while c.position(tp) < end and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=200).values():
                for r in recs:
                    try:
                        out.append(decode(r.value, Checkpoint))
                    except BadEvent:
                        continue
        return out
    finally:
        c.close(autocommit=False)


def _ckpt_run(args, cfg: Config) -> int:
    from arena_flywheel.cli import UsageError

    _need_broker(cfg, "arena checkpoint")
    if args.action == "list":
        for ev in read_checkpoints(cfg):
            print(f"{ev.model:20s} {ev.checkpoint:16s} iter={ev.iteration:<3d} stage={ev.stage or '-':6s} {ev.path}")
        return 0
    if args.action != "add":
        raise UsageError("use: arena checkpoint add --model NAME --path DIR  (or: arena checkpoint list)")
    path = args.path
    if not args.remote:
        if not Path(path).is_dir():
            raise UsageError(f"--path {path!r} is not a directory here; pass --remote if it exists only on the "
                             f"workers (or is a served model name)")
        path = str(Path(path).resolve())
    name = args.name or Path(args.path.rstrip("/")).name or "ckpt"
    if name in RESERVED_CHECKPOINTS:
        raise UsageError(f"checkpoint name {name!r} is reserved; pass --name, e.g. --name iter{args.iteration or 1}")
    ev = Checkpoint(model=args.model, checkpoint=name, path=path, iteration=args.iteration, stage=args.stage,
                    parent=args.parent)
    with Publisher(cfg) as pub:
        pub.send(ev)
        pub.flush()
    print(f"checkpoint {name} of {args.model} announced ({ev.id}); its pools load {path} and answer the eval "
          f"split under group {eval_group(cfg, args.model, name)}")
    return 0


def _make_checkpoint_cmd():
    from arena_flywheel.cli import Command

    return Command(_ckpt_args, _ckpt_run)


checkpoint_cmd = _make_checkpoint_cmd()

__all__ = ["GenerationPool", "PoolStats", "conversation", "train_group", "eval_group", "read_checkpoints",
           "checkpoint_cmd", "add_arguments", "run"]
