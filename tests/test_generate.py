"""Generation pools over the real embedded broker: responses, multi-turn, commits, hot-plug, dead letters."""
from __future__ import annotations

import json
import threading
import time

import pytest

from arena_flywheel.config import CompetitorConfig
from arena_flywheel.events import Checkpoint, DeadLetter, Instruction, Message, Response, decode
from arena_flywheel.kafka import Publisher, make_consumer
from consumers.backends import Completion, GenerationRequest, RetryableError, create_backend
from arena_flywheel.kafka import read_checkpoints
from consumers.generate import GenerationPool, conversation, eval_group, train_group
from tests.publishing import publish


@pytest.fixture
def fast_cfg(cfg):
    # Tansu holds the first JoinGroup reply for about half the session timeout: keep joins short here.
    cfg.kafka.session_timeout_ms = 1000
    cfg.kafka.heartbeat_interval_ms = 300
    return cfg


def inst(*turns, split="train", system=None, source_id=None):
    msgs = ([Message(role="system", content=system)] if system else []) + [Message(role="user", content=t)
                                                                           for t in turns]
    return Instruction(messages=msgs, split=split, source="test", source_id=source_id)


def read_all(cfg, name, cls):
    """Every event of type `cls` on topic `name`, from the beginning to the current end."""
    from kafka import TopicPartition

    topic = cfg.topic(name)
    c = make_consumer(cfg, None, None)
    try:
        parts = c.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        end = c.end_offsets(tps)
        out = []
        deadline = time.monotonic() + 10
        while any(c.position(tp) < end[tp] for tp in tps) and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=100).values():
                out += [decode(r.value, cls) for r in recs]
        return out
    finally:
        c.close(autocommit=False)


def wait_for(cfg, name, cls, pred, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        events = read_all(cfg, name, cls)
        if pred(events) or time.monotonic() > deadline:
            return events
        time.sleep(0.2)


def competitor(model_path, **kw):
    data = {"name": "tiny", "backend": "transformers", "model": str(model_path), "device": "cpu",
            "max_new_tokens": 6, "batch_size": 4}
    data.update(kw)
    return CompetitorConfig(**data)


def test_conversation_feeds_the_models_own_answers():
    i = Instruction(messages=[Message(role="system", content="S"), Message(role="user", content="u1"),
                              Message(role="assistant", content="recorded"), Message(role="user", content="u2")])
    assert conversation(i, [], 0) == [{"role": "system", "content": "S"}, {"role": "user", "content": "u1"}]
    assert conversation(i, ["mine"], 1)[2:] == [{"role": "assistant", "content": "mine"},
                                                {"role": "user", "content": "u2"}]


@pytest.mark.slow
def test_pool_end_to_end_multi_turn_commits_and_dead_letters(fast_cfg, tiny_model):
    cfg = fast_cfg
    train = [inst(f"train question {k}") for k in range(4)] + [inst("first", "second", system="Be brief.")]
    evals = [inst(f"eval question {k}", split="eval") for k in range(2)] + [inst("a", "b", "c", split="eval")]
    publish(cfg, train + evals)
    with Publisher(cfg) as pub:
        pub.send_raw(cfg.topic("instructions.train"), b"k", b"{not json")
        pub.flush()

    comp = competitor(tiny_model)
    pool = GenerationPool(cfg, comp, log_every_s=0)
    stats = pool.run(max_idle_s=1.0)
    assert stats.instructions == 8 and stats.bad_records == 1 and stats.errors == 0

    responses = read_all(cfg, "responses", Response)
    assert len(responses) == 8
    by_id = {r.instruction_id: r for r in responses}
    for i in train + evals:
        r = by_id[i.id]
        assert len(r.answers) == len(i.user_turns)
        assert (r.model, r.checkpoint, r.split, r.backend) == ("tiny", "base", i.split, "transformers")
        assert r.output_tokens > 0 and r.latency_ms > 0 and r.sampling["max_new_tokens"] == 6
        assert r.id == Response(instruction_id=i.id, model="tiny", checkpoint="base", answers=[]).id
    dead = read_all(cfg, "deadletter", DeadLetter)
    assert len(dead) == 1 and "invalid JSON" in dead[0].reason and dead[0].raw == "{not json"
    assert dead[0].source.startswith(cfg.topic("instructions.train"))

    # offsets were committed after the broker acked: a restarted pool has nothing to do
    again = GenerationPool(cfg, comp, log_every_s=0).run(max_idle_s=1.0)
    assert again.instructions == 0 and again.bad_records == 0
    assert len(read_all(cfg, "responses", Response)) == 8
    s = pool.stats()
    assert s["groups"] == {"train": train_group(cfg, "tiny"), "eval": eval_group(cfg, "tiny", "base")}
    assert s["tokens_per_s"] > 0 and s["lag"] == {"eval": 0, "train": 0}


@pytest.mark.slow
def test_hot_plug_tags_new_checkpoint_and_answers_eval_again(fast_cfg, tiny_model, tmp_path):
    from arena_flywheel.tinymodel import build_tiny_model

    cfg = fast_cfg
    cfg.trainer.checkpoint_roots = [str(tmp_path)]  # this test's checkpoint storage (default: output_dir only)
    ckpt_dir = build_tiny_model(tmp_path / "iter1", seed=7)
    evals = [inst(f"eval {k}", split="eval") for k in range(3)]
    train_before = [inst(f"train before {k}") for k in range(2)]
    publish(cfg, evals + train_before)

    backend = create_backend(competitor(tiny_model))
    pool = GenerationPool(cfg, competitor(tiny_model), backend, log_every_s=0)
    stop = threading.Event()
    t = threading.Thread(target=pool.run, args=(stop,), daemon=True)
    t.start()
    try:
        got = wait_for(cfg, "responses", Response, lambda rs: len(rs) >= 5)
        assert {r.checkpoint for r in got} == {"base"} and len(got) == 5

        publish(cfg, [Checkpoint(model="someone-else", checkpoint="x", path="/nowhere"),
                      Checkpoint(model="tiny", checkpoint="iter1", path=str(ckpt_dir), iteration=1, stage="sft")])
        got = wait_for(cfg, "responses", Response,
                       lambda rs: sum(r.checkpoint == "iter1" for r in rs) >= 3)
        iter1 = [r for r in got if r.checkpoint == "iter1"]
        assert sorted(r.instruction_id for r in iter1) == sorted(i.id for i in evals)  # eval answered again

        train_after = inst("train after the hot-plug")
        publish(cfg, [train_after])
        got = wait_for(cfg, "responses", Response, lambda rs: any(r.instruction_id == train_after.id for r in rs))
        after = [r for r in got if r.instruction_id == train_after.id]
        assert [r.checkpoint for r in after] == ["iter1"]
        # the train split continued where it was: old train instructions were not answered again
        assert sum(r.split == "train" for r in got) == 3

        # a checkpoint that cannot be loaded is dead-lettered; the pool keeps serving iter1
        publish(cfg, [Checkpoint(model="tiny", checkpoint="iter2", path=str(tmp_path / "missing"))])
        dead = wait_for(cfg, "deadletter", DeadLetter, lambda ds: any("iter2" in d.reason for d in ds))
        assert any("cannot hot-plug" in d.reason and "iter2" in d.reason for d in dead)
        s = pool.stats()
        assert s["checkpoint"] == "iter1" and s["hot_plugs"] == 1
        assert s["groups"]["eval"] == eval_group(cfg, "tiny", "iter1")
        assert backend.current_path == str(ckpt_dir)
    finally:
        stop.set()
        t.join(30)
        backend.close()
    assert not t.is_alive()
    assert [c.checkpoint for c in read_checkpoints(cfg)] == ["x", "iter1", "iter2"]

    # a restarted pool resumes the latest checkpoint that loads (iter2 is still broken: iter1), and
    # has nothing left to answer
    restarted = GenerationPool(cfg, competitor(tiny_model), log_every_s=0)
    stats = restarted.run(max_idle_s=1.0)
    assert restarted.checkpoint == "iter1" and restarted.checkpoint_path == str(ckpt_dir)
    assert stats.instructions == 0
    assert len(read_all(cfg, "responses", Response)) == 9


class FlakyBackend:
    """A backend that fails like real ones do: a whole batch of more than 2 runs out of memory, and
    anything mentioning "poison" always fails; "hiccup" fails once, then works."""

    name = "flaky"

    def __init__(self):
        self.calls = []
        self.hiccups = set()

    def generate(self, requests: list[GenerationRequest]) -> list[Completion]:
        self.calls.append(len(requests))
        if len(requests) > 2:
            raise RetryableError("CUDA out of memory. Tried to allocate 2.00 GiB")
        out = []
        for r in requests:
            text = r.messages[-1]["content"]
            if "poison" in text:
                out.append(Completion(text="", error="HTTP 503 from backend: overloaded"))
            elif "hiccup" in text and r.request_id not in self.hiccups:
                self.hiccups.add(r.request_id)
                out.append(Completion(text="", error="timeout after 1s"))
            else:
                out.append(Completion(text=f"ok: {text}", output_tokens=2, finish_reason="stop"))
        return out

    def load(self, path):
        pass

    def close(self):
        pass


@pytest.mark.slow
def test_failing_backend_retries_then_dead_letters(fast_cfg):
    cfg = fast_cfg
    good = [inst(f"fine {k}") for k in range(3)]
    hiccup = inst("hiccup once")
    poison = inst("poison pill", "never reached")
    publish(cfg, good + [hiccup, poison])
    backend = FlakyBackend()
    comp = CompetitorConfig(name="flaky", backend="transformers", batch_size=8, max_retries=2, splits=["train"])
    pool = GenerationPool(cfg, comp, backend, log_every_s=0, retry_backoff_s=0.01)
    stats = pool.run(max_idle_s=1.0)
    assert stats.instructions == 4 and stats.errors == 1 and stats.batch_splits >= 1 and stats.retries >= 3
    responses = read_all(cfg, "responses", Response)
    assert sorted(r.instruction_id for r in responses) == sorted(i.id for i in good + [hiccup])
    dead = read_all(cfg, "deadletter", DeadLetter)
    assert len(dead) == 1
    d = dead[0]
    assert "HTTP 503" in d.reason and "after 3 attempts" in d.reason and d.reason.startswith("turn 1")
    assert decode(d.raw.encode(), Instruction).id == poison.id  # the instruction itself, to replay later
    assert d.stage == "generate:flaky@base"


@pytest.mark.slow
def test_replay_competitor_over_the_stream(fast_cfg, tmp_path):
    cfg = fast_cfg
    answers = tmp_path / "answers.jsonl"
    answers.write_text("\n".join(json.dumps(r) for r in [
        {"question_id": 1, "choices": [{"turns": ["one-a", "one-b"]}]},
        {"question_id": 2, "text": "two"}]) + "\n")
    publish(cfg, [inst("q1", "q1 again", source_id="1", split="eval"), inst("q2", source_id="2", split="eval"),
                  inst("q3", source_id="3", split="eval")])
    comp = CompetitorConfig(name="recorded", backend="replay", model=str(answers), splits=["eval"])
    stats = GenerationPool(cfg, comp, log_every_s=0).run(max_idle_s=1.0)
    assert stats.instructions == 2 and stats.errors == 1 and stats.retries == 0  # a missing answer is final
    got = {tuple(r.answers) for r in read_all(cfg, "responses", Response)}
    assert got == {("one-a", "one-b"), ("two",)}
    assert "no recorded answer" in read_all(cfg, "deadletter", DeadLetter)[0].reason


def test_replicas_of_a_competitor_share_partitions(fast_cfg, tmp_path):
    cfg = fast_cfg
    answers = tmp_path / "answers.jsonl"
    answers.write_text("\n".join(json.dumps({"question_id": k, "text": f"answer {k}"}) for k in range(12)) + "\n")
    comp = CompetitorConfig(name="twin", backend="replay", model=str(answers), splits=["eval"], batch_size=2)
    pools = [GenerationPool(cfg, comp, log_every_s=0, poll_timeout_ms=50) for _ in range(2)]
    stop = threading.Event()
    threads = [threading.Thread(target=p.run, args=(stop,), daemon=True) for p in pools]
    for t in threads:
        t.start()
    try:
        # The first replica to join owns both partitions until the second one's join rebalances the group,
        # so wait for the split, not merely for both partitions to be owned.
        def owned():
            return [p.stats()["partitions"].get("eval", []) for p in pools]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sorted(map(len, owned())) != [1, 1]:
            time.sleep(0.1)
        assert sorted(map(len, owned())) == [1, 1] and sorted(sum(owned(), [])) == [0, 1], owned()
        evals = [inst(f"q{k}", source_id=str(k), split="eval") for k in range(12)]
        publish(cfg, evals)
        got = wait_for(cfg, "responses", Response, lambda rs: len({r.instruction_id for r in rs}) >= 12)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert {r.instruction_id for r in got} == {i.id for i in evals}
    assert len({r.id for r in got}) == 12  # at-least-once, but the ids make any redelivery a duplicate
    assert all(p.counters.instructions > 0 for p in pools)


def test_cli_checkpoint_add_and_generate_usage(fast_cfg, tmp_path, monkeypatch, capsys):
    from arena_cli.main import main

    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", fast_cfg.kafka.bootstrap_servers)
    monkeypatch.setenv("ARENA_TOPIC_PREFIX", fast_cfg.kafka.topic_prefix)
    d = tmp_path / "ckpt-7"
    d.mkdir()
    assert main(["checkpoint", "add", "--model", "tiny", "--path", str(d), "--iteration", "7", "--stage", "dpo"]) == 0
    [ev] = read_checkpoints(fast_cfg)
    assert (ev.model, ev.checkpoint, ev.path, ev.iteration, ev.stage) == ("tiny", "ckpt-7", str(d), 7, "dpo")
    # outside the default roots (the trainer's output_dir): announced, with a warning that says what to set
    assert "add its directory to trainer.checkpoint_roots" in capsys.readouterr().err
    assert main(["checkpoint", "add", "--model", "tiny", "--path", str(tmp_path / "nope")]) == 2
    assert main(["generate", "--model", "unknown"]) == 2
    err = capsys.readouterr().err
    assert "--remote" in err and "no competitor named 'unknown'" in err


@pytest.mark.slow
def test_cli_generate_runs_an_ad_hoc_competitor(fast_cfg, tmp_path, monkeypatch, capsys):
    from arena_cli.main import main

    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", fast_cfg.kafka.bootstrap_servers)
    monkeypatch.setenv("ARENA_TOPIC_PREFIX", fast_cfg.kafka.topic_prefix)
    answers = tmp_path / "model_outputs.json"
    answers.write_text(json.dumps([{"instruction": "Say hi.", "output": "Hi!"}]))
    publish(fast_cfg, [inst("Say hi.", split="eval")])
    rc = main(["generate", "--name", "alpaca", "--backend", "replay", "--model-path", str(answers),
               "--splits", "eval", "--max-idle", "0.5"])
    assert rc == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["instructions"] == 1 and stats["model"] == "alpaca"
    [r] = read_all(fast_cfg, "responses", Response)
    assert (r.model, r.answers, r.backend) == ("alpaca", ["Hi!"], "replay")


def test_by_default_pools_load_checkpoints_only_from_the_trainers_output_dir(fast_cfg, tmp_path):
    """A Checkpoint event naming any other path (hostile or mistyped) is refused unless its directory is
    among trainer.checkpoint_roots; with none configured, the root is trainer.output_dir."""
    from consumers.generate import checkpoint_problem

    cfg = fast_cfg
    cfg.trainer.output_dir = str(tmp_path / "checkpoints")
    inside = tmp_path / "checkpoints" / "target" / "it1-sft"
    inside.mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    assert checkpoint_problem(cfg, Checkpoint(model="target", checkpoint="it1-sft", path=str(inside))) is None
    for path in ("/etc", str(tmp_path / "elsewhere"), str(inside / ".." / ".." / ".." / "elsewhere")):
        problem = checkpoint_problem(cfg, Checkpoint(model="target", checkpoint="x", path=path))
        assert problem and "outside trainer.checkpoint_roots" in problem, path
    cfg.trainer.checkpoint_roots = [str(tmp_path / "elsewhere")]
    assert checkpoint_problem(cfg, Checkpoint(model="target", checkpoint="x", path=str(tmp_path / "elsewhere"))) is None
