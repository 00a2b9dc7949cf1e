"""One flywheel iteration: the configured stages (sft -> dpo -> reward -> rl) with TRL, each from the
previous stage's output, each saved as a checkpoint and announced with a Checkpoint event.

What a checkpoint directory holds (what the generation pool's `load(path)` expects, docs/models.md):
- full fine-tuning (default): a complete model dir (config.json, weights, tokenizer with chat template);
- `trainer.lora = true`: a PEFT adapter dir (adapter_config.json naming the ORIGINAL base model, plus the
  tokenizer). Every stage and iteration keeps training the same adapter, so each adapter applies to the
  pool's base model, which is how the transformers and vLLM backends apply adapters.
The reward stage trains a sequence-classification model (not a policy): its checkpoint is saved under
it<N>-reward and used by the rl stage, but it is not announced to the pool (it cannot answer prompts).
"""
from __future__ import annotations

import logging
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arena_flywheel.config import Config, ConfigError
from arena_flywheel.events import Checkpoint, Failure

from .batches import dataset_hash, dpo_rows, reward_rows, rl_prompts, sft_rows, texts_from_battles

log = logging.getLogger(__name__)

MAX_LENGTH = 256            # tokens per training sequence: the flywheel's tasks are short; raise for real models
MAX_COMPLETION_LENGTH = 32  # rl: tokens the policy writes per prompt
MIN_REWARD_PAIRS = 4        # fewer preference pairs cannot train a reward model worth optimising against


class StageSkipped(Exception):
    """A stage that cannot run honestly on the data it was given (the reason says why)."""


@dataclass
class IterationResult:
    checkpoints: list[Checkpoint]
    used: int
    metrics: dict[str, Any] = field(default_factory=dict)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _stage_args(config_cls, cfg: Config, stage: str, out: Path, n_rows: int, **specific):
    """The TRL config of a stage: the trainer section's settings, the stage's own, then the user's
    trainer.stage_args for that stage, which win."""
    t = cfg.trainer
    kw: dict[str, Any] = dict(
        output_dir=str(out / "_trainer"), per_device_train_batch_size=min(t.per_device_batch_size, max(1, n_rows)),
        learning_rate=t.learning_rate, num_train_epochs=t.epochs, lr_scheduler_type="constant",
        use_cpu=not _cuda(), report_to=[], save_strategy="no", logging_steps=1, seed=t.seed,
        disable_tqdm=True, dataloader_num_workers=0, bf16=False)
    kw.update(specific)
    kw.update(t.stage_args.get(stage, {}))
    try:
        return config_cls(**kw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"trainer.stage_args.{stage}: {exc} (keys are {config_cls.__name__} arguments, "
                         f"e.g. num_train_epochs = 2)") from None


def quiet(trainer):
    """Losses go to the ledger and the returned metrics; the per-step dict printer is only noise."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def _is_adapter(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def _base_of_adapter(path: str | Path) -> str:
    import json

    return json.loads((Path(path) / "adapter_config.json").read_text())["base_model_name_or_path"]


def _load_policy(cfg: Config, path: str):
    """The model to train: full weights, or (LoRA) the adapter made trainable on its base."""
    from transformers import AutoModelForCausalLM

    if _is_adapter(path):
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(_base_of_adapter(path))
        return PeftModel.from_pretrained(base, path, is_trainable=True)
    model = AutoModelForCausalLM.from_pretrained(path)
    if cfg.trainer.lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                                                 target_modules="all-linear"))
    return model


def _save(model, tok, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    shutil.rmtree(out / "_trainer", ignore_errors=True)


def _train_loss(trainer, train_out) -> float | None:
    loss = getattr(train_out, "training_loss", None)
    if loss is None or (isinstance(loss, float) and math.isnan(loss)):
        hist = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        loss = sum(hist) / len(hist) if hist else None
    return float(loss) if loss is not None else None


# ---------------------------------------------------------------------- stages
def run_sft(cfg, start: str, rows, out: Path, tok):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    turns = completion_rows(rows)
    args = _stage_args(SFTConfig, cfg, "sft", out, len(turns), max_length=MAX_LENGTH)
    trainer = quiet(SFTTrainer(model=_load_policy(cfg, start), args=args, processing_class=tok,
                                train_dataset=Dataset.from_list(turns)))
    res = trainer.train()
    _save(trainer.model, tok, out)
    return _train_loss(trainer, res)


def completion_rows(rows) -> list[dict]:
    """Conversations -> prompt/completion rows, one per assistant turn (its conversation so far as the
    prompt). TRL then puts the loss on the answers only, every turn of a multi-turn conversation
    included; the "messages" form would need {% generation %} markers in the model's chat template."""
    out = []
    for r in rows:
        msgs = r["messages"]
        for k, m in enumerate(msgs):
            if m["role"] == "assistant" and k > 0:
                out.append({"prompt": msgs[:k], "completion": [m]})
    return out


def run_dpo(cfg, start: str, rows, out: Path, tok):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = _stage_args(DPOConfig, cfg, "dpo", out, len(rows), max_length=MAX_LENGTH, beta=0.1)
    # reference = the stage's starting model (the paper's DPO starts from the SFT model); with LoRA
    # TRL uses the policy with its adapter disabled.
    trainer = quiet(DPOTrainer(model=_load_policy(cfg, start), args=args, processing_class=tok,
                                train_dataset=Dataset.from_list(_trl_columns(rows, ("prompt", "chosen", "rejected")))))
    res = trainer.train()
    _save(trainer.model, tok, out)
    return _train_loss(trainer, res)


def run_reward(cfg, start: str, rows, out: Path, tok):
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    if len(rows) < MIN_REWARD_PAIRS:
        raise StageSkipped(f"only {len(rows)} preference pairs with a winner (need {MIN_REWARD_PAIRS}) "
                           f"to train a reward model")
    base = _base_of_adapter(start) if _is_adapter(start) else start
    # The reward model starts from the current policy weights (with LoRA: the base) plus a scalar head,
    # the usual RLHF recipe (InstructGPT); its data are battle outcomes, as in the paper.
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    args = _stage_args(RewardConfig, cfg, "reward", out, len(rows), max_length=MAX_LENGTH)
    trainer = quiet(RewardTrainer(model=model, args=args, processing_class=tok,
                                   train_dataset=Dataset.from_list(_trl_columns(rows, ("prompt", "chosen", "rejected")))))
    res = trainer.train()
    _save(trainer.model, tok, out)
    return _train_loss(trainer, res)


def run_rl(cfg, start: str, rows, out: Path, tok, reward_path: str | None):
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification

    if not reward_path:
        raise StageSkipped("no reward model: the rl stage needs the reward stage before it in trainer.stages "
                           "(and enough verdicts with a winner to train it)")
    if cfg.trainer.rl_algorithm == "grpo":
        from trl import GRPOConfig as RLConfig, GRPOTrainer as RLTrainer
    else:
        from trl import RLOOConfig as RLConfig, RLOOTrainer as RLTrainer

    n_gen = 2  # smallest group that gives a leave-one-out / group baseline
    per_dev = max(n_gen, (min(cfg.trainer.per_device_batch_size, max(1, len(rows))) // n_gen) * n_gen)
    args = _stage_args(RLConfig, cfg, "rl", out, len(rows), per_device_train_batch_size=per_dev,
                       num_generations=n_gen, max_completion_length=MAX_COMPLETION_LENGTH, beta=0.0)
    reward_model = AutoModelForSequenceClassification.from_pretrained(reward_path, num_labels=1)
    reward_model.config.pad_token_id = tok.pad_token_id
    trainer = quiet(RLTrainer(model=_load_policy(cfg, start), reward_funcs=reward_model, args=args,
                               processing_class=tok, reward_processing_classes=tok,
                               train_dataset=Dataset.from_list(_trl_columns(rows, ("prompt",)))))
    res = trainer.train()
    _save(trainer.model, tok, out)
    # RLOO/GRPO losses hover near 0 by construction (advantages are centred): the reward says more
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    return _train_loss(trainer, res), (sum(rewards) / len(rewards) if rewards else None)


def _trl_columns(rows, keep) -> list[dict]:
    # Provenance columns stay in the rows we hash and log; TRL gets only what it reads.
    return [{k: r[k] for k in keep} for r in rows]


# ---------------------------------------------------------------------- the iteration
def train_iteration(cfg: Config, *, model_path: str, failures: list[Failure], iteration: int, target: str,
                    parent: str = "base", verdicts=None, publisher=None, battles=None) -> IterationResult:
    """Run cfg.trainer.stages on `failures`, starting from `model_path`. Returns the policy checkpoints
    (one per policy stage, announced through `publisher` as soon as each is saved) and per-stage metrics.

    `verdicts` (+ `battles` with the answer texts) feed the reward stage: pairs from every battle with a
    winner. Without battles the reward model learns from the failures' own pairs (winner vs target).
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoTokenizer

    stages = list(cfg.trainer.stages)
    root = Path(cfg.trainer.output_dir) / target
    root.mkdir(parents=True, exist_ok=True)
    tok_path = _base_of_adapter(model_path) if _is_adapter(model_path) and not (
        Path(model_path) / "tokenizer_config.json").is_file() else model_path
    tok = AutoTokenizer.from_pretrained(tok_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not tok.chat_template:
        raise ValueError(f"{tok_path}: the tokenizer has no chat template; the trainer formats conversations with it")

    data = {"sft": sft_rows(failures, iteration), "dpo": dpo_rows(failures, iteration),
            "rl": rl_prompts(failures, iteration)}
    if "reward" in stages:
        rw = []
        if verdicts is not None and battles is not None:
            msgs, ans = texts_from_battles(battles)
            rw = reward_rows(verdicts, iteration, msgs, ans)
        data["reward"] = rw or dpo_rows(failures, iteration)

    current, current_name = model_path, parent
    reward_path: str | None = None
    checkpoints: list[Checkpoint] = []
    metrics: dict[str, Any] = {"stages": {}}
    for stage in stages:
        rows = data[stage]
        name = f"it{iteration}-{stage}"
        out = root / name
        info: dict[str, Any] = {"examples": len(rows), "failures_used": len(failures)}
        if not rows:
            info["skipped"] = f"no {stage} examples in {len(failures)} failures"
            log.warning("iteration %d: %s stage skipped: %s", iteration, stage, info["skipped"])
            metrics["stages"][stage] = info
            continue
        try:
            if stage == "sft":
                loss = run_sft(cfg, current, rows, out, tok)
            elif stage == "dpo":
                loss = run_dpo(cfg, current, rows, out, tok)
            elif stage == "reward":
                loss = run_reward(cfg, current, rows, out, tok)
            else:
                loss, info["mean_reward"] = run_rl(cfg, current, rows, out, tok, reward_path)
        except StageSkipped as exc:
            info["skipped"] = str(exc)
            log.warning("iteration %d: %s stage skipped: %s", iteration, stage, exc)
            metrics["stages"][stage] = info
            continue
        info["train_loss"] = loss
        info["path"] = str(out.resolve())
        info["dataset_hash"] = dataset_hash(rows)
        metrics["stages"][stage] = info
        if stage == "reward":
            reward_path = str(out.resolve())
            continue  # a scoring model, not a policy: the pools cannot serve it
        ev = Checkpoint(model=target, checkpoint=name, path=str(out.resolve()), iteration=iteration, stage=stage,
                        parent=current_name, dataset_hash=info["dataset_hash"],
                        metrics={"train_loss": loss, "failures_used": len(failures), "examples": len(rows),
                                 # what trained it, so a restarted service can rebuild trainer.accumulate
                                 "failure_ids": sorted(f.id for f in failures),
                                 "algorithm": cfg.trainer.rl_algorithm if stage == "rl" else stage,
                                 "lora": cfg.trainer.lora,
                                 **({"mean_reward": info.get("mean_reward")} if stage == "rl" else {})})
        checkpoints.append(ev)
        if publisher is not None:
            publisher.send(ev)
            publisher.flush()
        current, current_name = str(out.resolve()), name
    last = checkpoints[-1].metrics if checkpoints else {}
    metrics.update(train_loss=last.get("train_loss"), failures_used=len(failures))
    return IterationResult(checkpoints=checkpoints, used=len(failures) if checkpoints else 0, metrics=metrics)
