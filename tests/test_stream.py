"""The Faust worker end to end: a real embedded broker and a real worker process (`python -m streams.app`)."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from arena_flywheel.broker import free_port
from arena_flywheel.events import (Instruction, JudgeInfo, Message, Response, Verdict, competitor_name, decode)
from arena_flywheel.kafka import Publisher, make_consumer
from streams import state as S

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------ helpers

def write_config(cfg, path: Path, **arena) -> Path:
    k = cfg.kafka
    lines = [f'data_dir = "{cfg.data_dir}"', "[kafka]", f'bootstrap_servers = "{k.bootstrap_servers}"',
             f'topic_prefix = "{k.topic_prefix}"', f"partitions = {k.partitions}", "[arena]"]
    for key, val in arena.items():
        lines.append(f"{key} = {json.dumps(val)}")
    lines += ["[ratings]", "refresh_s = 0.2", "bootstrap_rounds = 10", "failure_margin = 2.0"]
    path.write_text("\n".join(lines) + "\n")
    return path


class Worker:
    def __init__(self, config: Path, log: Path):
        self.config, self.log, self.port, self.proc = config, log, free_port(), None

    def start(self) -> "Worker":
        self.proc = subprocess.Popen([sys.executable, "-m", "streams.app", "--config", str(self.config),
                                      "--web-port", str(self.port)], cwd=ROOT, stdout=open(self.log, "ab"),
                                     stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        return self

    def leaderboard(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/leaderboard", timeout=2) as r:
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

    def make(**arena) -> Worker:
        w = Worker(write_config(cfg, tmp_path / f"arena{len(started)}.toml", **arena), tmp_path / "worker.log")
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

def test_pairing_emits_battles_per_plan_and_dead_letters_bad_records(cfg, worker_for):
    worker_for(battle_plan="target-vs-all", targets=["tgt"])
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
    expected |= {(late.id, frozenset(p)) for p in [("tgt", "x"), ("tgt", "y")]}
    events = read_all(cfg, ["battles", "deadletter"],
                      lambda got: sum(e.SCHEMA == "arena.battle" for e in got) >= len(expected)
                      and any(e.SCHEMA == "arena.deadletter" for e in got))
    battles = [e for e in events if e.SCHEMA == "arena.battle"]
    got = {(b.instruction_id, frozenset((b.a.competitor, b.b.competitor))) for b in battles}
    assert got == expected
    assert len({b.id for b in battles}) == len(battles) == len(expected)
    b = next(b for b in battles if b.instruction_id == early.id)
    assert b.messages == early.messages and b.reference == "1" and b.split == "train"
    assert b.a.response_id < b.b.response_id
    dl = [e for e in events if e.SCHEMA == "arena.deadletter"]
    assert dl and "invalid JSON" in dl[0].reason and dl[0].source.startswith(cfg.topic("responses"))
