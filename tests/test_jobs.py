"""Training as a launched job: round batches as datasets on disk (and `arena export`), the job process, the
service's paused consumer keeping its group, retries and their report, a restart taking over a running job."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from arena_flywheel.events import Battle, Checkpoint, Contestant, DeadLetter, Verdict
from arena_flywheel.store import LedgerStore
from test_trainer import _cfg_for_training, _publish, _read_all, _wait, failure


def judged(f, score_target: float = 2.0, score_winner: float = 9.0):
    """The battle a failure came from (the winner against the target's checkpoint) and its verdict."""
    b = Battle(instruction_id=f.instruction_id, messages=f.messages,
               a=Contestant(response_id=f"rw{f.instruction_id}", model=f.winner_model, answers=f.winner_answers),
               b=Contestant(response_id=f"rt{f.instruction_id}{f.target_checkpoint}", model=f.target,
                            checkpoint=f.target_checkpoint, answers=f.target_answers))
    v = Verdict(battle_id=b.id, instruction_id=b.instruction_id, competitor_a=b.a.competitor,
                competitor_b=b.b.competitor, model_a=b.a.model, model_b=b.b.model, checkpoint_b=b.b.checkpoint,
                score_a=score_winner, score_b=score_target, winner="model_a", margin=score_winner - score_target,
                judge=f.judge)
    return b, v


def _load(path):
    from datasets import load_from_disk

    return load_from_disk(str(path))


# ---------------------------------------------------------------------- datasets, export
@pytest.mark.slow
def test_exported_batches_load_from_disk_and_train_with_trl_unchanged(cfg, tmp_path, tiny_model, capsys):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer, SFTConfig, SFTTrainer

    from arena_cli.main import main
    from trainer.batches import dataset_hash, dpo_pairs, read_dataset
    from trainer.train import load_tokenizer

    base = [failure(i, margin=3.0 + i) for i in range(4)] + [failure(9, margin=1.0)]  # ins9 is below threshold 3
    sft_ck = Checkpoint(model="target", checkpoint="it1-sft", path=str(tiny_model), iteration=1, stage="sft",
                        parent="base", metrics={"failure_ids": sorted(f.id for f in base[:3]), "threshold": 3.0})
    of_sft = [judged(failure(i, turns=1 + i % 2, target_ckpt="it1-sft")) for i in range(4)]
    with LedgerStore(cfg.db.url) as store:
        store.write(base + [sft_ck] + [e for pair in of_sft for e in pair])
    (tmp_path / "arena.toml").write_text(f'[db]\nurl = "{cfg.db.url}"\n[trainer]\nstages = ["sft", "dpo", "rl"]\n')
    out = tmp_path / "export"

    # a trained round: the failures its checkpoint names; the next round (dpo): the slice it1-sft battled
    assert main(["export", "--what", "sft", "--iteration", "1", "--out", str(out)]) == 0
    assert main(["export", "--what", "dpo", "--iteration", "1", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "3 sft rows of target iteration 1 (parent base)" in err and "4 dpo rows" in err
    # rl is not the next round yet: one line, no traceback
    assert main(["export", "--what", "reward", "--iteration", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "next round (iteration 1 dpo, after it1-sft)" in err and len(err.strip().splitlines()) == 1
    assert main(["export", "--what", "sft", "--out", str(out)]) == 2
    assert "--iteration N" in capsys.readouterr().err

    sft, dpo = _load(out / "sft"), _load(out / "dpo")
    assert sorted(sft["failure_id"]) == sorted(f.id for f in base[:3]) and set(sft["iteration"]) == {1}
    assert sft[0]["messages"][0] == {"role": "system", "content": "Be brief."}
    meta = json.loads((out / "sft.json").read_text())
    assert meta["trained"] == "it1-sft" and meta["stage"] == "sft" and meta["failure_ids"] == sorted(sft["failure_id"])
    rows, _ = dpo_pairs([b for b, _ in of_sft], [v for _, v in of_sft], 3.0, 1)
    assert dataset_hash(read_dataset(out, "dpo")) == dataset_hash(rows)  # the dataset is the rows, exactly
    assert set(dpo.column_names) >= {"prompt", "chosen", "rejected", "battle_ids", "verdict_ids", "instruction_id"}
    assert _load(out / "dpo").num_rows == len(__import__("pandas").read_parquet(out / "dpo.parquet"))

    # the dpo round trains (it1-dpo): now reward and rl are the next round's, on the slice it1-dpo battled
    of_dpo = [judged(failure(i, target_ckpt="it1-dpo")) for i in range(5)]
    with LedgerStore(cfg.db.url) as store:
        store.write([Checkpoint(model="target", checkpoint="it1-dpo", path=str(tiny_model), iteration=1, stage="dpo",
                                parent="it1-sft", metrics={"threshold": 3.0})] + [e for p in of_dpo for e in p])
    for kind in ("dpo", "reward", "rl"):
        assert main(["export", "--what", kind, "--iteration", "1", "--out", str(out)]) == 0
    assert dataset_hash(read_dataset(out, "dpo")) == dataset_hash(rows)  # trained now: the same data
    reward, rl = _load(out / "reward"), _load(out / "rl")
    assert reward.num_rows == 5 and rl.num_rows == 5 and reward[0]["chosen"][-1]["role"] == "assistant"
    assert "prompt" not in reward.column_names  # TRL's implicit-prompt preference format

    # TRL's trainers take the datasets as they were loaded: no column dropped, nothing converted
    tok = load_tokenizer(str(tiny_model))
    common = dict(max_steps=2, per_device_train_batch_size=2, use_cpu=True, report_to=[], save_strategy="no",
                  disable_tqdm=True, max_length=128)
    for cls, args, data in ((SFTTrainer, SFTConfig, sft), (DPOTrainer, DPOConfig, dpo)):
        t = cls(model=AutoModelForCausalLM.from_pretrained(tiny_model), processing_class=tok, train_dataset=data,
                args=args(output_dir=str(tmp_path / cls.__name__), **common))
        assert t.train().training_loss > 0
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)
    rm.config.pad_token_id = tok.pad_token_id
    t = RewardTrainer(model=rm, processing_class=tok, train_dataset=reward,
                      args=RewardConfig(output_dir=str(tmp_path / "rm"), **common))
    assert t.train().training_loss > 0


# ---------------------------------------------------------------------- the launched job, over the broker
def _service_cfg(cfg, tmp_path, model, **trainer):
    from arena_flywheel.config import CompetitorConfig

    cfg.kafka.session_timeout_ms = 1000
    cfg.kafka.heartbeat_interval_ms = 300
    c = _cfg_for_training(cfg, tmp_path, ["sft"], batch_size=4, **trainer)
    c.competitors = [CompetitorConfig(name="target", backend="transformers", model=str(model), device="cpu")]
    return c


def _committed(c) -> dict[int, int | None]:
    from kafka import TopicPartition

    from arena_flywheel.kafka import make_consumer
    from trainer.service import group_id

    con = make_consumer(c, None, group_id(c))
    try:
        topic = c.topic("failures")
        return {p: con.committed(TopicPartition(topic, p)) for p in sorted(con.partitions_for_topic(topic))}
    finally:
        con.close(autocommit=False)


def _attempts(job: Path) -> int:
    return (job / "job.log").read_text().count("=== attempt")


@pytest.mark.slow
def test_a_round_trains_in_a_launched_job_while_the_service_keeps_its_group(cfg, tmp_path, tiny_model):
    from trainer.service import TrainerService
    from trainer.train import content_hash

    c = _service_cfg(cfg, tmp_path, tiny_model)  # launcher = accelerate (the default): accelerate launch --cpu
    # shorter than the job: without polls during it kafka-python would leave the group (the setting's
    # minimum, 10 s, is for real deployments; the test needs a job that outlasts it)
    object.__setattr__(c.kafka, "max_poll_interval_ms", 2000)
    fs = [failure(i, margin=3.0 + i) for i in range(4)]
    _publish(c, fs)
    svc = TrainerService(c, poll_timeout_ms=200).start()
    try:
        generation = svc.loop.consumer._coordinator._generation.generation_id
        _wait(lambda: svc.poll_once() >= 0 and svc.rounds, timeout=120)
        for _ in range(5):  # a few more polls: a rebalance or a re-read would show here
            svc.poll_once()
        assert svc.loop.consumer._coordinator._generation.generation_id == generation  # no rebalance
        assert svc.loop.stats.records == 4 and svc.loop.stats.commit_failures == 0  # no re-read
        assert not svc.loop.consumer.paused()  # resumed after the job
    finally:
        svc.close()
    job = tmp_path / "ckpt/target/jobs/it1-sft"
    state = json.loads((job / "state.json").read_text())
    assert state["state"] == "done" and state["ended"] - state["started"] > 2.0  # it outlasted max_poll_interval_ms
    log = (job / "job.log").read_text()
    assert "accelerate.commands.launch" in log and "--cpu" in log and "progress: step 1/" in log and "eta" in log
    assert _attempts(job) == 1 and _load(job / "data/sft").num_rows == 4
    ck = [k for k in _read_all(c, "checkpoints", Checkpoint) if k.model == "target"]
    assert [(k.checkpoint, k.parent) for k in ck] == [("it1-sft", "base")]
    assert ck[0].metrics["truncated"] == 0 and ck[0].metrics["precision"] == "fp32"
    assert ck[0].uri == Path(ck[0].path).as_uri() and ck[0].content_hash == content_hash(ck[0].path)
    assert ck[0].path == str((tmp_path / "ckpt/target/it1-sft").resolve()) and Path(ck[0].path, "config.json").is_file()
    assert sum(v or 0 for v in _committed(c).values()) == 4  # committed once the round trained


@pytest.mark.slow
def test_a_failing_job_is_retried_then_dead_lettered_and_nothing_is_committed(cfg, tmp_path):
    from trainer.job import JobFailed
    from trainer.service import TrainerService

    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not a config")
    c = _service_cfg(cfg, tmp_path, broken, launcher="python", job_retries=1)
    _publish(c, [failure(i, margin=3.0 + i) for i in range(4)])
    svc = TrainerService(c, poll_timeout_ms=200).start()
    try:
        with pytest.raises(JobFailed) as got:
            _wait(lambda: svc.poll_once() < 0, timeout=120)
    finally:
        svc.close()
    job = tmp_path / "ckpt/target/jobs/it1-sft"
    assert _attempts(job) == 2 and json.loads((job / "state.json").read_text())["state"] == "failed"
    assert "failed 2 time(s)" in str(got.value) and "Traceback" in got.value.tail
    dead = [d for d in _read_all(c, "deadletter", DeadLetter) if d.stage == "trainer"]
    assert [d.source for d in dead] == ["trainer:target/it1-sft"] and "failed 2 time(s)" in dead[0].reason
    assert str(broken) in dead[0].raw or "config" in dead[0].raw  # the job's output tail
    assert not [k for k in _read_all(c, "checkpoints", Checkpoint) if k.model == "target"]
    assert all(v is None for v in _committed(c).values())  # the round did not train: its failures come again


@pytest.mark.slow
def test_a_service_killed_mid_job_and_restarted_does_not_train_the_round_twice(cfg, tmp_path, tiny_model):
    from trainer.job import running
    from trainer.service import TrainerService

    c = _service_cfg(cfg, tmp_path, tiny_model, accelerate_config=str(tmp_path / "accelerate.yaml"))
    (tmp_path / "accelerate.yaml").write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: 'NO'\n"
                                              "num_processes: 1\nnum_machines: 1\nmixed_precision: 'no'\n"
                                              "use_cpu: true\n")  # what `accelerate config` writes for one CPU
    (tmp_path / "arena.toml").write_text(f"""
[kafka]
bootstrap_servers = "{c.kafka.bootstrap_servers}"
topic_prefix = "{c.kafka.topic_prefix}"
session_timeout_ms = 1000
heartbeat_interval_ms = 300
[db]
url = "{c.db.url}"
[trainer]
output_dir = "{c.trainer.output_dir}"
stages = ["sft"]
batch_size = 4
per_device_batch_size = 4
accelerate_config = "{tmp_path / 'accelerate.yaml'}"
[[competitors]]
name = "target"
model = "{tiny_model}"
""")
    _publish(c, [failure(i, margin=3.0 + i) for i in range(4)])
    job = tmp_path / "ckpt/target/jobs/it1-sft"
    first = subprocess.Popen([sys.executable, "-m", "arena_cli", "train", "--max-idle", "120"], cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait(lambda: (job / "state.json").is_file() or first.poll() is not None, timeout=120)
        first.send_signal(signal.SIGKILL)  # mid-job: the service dies, its job goes on
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
    pid = json.loads((job / "state.json").read_text())["pid"]
    assert running(job)  # the job outlived its service (it starts in ~8 s here, trains in ~1 s)
    svc = TrainerService(c, poll_timeout_ms=200).start()
    try:
        _wait(lambda: svc.poll_once() >= 0 and svc.rounds, timeout=120)
    finally:
        svc.close()
    assert _attempts(job) == 1  # the restarted service took the job over instead of starting a second
    assert f"--config_file {tmp_path / 'accelerate.yaml'}" in (job / "job.log").read_text()
    state = json.loads((job / "state.json").read_text())
    assert state["pid"] == pid and state["state"] == "done"
    ck = [k for k in _read_all(c, "checkpoints", Checkpoint) if k.model == "target"]
    assert [k.checkpoint for k in ck] == ["it1-sft"] and svc.rounds[0].checkpoint.checkpoint == "it1-sft"


@pytest.mark.slow
def test_a_finished_job_whose_checkpoint_was_never_published_is_taken_over_not_retrained(cfg, tmp_path, tiny_model):
    from trainer.batches import sft_rows
    from trainer.job import JobRunner, prepare
    from trainer.service import TrainerService

    c = _service_cfg(cfg, tmp_path, tiny_model, launcher="python")
    # a service trained the round and died before publishing, after its failures' offsets were committed:
    # nothing is read again, the job directory alone says the round is done
    fs = [failure(i, margin=3.0 + i) for i in range(4)]
    job = prepare(c, stage="sft", model_path=str(tiny_model), iteration=1, target="target", parent="base",
                  rows=sft_rows(fs, 1), provenance={"target_checkpoint": "base", "threshold": 3.0})
    done = JobRunner(c).run(job)
    svc = TrainerService(c, poll_timeout_ms=200).start()  # knows the target from its job directory
    try:
        assert svc.tick() and [r.checkpoint.checkpoint for r in svc.rounds] == ["it1-sft"]
        assert not svc.tick()  # the next round (iteration 2) has no data yet: nothing more
    finally:
        svc.close()
    assert _attempts(job) == 1 and svc.rounds[0].used == 4
    ck = [k for k in _read_all(c, "checkpoints", Checkpoint) if k.model == "target"]
    assert [(k.checkpoint, k.content_hash) for k in ck] == [("it1-sft", done.checkpoint.content_hash)]


# ---------------------------------------------------------------------- checkpoint storage
@pytest.mark.slow
def test_a_checkpoint_outside_the_roots_is_dead_lettered_and_nothing_loads(cfg, tmp_path, tiny_model):
    import threading

    from arena_flywheel.config import CompetitorConfig
    from arena_flywheel.tinymodel import build_tiny_model
    from consumers.backends import create_backend
    from consumers.generate import GenerationPool
    from trainer.train import content_hash

    roots = tmp_path / "store"
    good = build_tiny_model(roots / "target" / "it1-sft", seed=7)
    outside = build_tiny_model(tmp_path / "elsewhere", seed=3)  # a real, loadable model: only its place is wrong
    (roots / "link").symlink_to(outside)  # inside by name, outside once resolved
    cfg.kafka.session_timeout_ms = 1000
    cfg.kafka.heartbeat_interval_ms = 300
    c = cfg.model_copy(deep=True)
    c.trainer.checkpoint_roots = [str(roots)]
    comp = CompetitorConfig(name="target", backend="transformers", model=str(tiny_model), device="cpu",
                            max_new_tokens=4, splits=["eval"])
    backend = create_backend(comp)
    hostile = {"evil1": dict(path=str(outside)), "evil2": dict(path=f"{roots}/../elsewhere"),
               "evil3": dict(path=str(roots / "link")), "evil4": dict(path=str(good), uri=outside.as_uri()),
               "evil5": dict(path=str(good), uri="s3://bucket/it1-sft"), "gone": dict(path=str(roots / "missing"))}
    pool = GenerationPool(c, comp, backend, log_every_s=0)
    stop = threading.Event()
    t = threading.Thread(target=pool.run, args=(stop,), daemon=True)
    t.start()
    try:
        for name, where in hostile.items():  # one at a time: of several arriving together the pool takes the last
            _publish(c, [Checkpoint(model="target", checkpoint=name, **where)])
            assert _wait(lambda: any(f"'{name}'" in d.reason for d in _read_all(c, "deadletter", DeadLetter)), 60)
        _publish(c, [Checkpoint(model="target", checkpoint="it1-sft", path=str(good), uri=good.as_uri(),
                                content_hash=content_hash(good))])
        assert _wait(lambda: pool.checkpoint == "it1-sft", 60)
    finally:
        stop.set()
        t.join(30)
    reasons = {n: next(d.reason for d in _read_all(c, "deadletter", DeadLetter) if f"'{n}'" in d.reason)
               for n in hostile}
    for n in ("evil1", "evil2", "evil3"):
        assert "outside trainer.checkpoint_roots" in reasons[n]
    assert "name different places" in reasons["evil4"] and "file://" in reasons["evil5"]
    assert "does not exist" in reasons["gone"]
    assert pool.counters.hot_plugs == 1 and backend.current_path == str(good)  # only the good one ever loaded


# ---------------------------------------------------------------------- a LoRA checkpoint reaches real serving
def _lora_server(tmp_path, runtime_lora: bool, base: str = "base"):
    """tests/lora_server.py in a process of its own: vLLM's documented runtime-LoRA routes (it is not vLLM)."""
    import os

    port_file = tmp_path / f"port-{runtime_lora}-{abs(hash(base))}"
    env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True" if runtime_lora else ""}
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("lora_server.py")), str(port_file), base],
                            env=env)
    assert _wait(lambda: port_file.is_file() or proc.poll() is not None, 30) and proc.poll() is None
    return proc, f"http://127.0.0.1:{port_file.read_text()}/v1"


def _adapter(path: Path) -> Path:
    from peft import LoraConfig

    LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM",
               base_model_name_or_path="base").save_pretrained(str(path))
    return path


@pytest.mark.slow
def test_a_lora_checkpoint_is_loaded_into_the_running_server_and_answered_under_its_name(tmp_path):
    from consumers.backends import BackendError, GenerationRequest, create_backend

    def ask(b):
        return b.generate([GenerationRequest(messages=[{"role": "user", "content": "hi"}], max_new_tokens=8)])[0]

    full = tmp_path / "ckpt" / "it2-sft"  # a full checkpoint, served by a server of its own
    full.mkdir(parents=True)
    servers = [_lora_server(tmp_path, runtime_lora=True), _lora_server(tmp_path, runtime_lora=False, base=str(full)),
               _lora_server(tmp_path, runtime_lora=False)]
    (_, url), (_, full_url), (_, no_flag_url) = servers
    try:
        b = create_backend({"backend": "openai", "model": "base", "base_url": url,
                            "options": {"runtime_lora": True, "checkpoint_urls": {"it2-sft": full_url}}})
        try:
            assert ask(b).text.startswith("base (base weights)")
            first = _adapter(tmp_path / "run1" / "it1-sft")
            b.load(str(first))
            assert ask(b).text == f"it1-sft ({first}) says: hi"
            again = _adapter(tmp_path / "run2" / "it1-sft")  # the same name re-trained: the server serves the new one
            b.load(str(again))
            assert ask(b).text == f"it1-sft ({again}) says: hi"
            b.load(str(full))  # the full checkpoint: its own server, asked for by its path
            assert ask(b).text == f"{full} (base weights) says: hi" and b.base_url == full_url
            b.load(str(first))  # an adapter again: back on the base model's server
            assert ask(b).text == f"it1-sft ({first}) says: hi" and b.base_url == url
            other = tmp_path / "it3-sft"  # a full checkpoint with no server configured: asked for by its path
            other.mkdir()
            b.load(str(other))
            assert b.model == str(other) and ask(b).error  # the server does not have it: the pool dead-letters
        finally:
            b.close()
        b = create_backend({"backend": "openai", "model": "base", "base_url": no_flag_url,
                            "options": {"runtime_lora": True}})
        try:
            with pytest.raises(BackendError, match="VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"):
                b.load(str(first))
            assert b.model == "base"  # still serving what it served
        finally:
            b.close()
    finally:
        for proc, _ in servers:
            proc.kill()
            proc.wait(10)
