"""The method's stages on a slice (issue 18): DPO pairs over every battle model's answers, the rl stage's reward
model and its KL leash, and `train_stage` for sft, dpo and rl publishing loadable checkpoints.

A slice is built as the arena builds it: train instructions from producers/tasks.py (each with its reference),
the target's current checkpoint and three opponents answering each one, the target battling every opponent,
and the real reference judge judging every battle in two position-swapped games (score-sum, mean: 1-10).
"""
from __future__ import annotations

import random

import pytest

from arena_flywheel.config import load_config
from arena_flywheel.events import Battle, Contestant, Failure, JudgeInfo, Message, Verdict
from consumers.judging.policies import score_sum
from consumers.judging.protocol import play_games
from consumers.judging.reference import reference_judge, reference_score
from producers import tasks
from trainer.batches import dpo_pairs, reward_rows, rl_prompts, sft_rows, texts_from_battles

JUDGE = JudgeInfo(backend="reference", template_id="reference-v1", template_hash="ref-rule")
TARGET = ("target", "it1-sft")
# each opponent's chance of answering correctly; a wrong answer is the model's typical mistake
OPPONENTS = {"novice": 0.15, "solid": 0.6, "ace": 0.9}
TARGET_SKILL = 0.4


def _words(ins) -> list[str]:
    return ins.messages[-1].content.split(": ", 1)[1].split()


def hallucinated(ins, rng: random.Random) -> str:
    """Words the instruction does not contain (what a weak model writes)."""
    others = [w for w in tasks.WORDS if w not in _words(ins)]
    return " ".join(rng.sample(others, len(ins.reference.split())))


def answer(model: str, skill: float, ins, rng: random.Random) -> str:
    if rng.random() < skill:
        return ins.reference
    words = _words(ins)
    if model == "novice":
        return hallucinated(ins, rng)
    if model == "solid":  # one word wrong
        ref = ins.reference.split()
        ref[rng.randrange(len(ref))] = rng.choice([w for w in tasks.WORDS if w not in words])
        return " ".join(ref)
    return " ".join(words) if " ".join(words) != ins.reference else " ".join(reversed(words))  # the order unchanged


def make_battle(ins, a: tuple[str, str, str], b: tuple[str, str, str]) -> Battle:
    """a, b = (model, checkpoint, answer); sides in canonical order (sorted response ids), as the arena pairs."""
    sides = sorted([Contestant(response_id=f"r:{m}:{ck}:{ins.id}", model=m, checkpoint=ck, answers=[text])
                    for m, ck, text in (a, b)], key=lambda c: c.response_id)
    return Battle(instruction_id=ins.id, messages=ins.messages, reference=ins.reference, references=ins.references,
                  category=ins.category, a=sides[0], b=sides[1])


def judge(b: Battle) -> Verdict:
    """The real reference judge, two position-swapped games, score-sum (mean of the games: 1-10)."""
    games = play_games(b, reference_judge)
    winner, sa, sb, margin = score_sum(games, combine="mean")
    return Verdict(battle_id=b.id, instruction_id=b.instruction_id, competitor_a=b.a.competitor,
                   competitor_b=b.b.competitor, model_a=b.a.model, model_b=b.b.model, checkpoint_a=b.a.checkpoint,
                   checkpoint_b=b.b.checkpoint, games=games, score_a=sa, score_b=sb, winner=winner, margin=margin,
                   judge=JUDGE)


def arena_slice(n: int, seed: int = 0, families=("reverse", "sort")):
    """(instructions, battles, verdicts, answers[instruction id][competitor]) of a slice of n instructions."""
    rng = random.Random(seed)
    inss = list(tasks.generate(n, seed=seed, families=families))
    battles, answers = [], {}
    for ins in inss:
        mine = (*TARGET, answer("target", TARGET_SKILL, ins, rng))
        answers[ins.id] = {"target@it1-sft": mine[2]}
        for model, skill in OPPONENTS.items():
            theirs = (model, "base", answer(model, skill, ins, rng))
            answers[ins.id][model] = theirs[2]
            battles.append(make_battle(ins, mine, theirs))
    return inss, battles, [judge(b) for b in battles], answers


def training_cfg(tmp_path, **trainer):
    c = load_config(env={}, overrides={"trainer.output_dir": str(tmp_path / "ckpt"),
                                       "trainer.per_device_batch_size": 8})
    for k, v in trainer.items():
        setattr(c.trainer, k, v)
    return c


@pytest.fixture(scope="module")
def task_model(tmp_path_factory):
    """A tiny Llama whose tokenizer was trained on the task family's text (a task word is one token)."""
    from arena_flywheel.tinymodel import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("task-model"), corpus=tasks.corpus()))


# ---------------------------------------------------------------------- dpo pairs
def test_dpo_pairs_come_from_every_battle_model_and_drop_small_gaps():
    inss, battles, verdicts, answers = arena_slice(40)
    bad = Verdict(battle_id=battles[0].id, instruction_id=battles[0].instruction_id,
                  competitor_a=battles[0].a.competitor, competitor_b=battles[0].b.competitor, model_a="x", model_b="y",
                  winner="invalid", judge=JUDGE)  # no scores: skipped, never a 0
    threshold = 3.0
    rows, counts = dpo_pairs(battles, verdicts + verdicts[:5] + [bad], threshold, iteration=2)  # duplicates once

    # the oracle: the reference judge scores each answer on its own, so its judged score is its reference score
    expected = {}
    for ins in inss:
        scored = {c: reference_score(a, ins.references) for c, a in answers[ins.id].items()}
        best, worst = max(scored.values()), min(scored.values())
        if best - worst >= threshold:
            expected[ins.id] = (best, worst)
    assert 0 < len(expected) < len(inss)  # some instructions' gaps are below the threshold: dropped
    assert {r["instruction_id"] for r in rows} == set(expected)
    by_id = {ins.id: ins for ins in inss}
    for r in rows:
        ins, best_worst = by_id[r["instruction_id"]], expected[r["instruction_id"]]
        said = answers[ins.id]
        assert said[r["chosen_model"]] == r["chosen"][0]["content"]
        assert said[r["rejected_model"]] == r["rejected"][0]["content"]
        assert (reference_score(said[r["chosen_model"]], ins.references),
                reference_score(said[r["rejected_model"]], ins.references)) == best_worst
        assert r["gap"] == pytest.approx(best_worst[0] - best_worst[1]) and r["gap"] >= threshold
        assert r["prompt"] == [{"role": "user", "content": ins.messages[0].content}]
        assert len(r["battle_ids"]) >= 1 and len(r["verdict_ids"]) == len(r["battle_ids"])
        assert r["judge"] == JUDGE.judge_id and r["template_hash"] == "ref-rule" and r["iteration"] == 2
    # chosen and rejected come from several models, the target's own checkpoint included (Table 7's shape)
    assert len(counts["chosen"]) > 1 and len(counts["rejected"]) > 1
    assert "target@it1-sft" in counts["chosen"] or "target@it1-sft" in counts["rejected"]
    for side in ("chosen", "rejected"):
        assert sum(counts[side].values()) == len(rows)
        assert counts[side] == {m: sum(r[f"{side}_model"] == m for r in rows) for m in counts[side]}
    print("Table 7 counts (40 instructions, gap >= 3):", counts)

    # a higher threshold keeps a subset; a label policy's verdicts (no scores) give no pairs at all
    fewer, _ = dpo_pairs(battles, verdicts, 8.0)
    assert {r["instruction_id"] for r in fewer} < {r["instruction_id"] for r in rows}
    unscored = [v.model_copy(update={"score_a": None, "score_b": None}) for v in verdicts]
    assert dpo_pairs(battles, unscored, 0.0) == ([], {"chosen": {}, "rejected": {}})


def test_dpo_pair_of_a_multi_turn_instruction_and_rl_prompts():
    msgs = [Message(role="system", content="Be brief."), Message(role="user", content="Add: 1 + 2"),
            Message(role="user", content="Now add 3")]
    ins_id = "multi"

    def b(m1, a1, m2, a2):
        return Battle(instruction_id=ins_id, messages=msgs,
                      a=Contestant(response_id=f"r{m1}", model=m1, answers=a1),
                      b=Contestant(response_id=f"r{m2}", model=m2, answers=a2))

    battles = [b("ace", ["3", "6"], "target", ["3", "7"]), b("novice", ["4", "9"], "target", ["3", "7"])]
    scores = [(9.0, 4.0), (2.0, 6.0)]  # ace 9, target (4 + 6) / 2 = 5, novice 2
    verdicts = [Verdict(battle_id=x.id, instruction_id=ins_id, competitor_a=x.a.competitor,
                        competitor_b=x.b.competitor, model_a=x.a.model, model_b=x.b.model, score_a=sa, score_b=sb,
                        winner="model_a" if sa > sb else "model_b", margin=abs(sa - sb), judge=JUDGE)
                for x, (sa, sb) in zip(battles, scores)]
    (row,), counts = dpo_pairs(battles, verdicts, 1.0)
    assert row["prompt"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Add: 1 + 2"},
                             {"role": "assistant", "content": "3"}, {"role": "user", "content": "Now add 3"}]
    assert row["chosen"] == [{"role": "assistant", "content": "6"}]
    assert row["rejected"] == [{"role": "assistant", "content": "9"}]
    assert row["gap"] == 7.0 and counts == {"chosen": {"ace": 1}, "rejected": {"novice": 1}}
    assert row["battle_ids"] == sorted(x.id for x in battles)
    (rl,) = rl_prompts(battles + battles[:1], 3, verdicts)  # one prompt per instruction
    assert rl["prompt"] == row["prompt"] and rl["iteration"] == 3 and len(rl["battle_ids"]) == 2


# ---------------------------------------------------------------------- the rl stage
@pytest.mark.slow
def test_reward_model_ranks_held_out_judged_winners_above_losers(tmp_path, task_model):
    """Judged battles where the correct answer (the reference) beats a weak model's answer made of words the
    instruction does not contain: trained on 320 instructions' battles, the reward model ranks the winner above
    the loser on 80 held-out instructions' battles far better than chance (measured 0.79-0.95 over data seeds;
    0.65 on 80 pairs is > 2.6 standard deviations above a coin)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from trainer.train import load_tokenizer, run_reward

    rng = random.Random(1)
    inss = list(tasks.generate(400, seed=1, families=("reverse", "sort")))
    battles = [make_battle(ins, ("ace", "base", ins.reference), ("novice", "base", hallucinated(ins, rng)))
               for ins in inss]
    verdicts = [judge(b) for b in battles]
    assert all(v.winner != "tie" for v in verdicts)
    train, held_out = slice(0, 320), slice(320, 400)
    rows = reward_rows(verdicts[train], 1, *texts_from_battles(battles[train]))
    test = reward_rows(verdicts[held_out], 1, *texts_from_battles(battles[held_out]))
    assert len(rows) == 320 and len(test) == 80
    c = training_cfg(tmp_path, epochs=8.0, learning_rate=2e-3)
    tok = load_tokenizer(task_model)
    run_reward(c, task_model, rows, tmp_path / "rm", tok)
    rm = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()

    def score(prompt, completion):
        ids = tok(tok.apply_chat_template(prompt + completion, tokenize=False), return_tensors="pt",
                  add_special_tokens=False)
        with torch.no_grad():
            return float(rm(**ids).logits[0, 0])

    acc = sum(score(r["prompt"], r["chosen"]) > score(r["prompt"], r["rejected"]) for r in test) / len(test)
    print(f"reward model: held-out accuracy {acc:.3f} on {len(test)} pairs")
    assert acc >= 0.65, acc


@pytest.mark.slow
def test_rl_kl_to_the_reference_is_positive_and_beta_leashes_it(tmp_path, task_model):
    """Same slice, same seed, two KL coefficients: the policy drifts from its reference (mean KL > 0), and
    less with a large beta (measured with RLOO: 0.105 vs 0.036, 0.109 vs 0.043, 0.116 vs 0.051 over seeds)."""
    from trainer.train import train_stage

    _, battles, verdicts, _ = arena_slice(64, seed=3)
    prompts = rl_prompts(battles, 1, verdicts)
    pairs = reward_rows(verdicts, 1, *texts_from_battles(battles))
    assert len(prompts) == 64 and len(pairs) >= 32
    kl = {}
    for beta in (0.01, 1.0):
        c = training_cfg(tmp_path / str(beta), learning_rate=3e-3, rl_beta=beta, rl_num_generations=4,
                         rl_max_completion_length=16, stage_args={"reward": {"learning_rate": 2e-3}})
        res = train_stage(c, stage="rl", model_path=task_model, iteration=1, target="target", parent="base",
                          rows=prompts, reward_rows=pairs)
        m = res.checkpoint.metrics
        assert m["beta"] == beta and m["algorithm"] == "rloo" and m["reward_pairs"] == len(pairs)
        kl[beta] = m["mean_kl"]
        print(f"beta {beta}: mean KL {m['mean_kl']:.4f}, mean reward {m['mean_reward']:.3f}, {m['rl_steps']} steps, "
              f"{m['train_s']:.1f} s")
    assert kl[0.01] > 0 and kl[1.0] > 0
    assert kl[1.0] < 0.8 * kl[0.01], kl


# ---------------------------------------------------------------------- train_stage
def _failures_of(inss, battles, verdicts) -> list[Failure]:
    """The target's losses to the ace (what the stream records as failures)."""
    out = []
    for b, v in zip(battles, verdicts):
        target_side = "a" if b.a.model == "target" else "b"
        other = b.b if target_side == "a" else b.a
        lost = v.winner == ("model_b" if target_side == "a" else "model_a")
        if other.model == "ace" and lost:
            mine = b.a if target_side == "a" else b.b
            out.append(Failure(instruction_id=b.instruction_id, target="target", target_checkpoint="base",
                               messages=b.messages, target_answers=mine.answers, winner_model="ace",
                               winner_answers=other.answers, margin=v.margin, battle_ids=[b.id],
                               verdict_ids=[v.id], judge=JUDGE))
    return out


@pytest.mark.slow
def test_train_stage_sft_dpo_rl_publish_loadable_checkpoints(cfg, tmp_path, task_model):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from arena_flywheel.kafka import Publisher, read_checkpoints
    from trainer.train import train_stage

    inss, battles, verdicts, _ = arena_slice(12, seed=4)
    failures = _failures_of(inss, battles, verdicts)
    c = cfg.model_copy(deep=True)
    c.trainer.output_dir, c.trainer.per_device_batch_size = str(tmp_path / "ckpt"), 4
    c.trainer.rl_algorithm, c.trainer.rl_max_completion_length = "grpo", 8
    sft = sft_rows(failures, 1)
    dpo, counts = dpo_pairs(battles, verdicts, 2.0, 1)
    rl = rl_prompts(battles, 1, verdicts)
    reward = reward_rows(verdicts, 1, *texts_from_battles(battles))
    assert sft and dpo and len(reward) >= 4
    results, path, parent = [], task_model, "base"
    with Publisher(c) as pub:
        for stage, rows in (("sft", sft), ("dpo", dpo), ("rl", rl)):
            res = train_stage(c, stage=stage, model_path=path, iteration=1, target="target", parent=parent,
                              rows=rows, publisher=pub, reward_rows=reward if stage == "rl" else None,
                              provenance={"threshold": 2.0})
            assert res.skipped is None and res.checkpoint is not None
            results.append(res)
            path, parent = res.checkpoint.path, res.checkpoint.checkpoint
            print(f"{stage}: {len(rows)} rows, {res.metrics['train_s']:.1f} s")
        # too little data: skipped with the reason, nothing trained or published
        skipped = train_stage(c, stage="dpo", model_path=path, iteration=2, target="target", parent=parent, rows=[],
                              publisher=pub)
        assert skipped.checkpoint is None and "pairs" in skipped.skipped
        few = train_stage(c, stage="rl", model_path=path, iteration=2, target="target", parent=parent, rows=rl,
                          publisher=pub, reward_rows=reward[:2])
        assert few.checkpoint is None and "reward model" in few.skipped
    published = [k for k in read_checkpoints(c) if k.model == "target"]
    assert [(k.checkpoint, k.stage, k.parent, k.iteration) for k in published] == [
        ("it1-sft", "sft", "base", 1), ("it1-dpo", "dpo", "it1-sft", 1), ("it1-rl", "rl", "it1-dpo", 1)]
    assert [k.id for k in published] == [r.checkpoint.id for r in results]
    for k in published:
        AutoModelForCausalLM.from_pretrained(k.path)
        assert isinstance(k.metrics["train_loss"], float) and k.dataset_hash and k.metrics["threshold"] == 2.0
    sft_ck, dpo_ck, rl_ck = (k.metrics for k in published)
    assert sft_ck["failure_ids"] == sorted(f.id for f in failures) and sft_ck["examples"] == len(sft)
    assert dpo_ck["pairs"] == counts and dpo_ck["examples"] == len(dpo)
    assert rl_ck["algorithm"] == "grpo" and rl_ck["reward_pairs"] == len(reward) and rl_ck["examples"] == len(rl)
    assert isinstance(rl_ck["mean_reward"], float) and rl_ck["mean_kl"] is not None
    assert rl_ck["reward_model"].endswith("it1-rl-reward")  # a scoring model, never announced
    AutoModelForSequenceClassification.from_pretrained(rl_ck["reward_model"])


@pytest.mark.slow
def test_the_service_closes_dpo_then_rl_rounds_on_the_slices_in_the_ledger(cfg, tmp_path, task_model, capsys):
    """The production path: after an sft round, the next round is dpo on the slice the sft checkpoint battled,
    read from the SQL ledger, with pairs from several battle models (arena iterations --pairs), then rl on the
    next slice; each round's checkpoint is announced with its stage, parent and iteration."""
    from arena_cli.main import main
    from arena_flywheel.events import Checkpoint
    from arena_flywheel.kafka import Publisher, read_checkpoints
    from arena_flywheel.store import LedgerStore
    from trainer.service import TrainerService

    cfg.trainer.stages = ["sft", "dpo", "rl"]
    cfg.trainer.output_dir = str(tmp_path / "ckpt")
    cfg.trainer.per_device_batch_size = 8
    cfg.trainer.rl_max_completion_length = 8
    cfg.arena.targets = ["target"]
    cfg.competitors = [load_config(env={}, overrides={"competitors": [{"name": "target", "model": task_model}]})
                       .competitors[0]]
    sft = Checkpoint(model="target", checkpoint="it1-sft", path=str(task_model), iteration=1, stage="sft",
                     parent="base")
    with Publisher(cfg) as pub:
        pub.send(sft)
        pub.flush()
    _, battles, verdicts, _ = arena_slice(40, seed=3)
    with LedgerStore(cfg.db.url) as store:
        store.write(battles + verdicts)
    svc = TrainerService(cfg)
    try:
        rnd = svc.close_now("target", iteration=1)
        assert (rnd.iteration, rnd.stage, rnd.slice) == (1, "dpo", len({b.instruction_id for b in battles}))
        assert rnd.checkpoint is not None
        dpo = rnd.checkpoint
        assert (dpo.checkpoint, dpo.parent, dpo.stage) == ("it1-dpo", "it1-sft", "dpo")
        pairs = dpo.metrics["pairs"]
        assert len(pairs["chosen"]) >= 2 and len(pairs["rejected"]) >= 2  # several battle models on each side
        assert sum(pairs["chosen"].values()) == sum(pairs["rejected"].values()) == rnd.used > 0
        # the next slice, battled by the dpo checkpoint: the rl round
        _, battles2, verdicts2, _ = arena_slice(40, seed=4)
        renamed = [b.model_copy(update={"id": "", "a": _at(b.a, "it1-dpo"), "b": _at(b.b, "it1-dpo")})
                   for b in battles2]
        renamed = [Battle.model_validate(b.model_dump(exclude={"id"})) for b in renamed]
        with LedgerStore(cfg.db.url) as store:
            store.write(renamed + [judge(b) for b in renamed])
        rnd2 = svc.close_now("target", iteration=1)
        assert (rnd2.stage, rnd2.slice) == ("rl", len({b.instruction_id for b in renamed}))
        assert rnd2.checkpoint is not None
        assert rnd2.checkpoint.parent == "it1-dpo" and rnd2.checkpoint.metrics["mean_kl"] > 0
    finally:
        svc.close()
    assert [c.checkpoint for c in read_checkpoints(cfg)] == ["it1-sft", "it1-dpo", "it1-rl"]
    with LedgerStore(cfg.db.url) as store:
        store.write(read_checkpoints(cfg))
    import os

    os.environ["ARENA_DB_URL"] = cfg.db.url
    try:
        assert main(["iterations", "--pairs"]) == 0
    finally:
        os.environ.pop("ARENA_DB_URL")
    out = capsys.readouterr().out
    assert "target@it1-dpo" in out and "chosen" in out and "ace" in out


def _at(c: Contestant, checkpoint: str) -> Contestant:
    """The target's side moved to `checkpoint` (the next slice is battled by the newest checkpoint)."""
    if c.model != "target":
        return c
    return c.model_copy(update={"checkpoint": checkpoint, "response_id": c.response_id.replace(c.checkpoint, checkpoint)})
