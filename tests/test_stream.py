"""The Faust worker end to end: a real embedded broker and a real worker process (`python -m arena_cli stream`)."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from arena_cli.main import main as cli_main
from arena_flywheel.broker import free_port
from arena_flywheel.events import (Instruction, JudgeInfo, Message, Response, Verdict, competitor_name, decode)
from arena_flywheel.kafka import Publisher, make_consumer
from arena_flywheel.ratings import BradleyTerry, PairCounts
from streams import state as S
from tests.publishing import publish

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------ helpers

def write_config(cfg, path: Path, ratings: dict | None = None, **arena) -> Path:
    k = cfg.kafka
    lines = [f'data_dir = "{cfg.data_dir}"', "[kafka]", f'bootstrap_servers = "{k.bootstrap_servers}"',
             f'topic_prefix = "{k.topic_prefix}"', f"partitions = {k.partitions}", "[arena]"]
    for key, val in arena.items():
        lines.append(f"{key} = {json.dumps(val)}")
    lines += ["[ratings]", "refresh_s = 0.2", "bootstrap_rounds = 10"]
    lines += [f"{key} = {json.dumps(val)}" for key, val in (ratings or {}).items()]
    lines += ["[trainer]", "threshold_schedule = [2.0]"]
    path.write_text("\n".join(lines) + "\n")
    return path


class Worker:
    def __init__(self, config: Path, log: Path, preamble: str = ""):
        """preamble: Python run in the worker process before `arena stream` (fault injection)."""
        self.config, self.log, self.port, self.proc = config, log, free_port(), None
        self.preamble = preamble

    def start(self) -> "Worker":
        run = ["-m", "arena_cli"]
        if self.preamble:
            run = ["-c", self.preamble + "\nimport runpy\nrunpy.run_module('arena_cli', run_name='__main__')"]
        self.proc = subprocess.Popen([sys.executable, *run, "--config", str(self.config), "stream",
                                      "--web-port", str(self.port)], cwd=ROOT, stdout=open(self.log, "ab"),
                                     stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        return self

    def leaderboard(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/leaderboard", timeout=2) as r:
                return json.loads(r.read())
        except OSError:
            return None

    def stats(self, sizes: bool = False) -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats" + ("?sizes=1" if sizes else ""),
                                        timeout=5) as r:
                return json.loads(r.read())
        except OSError:
            return None

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def worker_for(cfg, tmp_path):
    started = []

    def make(preamble: str = "", ratings: dict | None = None, **arena) -> Worker:
        w = Worker(write_config(cfg, tmp_path / f"arena{len(started)}.toml", ratings, **arena),
                   tmp_path / "worker.log", preamble)
        started.append(w)
        return w.start()

    yield make
    for w in started:
        w.stop()


def read_all(cfg, topics: list[str], want, timeout: float = 60.0, settle: float = 1.0) -> list:
    """Decode records of `topics` until want(events) or timeout, then `settle` seconds more (so that
    anything extra, e.g. a duplicate, shows up too)."""
    c = make_consumer(cfg, [cfg.topic(t) for t in topics], None)
    got: list = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if want(got):
                deadline = min(deadline, time.monotonic() + settle)
            for recs in c.poll(200).values():
                got.extend(decode(r.value) for r in recs)
    finally:
        c.close()
    return got


def partition_of(cfg, event) -> int:
    """The partition kafka-python's default partitioner (which the Publisher uses) gives the event's key."""
    from kafka.partitioner.default import murmur2

    return (murmur2(event.kafka_key().encode()) & 0x7FFFFFFF) % cfg.kafka.partitions


def publish_answered(cfg, ins: Instruction, models: list[str]) -> None:
    """An instruction and an answer of each model, once the pairing agent has paired them (its battles are
    out), so the answers are in the pairing table for the Failures that name them."""
    publish(cfg, (ins, *(response(ins, m) for m in models)))
    read_all(cfg, ["battles"], lambda got: sum(b.instruction_id == ins.id for b in got) >= len(models) - 1,
             settle=0)


def instruction(i: int, split: str = "train") -> Instruction:
    return Instruction(messages=[Message(role="user", content=f"question {i}")], split=split, reference=str(i))


def response(ins: Instruction, model: str, checkpoint: str = "base") -> Response:
    return Response(instruction_id=ins.id, split=ins.split, model=model, checkpoint=checkpoint,
                    answers=[f"{model}@{checkpoint} says {ins.id[:6]}"])


JUDGE = JudgeInfo(backend="reference", template_id="t")


def verdict(ins_id: str, a: str, b: str, winner: str, split: str = "eval", margin: float = 1.0,
            battle: str | None = None) -> Verdict:
    return Verdict(battle_id=battle or f"bat-{ins_id}-{a}-{b}", instruction_id=ins_id, split=split,
                   competitor_a=a, competitor_b=b, model_a=a.split("@")[0], model_b=b.split("@")[0],
                   checkpoint_a=(a.split("@") + ["base"])[1], checkpoint_b=(b.split("@") + ["base"])[1],
                   winner=winner, margin=margin, score_a=5.0, score_b=5.0 - margin, judge=JUDGE)


# ------------------------------------------------------------------------------------------ pure logic

def test_plans_pair_competitors_as_documented():
    comps = {"t": "t", "t@c1": "t", "a": "a", "b": "b", "c": "c"}
    tva = S.plan_pairs("target-vs-all", comps, ["t"])
    assert tva == {tuple(sorted(p)) for p in [("t", "a"), ("t", "b"), ("t", "c"), ("t@c1", "a"), ("t@c1", "b"),
                                              ("t@c1", "c")]}
    rr = S.plan_pairs("round-robin", comps, [])
    assert len(rr) == 10 and all(a != b for a, b in rr)
    s1 = S.plan_pairs("sampled", comps, ["t"], k=2, seed=1, instruction_id="i1")
    assert len(s1) == 4 and all(("t" in p or "t@c1" in p) for p in s1)
    assert s1 == S.plan_pairs("sampled", dict(reversed(list(comps.items()))), ["t"], k=2, seed=1, instruction_id="i1")
    draws = {frozenset(S.plan_pairs("sampled", comps, ["t"], k=2, seed=s, instruction_id="i1")) for s in range(20)}
    assert len(draws) > 1  # the seed matters
    with pytest.raises(ValueError):
        S.plan_pairs("swiss", comps, [])


# ------------------------------------------------------------------------------------------ worker

@pytest.mark.slow
def test_pairing_emits_battles_per_plan_and_dead_letters_bad_records(cfg, worker_for):
    # per-split plans: the train split finds the target's losses, the eval split rates everyone against everyone
    worker_for(battle_plan="target-vs-all", eval_battle_plan="round-robin", targets=["tgt"])
    pub = Publisher(cfg)
    early = instruction(1)
    # responses before their instruction: the battles must come when the instruction arrives
    for m, ck in (("tgt", "base"), ("tgt", "c1"), ("x", "base"), ("y", "base")):
        pub.send(response(early, m, ck))
    pub.send(early)
    late = instruction(2, "eval")
    pub.send(late)
    for m in ("tgt", "x", "y"):
        pub.send(response(late, m))
    pub.send(response(late, "x"))  # redelivered response: no new battle
    pub.send_raw(cfg.topic("responses"), b"k", b"{not json")
    pub.flush()
    pub.close()
    expected = {(early.id, frozenset(p)) for p in [("tgt", "x"), ("tgt", "y"), ("tgt@c1", "x"), ("tgt@c1", "y")]}
    expected |= {(late.id, frozenset(p)) for p in [("tgt", "x"), ("tgt", "y"), ("x", "y")]}
    events = read_all(cfg, ["battles", "deadletter"],
                      lambda got: sum(e.SCHEMA == "arena.battle" for e in got) >= len(expected)
                      and any(e.SCHEMA == "arena.deadletter" for e in got))
    battles = [e for e in events if e.SCHEMA == "arena.battle"]
    got = {(b.instruction_id, frozenset((b.a.competitor, b.b.competitor))) for b in battles}
    assert got == expected
    assert len({b.id for b in battles}) == len(battles) == len(expected)
    b = next(b for b in battles if b.instruction_id == early.id)
    assert b.messages == early.messages and b.reference == "1" and b.split == "train"
    assert {b.plan for b in battles if b.instruction_id == late.id} == {"round-robin"}
    assert {b.plan for b in battles if b.instruction_id == early.id} == {"target-vs-all"}
    assert b.a.response_id < b.b.response_id
    dl = [e for e in events if e.SCHEMA == "arena.deadletter"]
    assert dl and "invalid JSON" in dl[0].reason and dl[0].source.startswith(cfg.topic("responses"))


@pytest.mark.slow
def test_pairing_keeps_a_bounded_window_of_train_instructions(cfg, worker_for):
    """arena.pairing_records: per partition, the pairing records of the least recently touched train
    instructions go (tombstoned in the changelog); every eval record stays; no battle is lost to it."""
    w = worker_for(battle_plan="target-vs-all", targets=["tgt"], pairing_records=2)
    train = [instruction(100 + i) for i in range(12)]
    evals = [instruction(200 + i, "eval") for i in range(3)]
    publish(cfg, (ev for ins in train + evals for ev in (ins, response(ins, "tgt"), response(ins, "x"))))
    battles = read_all(cfg, ["battles"], lambda got: len(got) >= len(train) + len(evals))
    assert sorted(b.instruction_id for b in battles) == sorted(i.id for i in train + evals)
    parts = list(range(cfg.kafka.partitions))
    per_part = [0] * len(parts)
    for ins in train:
        per_part[partition_of(cfg, ins)] += 1
    want = sum(min(2, n) for n in per_part) + len(evals)  # instructions whose records are kept

    def kept(i: int, r: int):
        s = w.stats(sizes=True)
        keys = (s or {}).get("tables", {}).get("keys", {})
        return (keys.get("i"), keys.get("r")) == (i, r)
    assert wait_for(lambda: kept(want, want), timeout=30), (w.stats(sizes=True) or {}).get("tables")
    # a late train response of a dropped instruction (the first of a partition that had 3 or more) makes no
    # battle; its record takes a place in the window like any other, so one kept instruction goes
    p = max(parts, key=lambda q: per_part[q])
    assert per_part[p] >= 3
    first = next(i for i in train if partition_of(cfg, i) == p)
    publish(cfg, [response(first, "y")])
    assert wait_for(lambda: kept(want - 1, want), timeout=30), (w.stats(sizes=True) or {}).get("tables")
    assert not [b for b in read_all(cfg, ["battles"], lambda got: False, timeout=3) if "y" in (b.a.model, b.b.model)]


def wait_for(fn, timeout: float = 60.0, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = fn()
        if out:
            return out
        time.sleep(every)
    return fn()


@pytest.mark.slow
def test_ratings_survive_kill9_with_duplicates_and_match_an_offline_fit(cfg, worker_for):
    """2,000 eval verdicts (+10% duplicates) with a kill -9 part-way; then a target's train loss -> Failure."""
    rng = random.Random(7)
    models = ["m0", "m1", "m2", "m3", "tgt"]
    strength = {m: i * 0.5 for i, m in enumerate(models)}
    verdicts = []
    for i in range(2000):
        a, b = rng.sample(models, 2)
        p = 1 / (1 + 10 ** (strength[b] - strength[a]))
        u = rng.random()
        w = "tie" if u < 0.1 else "invalid" if u < 0.12 else "model_a" if rng.random() < p else "model_b"
        verdicts.append(verdict(f"ins-{i % 300}", a, b, w, battle=f"bat-{i}"))
    dups = rng.sample(verdicts, 200)
    stream = verdicts[:1000] + dups[:100] + verdicts[1000:] + dups[100:]

    w = worker_for(battle_plan="target-vs-all", targets=["tgt"])
    pub = Publisher(cfg)
    for v in stream[:800]:
        pub.send(v)
    pub.flush()
    assert wait_for(lambda: (w.leaderboard() or {}).get("verdicts", 0) >= 300, timeout=90), "worker made no progress"
    for v in stream[800:1300]:  # some of these are in flight when the worker dies
        pub.send(v)
    pub.flush()
    w.kill9()
    w.start()
    for v in stream[1300:]:
        pub.send(v)
    pub.flush()
    # a target loss on the train split by >= the failure margin (min threshold_schedule, 2.0), with the battle's
    # answers known: verdicts follow their battles, as the judges' do
    ins = instruction(9001)
    publish_answered(cfg, ins, ["tgt", "m3", "m4"])
    small = verdict(ins.id, "tgt", "m3", "model_b", split="train", margin=1.0, battle="bat-f1")
    big = verdict(ins.id, "m4", "tgt", "model_a", split="train", margin=3.0, battle="bat-f2")
    pub.send(small)
    pub.send(big)
    pub.send_raw(cfg.topic("verdicts"), b"k", json.dumps({"schema": "arena.verdict/1", "winner": "x"}).encode())
    pub.flush()
    pub.close()

    unique = {v.id: v for v in verdicts}
    total = len(unique) + 2
    snap = wait_for(lambda: (s := w.leaderboard()) and s["verdicts"] >= total and s["rows"] and s, timeout=120)
    assert snap and snap["verdicts"] == total, (snap or {}).get("verdicts")
    # nothing counted twice after settling either: a later refresh with every verdict applied (lag 0)
    settled = wait_for(lambda: (s := w.leaderboard()) and s.get("lag") == 0
                       and s["generated_at"] > snap["generated_at"] and s, timeout=60)
    assert settled and settled["verdicts"] == total
    print("duplicates", snap["duplicates"], "verdicts", snap["verdicts"])
    assert snap["duplicates"] >= 200  # the re-sent ones at least (plus redelivery after the kill)

    expected: dict = {}
    for v in unique.values():
        expected[(v.competitor_a, v.competitor_b, v.winner)] = expected.get((v.competitor_a, v.competitor_b, v.winner), 0) + 1
    got = {(a, b, win): n for a, b, win, n in snap["counts"]["eval"]}
    assert got == {k: n for k, n in expected.items() if k[2] != "invalid"}
    assert snap["invalid"] == sum(v.winner == "invalid" for v in unique.values())

    counts = PairCounts()
    for (a, b, win), n in expected.items():
        if win != "invalid":
            counts.add(a, b, win, n=n)
    # pinned as every board is (arena iterations, the ledger page): the fixed opponents' mean (tgt is the target)
    pinned = BradleyTerry(scale=400, base=10, init=1000, anchor=("m0", "m1", "m2", "m3"))
    offline = {r.model: r.rating for r in pinned.leaderboard(counts, ci="none")}
    online = {r["model"]: r["rating"] for r in snap["rows"]}
    assert online.keys() == offline.keys()
    assert all(abs(online[m] - offline[m]) < 0.01 for m in offline), (online, offline)
    assert sorted(online, key=online.get) == ["m0", "m1", "m2", "m3", "tgt"]  # the strengths were recovered

    events = read_all(cfg, ["failures", "deadletter"],
                      lambda got: any(e.SCHEMA == "arena.failure" for e in got)
                      and any(e.SCHEMA == "arena.deadletter" for e in got), timeout=30)
    failures = [e for e in events if e.SCHEMA == "arena.failure"]
    assert failures, "no failure for a train loss of 3.0 >= margin 2.0"
    f = failures[-1]
    assert (f.instruction_id, f.target, f.winner_model, f.margin, f.losses) == (ins.id, "tgt", "m4", 3.0, 1)
    assert f.winner_answers == response(ins, "m4").answers and f.target_answers == response(ins, "tgt").answers
    assert f.messages == ins.messages and f.reference == ins.reference and f.verdict_ids == [big.id]
    dl = [e for e in events if e.SCHEMA == "arena.deadletter"]
    assert any(d.source.startswith(cfg.topic("verdicts")) and "arena.verdict" in d.reason for d in dl)


# The interleaving a busy machine produces by chance, made certain: every ratings batch takes 50 ms more,
# and Faust's perform_seek returns only once the fetcher has queued records for the agents (or after 3 s)
SLOW_SEEK = """
import asyncio
from faust.transport import consumer as _consumer
_seek = _consumer.Consumer.perform_seek
async def _slow_seek(self):
    await _seek(self)
    for _ in range(600):
        if sum(q.qsize() for q in list(self.app.flow_control._queues)) >= 20:
            break
        await asyncio.sleep(0.005)
_consumer.Consumer.perform_seek = _slow_seek
from streams import app as _app
_apply = _app.Stream._apply
async def _slow_apply(self, p, events):  # every batch waits 50 ms: records queue up behind it
    await asyncio.sleep(0.05)
    await _apply(self, p, events)
_app.Stream._apply = _slow_apply
"""


@pytest.mark.slow
def test_restart_on_a_backlog_applies_every_verdict_when_the_seek_is_slow(cfg, worker_for):
    """A worker restarted with table state to recover and verdicts waiting. Faust's recovery resumed the
    stream partitions, awaited the seek, then resumed its flow control, which clears the agents' queues:
    whatever was fetched during the seek was dropped after the consumer had passed it (with this
    preamble 2,055 of 5,000 verdicts were lost; seen without it in 4 of 6 runs of benchmarks/bench_stream.py)."""
    models = ["m0", "m1", "m2", "m3"]
    rng = random.Random(11)
    verdicts = [verdict(f"ins-{i}", *rng.sample(models, 2), rng.choice(["model_a", "model_b"]), battle=f"bat-{i}")
                for i in range(5000)]
    w = worker_for(SLOW_SEEK)
    pub = Publisher(cfg)
    for v in verdicts[:200]:
        pub.send(v)
    pub.flush()
    assert wait_for(lambda: (w.leaderboard() or {}).get("verdicts", 0) >= 200, timeout=90), "worker made no progress"
    w.stop()
    # restarted on another machine (or in a container without a volume): the tables come back from their
    # changelogs, i.e. Faust's recovery runs with its fetcher started
    shutil.rmtree(Path(cfg.data_dir) / "faust")
    for v in verdicts[200:]:
        pub.send(v)
    pub.flush()
    pub.close()
    w.start()
    snap = wait_for(lambda: (s := w.leaderboard()) and s.get("lag") == 0 and s["verdicts"] >= 200 and s,
                    timeout=90)
    assert snap and snap["verdicts"] == len(verdicts), (snap or {}).get("verdicts")


# The same for the pairing agent, which still reads through Faust's consumer: every instruction it pairs
# takes 20 ms more, and the seek returns once records are queued for it
SLOW_SEEK_PAIRING = SLOW_SEEK.split("from streams import app")[0] + """
from streams import app as _app
_keep = _app.Stream._keep_pairing
async def _slow_keep(self, *args):
    await asyncio.sleep(0.02)
    await _keep(self, *args)
_app.Stream._keep_pairing = _slow_keep
"""


@pytest.mark.slow
def test_restart_on_a_backlog_pairs_every_instruction_when_the_seek_is_slow(cfg, worker_for):
    """Faust's recovery clears the agents' queues after its seek (above): without the fix the instructions
    and responses fetched during the seek were dropped and their battles never made."""
    pairs = [(ins, [response(ins, "m0"), response(ins, "m1")]) for ins in (instruction(2000 + i) for i in range(400))]
    w = worker_for(SLOW_SEEK_PAIRING, battle_plan="round-robin")
    publish(cfg, (ev for ins, rs in pairs[:50] for ev in (ins, *rs)))
    assert len({b.id for b in read_all(cfg, ["battles"], lambda got: len(got) >= 50, settle=0)}) == 50
    w.stop()
    shutil.rmtree(Path(cfg.data_dir) / "faust")  # the tables come back from their changelogs
    publish(cfg, (ev for ins, rs in pairs[50:] for ev in (ins, *rs)))
    w.start()
    battles = read_all(cfg, ["battles"], lambda got: len({b.id for b in got}) >= len(pairs), timeout=90)
    assert len({b.id for b in battles}) == len(pairs)


def changelog(cfg, table: str) -> dict:
    """The latest value of every key of a table's changelog (None: deleted), as compaction would keep it."""
    c = make_consumer(cfg, [f"{cfg.kafka.topic_prefix}stream-{table}-changelog"], None)
    latest: dict = {}
    quiet = time.monotonic() + 3
    try:
        while time.monotonic() < quiet:
            for recs in c.poll(200).values():
                quiet = time.monotonic() + 2
                for r in recs:
                    latest[json.loads(r.key)] = None if r.value is None else json.loads(r.value)
    finally:
        c.close()
    return latest


def failures_of(cfg, iid: str, n: int) -> list:
    """The Failure events of one instruction, once there are n of them (or after 60 s)."""
    got = read_all(cfg, ["failures"], lambda got: sum(f.instruction_id == iid for f in got) >= n, timeout=60)
    return [f for f in got if f.instruction_id == iid]


@pytest.mark.slow
def test_loss_records_go_out_one_record_per_batch_survive_recovery_and_stay_bounded(cfg, worker_for):
    """A batch's target losses are one changelog record (L:<p>:<offset>) and one in-memory record per
    instruction. Through a restart that recovers the tables from their changelogs, a later loss on the same
    instruction counts the earlier one (Failure.losses 2); retention keeps ratings.loss_records per partition,
    and every batch record left on the changelog still holds a current loss record."""
    w = worker_for(battle_plan="target-vs-all", targets=["tgt"], ratings={"loss_records": 3})
    x = instruction(300)
    p = partition_of(cfg, x)
    first = verdict(x.id, "tgt", "m3", "model_b", split="train", margin=3.0, battle="bat-x1")
    publish_answered(cfg, x, ["tgt", "m3", "m4"])
    publish(cfg, [first])
    assert [f.losses for f in failures_of(cfg, x.id, 1)] == [1]

    w.stop()
    shutil.rmtree(Path(cfg.data_dir) / "faust")  # the tables come back from their changelogs
    w.start()
    second = verdict(x.id, "m4", "tgt", "model_a", split="train", margin=4.0, battle="bat-x2")
    publish(cfg, [second])
    last = failures_of(cfg, x.id, 2)[-1]
    assert (last.losses, last.verdict_ids, last.winner_model) == (2, sorted([first.id, second.id]), "m4")

    # eight more instructions of x's partition lose, each in its own batch: x's record and five others
    # leave the window of 3, and the batch records holding only them leave the changelog
    others = [ins for ins in (instruction(400 + i) for i in range(40)) if partition_of(cfg, ins) == p][:8]
    with Publisher(cfg) as pub:
        for i, ins in enumerate(others):
            pub.send(verdict(ins.id, "tgt", "m3", "model_b", split="train", margin=3.0, battle=f"bat-o{i}"))
            pub.flush()
            time.sleep(0.15)  # fetched alone: its own batch
    total = 2 + len(others)
    assert wait_for(lambda: (w.leaderboard() or {}).get("verdicts", 0) >= total, timeout=60)
    keys = w.stats(sizes=True)["tables"]["keys"]
    assert keys.get("l") == 3, keys
    live = {k: v for k, v in changelog(cfg, "ratings").items() if v is not None}
    homes = [k for k in live if k.startswith(f"L:{p}:")]
    assert not [k for k in live if k.startswith("l:")]  # loss records are never their own changelog record
    kept = {f"l:{p}:{ins.id}" for ins in others[-3:]}
    assert set().union(*(live[k] for k in homes)) >= kept
    assert 1 <= len(homes) <= 3, sorted(homes)  # each holds one of the 3 kept records at least


SMALL_LOSS_BATCHES = """
from streams import state as _S
_S.LOSS_BATCH_BYTES = 600  # about one loss record per batch record
"""


@pytest.mark.slow
def test_loss_records_over_the_size_limit_go_out_in_several_records_and_are_recovered(cfg, worker_for):
    """A batch whose loss records exceed S.LOSS_BATCH_BYTES writes several batch records (L:<p>:<offset>,
    L:<p>:<offset>+1, ...); after a restart that recovers the tables from their changelogs, each instruction's
    next loss counts the earlier one (Failure.losses 2)."""
    w = worker_for(SMALL_LOSS_BATCHES, battle_plan="target-vs-all", targets=["tgt"])
    xs = [ins for ins in (instruction(600 + i) for i in range(40)) if partition_of(cfg, ins) == 0][:4]
    for x in xs:
        publish_answered(cfg, x, ["tgt", "m3", "m4"])
    w.stop()  # the four losses wait for the worker: one fetch, one batch
    firsts = [verdict(x.id, "tgt", "m3", "model_b", split="train", margin=3.0, battle=f"bat-s{i}") for i, x in enumerate(xs)]
    publish(cfg, firsts)
    w.start()
    for x in xs:
        assert [f.losses for f in failures_of(cfg, x.id, 1)] == [1]
    homes = sorted(k for k, v in changelog(cfg, "ratings").items() if k.startswith("L:0:") and v is not None)
    assert len(homes) == 4 and sum("+" in k for k in homes) == 3, homes  # one batch, four records

    w.stop()
    shutil.rmtree(Path(cfg.data_dir) / "faust")  # the tables come back from their changelogs
    w.start()
    publish(cfg, [verdict(x.id, "m4", "tgt", "model_a", split="train", margin=4.0, battle=f"bat-t{i}")
                  for i, x in enumerate(xs)])
    for x, first in zip(xs, firsts):
        last = failures_of(cfg, x.id, 2)[-1]
        assert (last.losses, last.winner_model) == (2, "m4") and first.id in last.verdict_ids


@pytest.mark.slow
def test_loss_records_of_the_earlier_format_are_read_and_replaced(cfg, worker_for):
    """An upgrade: a loss record the earlier version wrote as its own changelog record (l:<p>:<instruction>)
    is recovered, counted in the next Failure of its instruction, and deleted from the changelog once a
    batch record holds the newer copy."""
    x = instruction(500)
    p = partition_of(cfg, x)
    w = worker_for(battle_plan="target-vs-all", targets=["tgt"])
    publish_answered(cfg, x, ["tgt", "m3", "m4"])
    w.stop()
    old = verdict(x.id, "tgt", "m3", "model_b", split="train", margin=3.0, battle="bat-old")
    lkey = f"l:{p}:{x.id}"
    rec = {e["verdict_id"] + ":" + e["side"]: {**e, "offset": 0} for e in S.target_losses(old, {"tgt"}, 2.0)}
    with Publisher(cfg) as pub:  # as the earlier version wrote it: key and value JSON, partition p
        pub.producer.send(f"{cfg.kafka.topic_prefix}stream-ratings-changelog", key=json.dumps(lkey).encode(),
                          value=json.dumps(rec).encode(), partition=p)
        pub.flush()
    shutil.rmtree(Path(cfg.data_dir) / "faust")  # the new worker recovers the tables from their changelogs
    w.start()
    new = verdict(x.id, "m4", "tgt", "model_a", split="train", margin=4.0, battle="bat-new")
    publish(cfg, [new])
    f = failures_of(cfg, x.id, 1)[-1]
    assert (f.losses, f.verdict_ids) == (2, sorted([old.id, new.id]))
    assert wait_for(lambda: (c := changelog(cfg, "ratings")).get(lkey, "absent") is None
                    and any(k.startswith(f"L:{p}:") and lkey in v for k, v in c.items() if v), timeout=30)


@pytest.mark.slow
def test_round_robin_pairs_every_distinct_competitor(cfg, worker_for):
    worker_for(battle_plan="round-robin")
    pub = Publisher(cfg)
    ins = instruction(3, "eval")
    comps = [("a", "base"), ("a", "c1"), ("b", "base"), ("c", "base")]
    for m, ck in comps:
        pub.send(response(ins, m, ck))
    pub.send(ins)
    pub.flush()
    pub.close()
    names = [competitor_name(m, ck) for m, ck in comps]
    expected = {frozenset((x, y)) for i, x in enumerate(names) for y in names[i + 1:]}
    battles = read_all(cfg, ["battles"], lambda got: len(got) >= len(expected))
    assert {frozenset((b.a.competitor, b.b.competitor)) for b in battles} == expected
    assert len(battles) == 6 and all(b.plan == "round-robin" and b.split == "eval" for b in battles)


def test_cli_errors_are_one_line(capsys):
    assert cli_main(["stream", "--web-port", "70000"]) == 2
    assert capsys.readouterr().err.strip() == "arena stream: --web-port must be 1..65535, e.g. --web-port 6066"
