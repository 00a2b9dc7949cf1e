"""The one consumer loop (arena_flywheel/consume.py) on the real embedded broker: decoding into the expected
type, dead letters with their source and reason, commits after the handler, pause/resume keeping the group,
the idle stop, and read_topic."""
from __future__ import annotations

import time

import pytest

from arena_flywheel.consume import Batch, ConsumerLoop, run_loops
from arena_flywheel.events import DeadLetter, Instruction, JudgeInfo, Verdict, decode
from arena_flywheel.kafka import Publisher, read_topic
from tests.conftest import wait_until


def _instructions(n: int, split: str = "train") -> list[Instruction]:
    return [Instruction(messages=[{"role": "user", "content": f"Sort these numbers: {i} 9 {i + 3}"}], split=split,
                        source="test") for i in range(n)]


def test_bad_records_are_dead_lettered_with_source_and_the_rest_handled(cfg):
    insts = _instructions(4)
    verdict = Verdict(battle_id="bat-1", instruction_id=insts[0].id, split="train", competitor_a="ace",
                      competitor_b="target@it1-sft", model_a="ace", model_b="target", checkpoint_b="it1-sft",
                      winner="model_a", margin=3.0, judge=JudgeInfo(backend="reference", template_id="ref-1"))
    topic = cfg.topic("instructions.train")
    with Publisher(cfg) as pub:
        pub.send(insts[0])
        pub.send_raw(topic, b"k", b"{not json")
        pub.send(verdict, topic=topic)  # a valid event of the wrong type for this topic
        for ins in insts[1:]:
            pub.send(ins)
        pub.flush()
    got: list[Batch] = []
    loop = ConsumerLoop(cfg, [topic], "consume-test", got.append, expect=Instruction, stage="test-stage")
    with loop:
        wait_until(lambda: sum(len(b.items) for b in got) >= 4, every=loop.poll_once)
        items = [i for b in got for i in b.items]
        dead = [d for b in got for d in b.dead]
        assert sorted(i.event.id for i in items) == sorted(i.id for i in insts)
        assert len(dead) == 2 and loop.stats.bad_records == 2 and loop.stats.dead_letters == 2
        assert all(d.source.startswith(f"{topic}[") and "]@" in d.source and d.stage == "test-stage" for d in dead)
        assert {d.reason.split(":")[0] for d in dead} == {"invalid JSON", "expected arena.instruction, got arena.verdict"}
        committed = {tp: loop.consumer.committed(tp) for tp in loop.consumer.assignment()}
        assert sum(o or 0 for o in committed.values()) == 6  # every record, bad ones included
    letters = [e for e in read_topic(cfg, "deadletter", DeadLetter) if e.stage == "test-stage"]
    assert sorted(d.source for d in letters) == sorted(d.source for d in dead)


@pytest.mark.slow
def test_pause_keeps_the_group_and_resume_reads_what_came_meanwhile(cfg):
    topic = cfg.topic("instructions.eval")
    seen: list[str] = []
    loop = ConsumerLoop(cfg, [topic], "consume-pause", lambda b: seen.extend(i.event.id for i in b.items),
                        expect=Instruction, stage="test")
    with loop:
        loop.join()
        assert loop.assigned()
        loop.pause()
        insts = _instructions(3, split="eval")
        with Publisher(cfg) as pub:
            for ins in insts:
                pub.send(ins)
        t = time.monotonic()
        while time.monotonic() - t < 2.0:  # polling while paused: heartbeats, no records
            assert loop.poll_once(100) == 0
        assert seen == [] and loop.assigned()
        loop.resume()
        wait_until(lambda: len(seen) == 3, every=loop.poll_once)
    assert sorted(seen) == sorted(i.id for i in insts)


@pytest.mark.slow
def test_run_stops_when_idle_and_read_topic_sees_everything(cfg):
    insts = _instructions(5)
    with Publisher(cfg) as pub:
        for ins in insts:
            pub.send(ins)
    seen: list[str] = []
    loop = ConsumerLoop(cfg, [cfg.topic("instructions.train")], "consume-idle",
                        lambda b: seen.extend(i.event.id for i in b.items), expect=Instruction, stage="test")
    t = time.monotonic()
    run_loops([loop], max_idle_s=1.0)
    assert sorted(seen) == sorted(i.id for i in insts)
    assert time.monotonic() - t < 30 and loop.consumer is None  # stopped by itself, closed
    assert sorted(e.id for e in read_topic(cfg, "instructions.train", Instruction)) == sorted(i.id for i in insts)
    assert decode(insts[0].encode(), Instruction) == insts[0]
