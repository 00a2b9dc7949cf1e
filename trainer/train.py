"""One training round: one stage (sft, dpo or rl) with TRL on the rows of its own slice, from the target's
newest checkpoint, saved as a checkpoint `it<N>-<stage>` and announced with a Checkpoint event
(`train_stage`; trainer/service.py gathers each round's slice and calls it).

- sft: SFTTrainer on the failures' conversations (the loss on the winners' answers, every turn).
- dpo: DPOTrainer on chosen/rejected pairs; the reference is the stage's starting model.
- rl: first a reward model (RewardTrainer, a scalar head on the starting weights) on the slice's judged
  battles, saved as it<N>-rl-reward (a scoring model, not a policy: never announced to the pool), then
  RLOO or GRPO (trainer.rl_algorithm; TRL has no PPOTrainer) against it, with a KL penalty
  trainer.rl_beta to the stage's starting model. The mean reward and mean KL of TRL's logs are recorded.

What a checkpoint directory holds (what the generation pool's `load(path)` expects, docs/models.md):
- full fine-tuning (default): a complete model dir (config.json, weights, tokenizer with chat template);
- `trainer.lora = true`: a PEFT adapter dir (adapter_config.json naming the ORIGINAL base model, plus the
  tokenizer). Every stage and iteration keeps training the same adapter, so each adapter applies to the
  pool's base model, which is how the transformers and vLLM backends apply adapters.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arena_flywheel.config import Config, ConfigError
from arena_flywheel.errors import InputError
from arena_flywheel.events import Checkpoint

from .batches import dataset_hash

log = logging.getLogger(__name__)

STAGES = ("sft", "dpo", "rl")
MAX_LENGTH = 256            # tokens per training sequence on CPU (tiny models, short tasks); trainer.max_length
GPU_MAX_LENGTH = 4096       # ... and with CUDA
MIN_ROWS = {"sft": 1, "dpo": 1, "rl": 1}  # examples (sft: conversations, dpo: pairs, rl: prompts)
MIN_REWARD_PAIRS = 4        # fewer preference pairs cannot train a reward model worth optimising against


@dataclass
class StageResult:
    """What a round made: its checkpoint (None when skipped), its metrics (those of the Checkpoint event,
    plus path and dataset_hash), and why it was skipped (None when it trained)."""
    checkpoint: Checkpoint | None
    metrics: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def precision(cfg: Config) -> str:
    """bf16, fp16 or fp32: trainer.precision, where "auto" is bf16 on a CUDA device that supports it, else fp32."""
    p = cfg.trainer.precision
    if p == "auto":
        return "bf16" if _bf16() else "fp32"
    return p if _cuda() else "fp32"  # CPU trains in fp32 whatever the file says (mixed precision needs CUDA)


def max_length(cfg: Config) -> int:
    return cfg.trainer.max_length or (GPU_MAX_LENGTH if _cuda() else MAX_LENGTH)


def _stage_args(config_cls, cfg: Config, stage: str, out: Path, n_rows: int, **specific):
    """The TRL config of a stage: the trainer section's settings, the stage's own, then the user's
    trainer.stage_args for that stage, which win."""
    t = cfg.trainer
    prec = precision(cfg)
    checkpointing = _cuda() if t.gradient_checkpointing is None else t.gradient_checkpointing
    kw: dict[str, Any] = dict(
        output_dir=str(out / "_trainer"), per_device_train_batch_size=min(t.per_device_batch_size, max(1, n_rows)),
        gradient_accumulation_steps=t.gradient_accumulation_steps, learning_rate=t.learning_rate,
        num_train_epochs=t.epochs, lr_scheduler_type=t.lr_scheduler, warmup_steps=t.warmup,
        use_cpu=not _cuda(), report_to=[], save_strategy="no", logging_steps=1, seed=t.seed,
        disable_tqdm=True, dataloader_num_workers=0, bf16=prec == "bf16", fp16=prec == "fp16",
        gradient_checkpointing=checkpointing)
    kw.update(specific)
    kw.update(t.stage_args.get(stage, {}))
    try:
        return config_cls(**kw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"trainer.stage_args.{stage}: {exc} (keys are {config_cls.__name__} arguments, "
                         f"e.g. num_train_epochs = 2)") from None


def quiet(trainer):
    """Losses go to the ledger and the returned metrics; the per-step dict printer is only noise. One
    progress line per logged step instead (step, loss, ETA): a launched job's log shows how far it is."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(_progress_callback())
    return trainer


def _progress_callback():
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        started = 0.0

        def on_train_begin(self, args, state, control, **kw):
            self.started = time.monotonic()

        def on_log(self, args, state, control, logs=None, **kw):
            if not state.is_world_process_zero or not logs or state.global_step < 1:
                return
            spent = time.monotonic() - self.started
            eta = spent / state.global_step * max(0, state.max_steps - state.global_step)
            loss = logs.get("loss", logs.get("train_loss"))
            log.info("progress: step %d/%d loss %s elapsed %.1fs eta %.1fs", state.global_step, state.max_steps,
                     "n/a" if loss is None else f"{loss:.4f}", spent, eta)

    return Progress()


def _is_adapter(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def _base_of_adapter(path: str | Path) -> str:
    import json

    return json.loads((Path(path) / "adapter_config.json").read_text())["base_model_name_or_path"]


def _seeded(cfg: Config) -> None:
    """Seed before a model is built: a reward head or a LoRA adapter is initialised at random when it is
    loaded, before the TRL trainer seeds, so the same data and seed give the same model."""
    from transformers import set_seed

    set_seed(cfg.trainer.seed)


def _load_policy(cfg: Config, path: str):
    """The model to train: full weights, or (LoRA) the adapter made trainable on its base."""
    from transformers import AutoModelForCausalLM

    _seeded(cfg)

    if _is_adapter(path):
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(_base_of_adapter(path))
        return PeftModel.from_pretrained(base, path, is_trainable=True)
    model = AutoModelForCausalLM.from_pretrained(path)
    if cfg.trainer.lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=cfg.trainer.lora_r, lora_alpha=cfg.trainer.lora_alpha,
                                                 lora_dropout=0.0, task_type="CAUSAL_LM",
                                                 target_modules="all-linear"))
    return model


def _save(model, tok, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    peft_config = getattr(model, "peft_config", None)
    if isinstance(peft_config, dict) and "default" in peft_config:
        # only the trained adapter: TRL's dpo and rl trainers add a frozen copy named "ref" as the reference
        model.save_pretrained(out, selected_adapters=["default"])
    else:
        model.save_pretrained(out)
    tok.save_pretrained(out)
    shutil.rmtree(out / "_trainer", ignore_errors=True)


def content_hash(path: str | Path) -> str:
    """sha256 over a checkpoint's files, each as its relative name and its bytes, in name order."""
    import hashlib

    root, h = Path(path), hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def _save_trained(trainer, tok, out: Path) -> None:
    """Save what a TRL trainer trained. Under several processes (DDP, FSDP, DeepSpeed from the user's accelerate
    config) the trainer gathers the weights and the main process writes them; the others wait."""
    acc = trainer.accelerator
    if acc.num_processes == 1:
        _save(trainer.model, tok, out)
        return
    trainer.save_model(str(out))
    if acc.is_main_process:
        shutil.rmtree(out / "ref", ignore_errors=True)  # TRL's frozen reference adapter (LoRA): not the policy
        shutil.rmtree(out / "_trainer", ignore_errors=True)
        tok.save_pretrained(out)
    acc.wait_for_everyone()


def _mean_logged(trainer, key: str) -> float | None:
    vals = [h[key] for h in trainer.state.log_history if key in h and h[key] is not None and not math.isnan(h[key])]
    return float(sum(vals) / len(vals)) if vals else None


def _last_logged(trainer, key: str) -> float | None:
    vals = [h[key] for h in trainer.state.log_history if key in h and h[key] is not None]
    return float(vals[-1]) if vals else None


def _train_loss(trainer, train_out) -> float | None:
    loss = getattr(train_out, "training_loss", None)
    if loss is None or (isinstance(loss, float) and math.isnan(loss)):
        hist = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        loss = sum(hist) / len(hist) if hist else None
    return float(loss) if loss is not None else None


# ---------------------------------------------------------------------- stages
def run_sft(cfg, start: str, rows, out: Path, tok, report: dict | None = None):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    turns = completion_rows(rows)
    args = _stage_args(SFTConfig, cfg, "sft", out, len(turns), max_length=max_length(cfg))
    _truncated(tok, [t["prompt"] + t["completion"] for t in turns], args.max_length, "sft turns", report)
    trainer = quiet(SFTTrainer(model=_load_policy(cfg, start), args=args, processing_class=tok,
                                train_dataset=Dataset.from_list(turns)))
    res = trainer.train()
    _save_trained(trainer, tok, out)
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


def run_dpo(cfg, start: str, rows, out: Path, tok, report: dict | None = None):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = _stage_args(DPOConfig, cfg, "dpo", out, len(rows), max_length=max_length(cfg), beta=0.1)
    _truncated(tok, [r["prompt"] + r[side] for r in rows for side in ("chosen", "rejected")], args.max_length,
               "dpo sequences", report)
    # reference = the stage's starting model (the paper's DPO starts from the SFT model); with LoRA TRL uses
    # the policy with its adapter disabled (a fresh adapter) or a frozen copy of a chained adapter ("ref").
    trainer = quiet(DPOTrainer(model=_load_policy(cfg, start), args=args, processing_class=tok,
                                train_dataset=Dataset.from_list(_trl_columns(rows, ("prompt", "chosen", "rejected")))))
    res = trainer.train()
    _save_trained(trainer, tok, out)
    return _train_loss(trainer, res)


def run_reward(cfg, start: str, rows, out: Path, tok, report: dict | None = None) -> dict[str, Any]:
    """A reward model (scalar head) on preference rows, saved to `out`; its loss and training accuracy.
    Its TRL settings are the trainer section's, then trainer.stage_args.reward."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    base = _base_of_adapter(start) if _is_adapter(start) else start
    _seeded(cfg)
    # The reward model starts from the current policy weights (with LoRA: the base) plus a scalar head,
    # the usual RLHF recipe (InstructGPT); its data are battle outcomes, as in the paper.
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    args = _stage_args(RewardConfig, cfg, "reward", out, len(rows), max_length=max_length(cfg))
    _truncated(tok, [r["prompt"] + r[side] for r in rows for side in ("chosen", "rejected")], args.max_length,
               "reward sequences", report, key="reward_truncated")
    trainer = quiet(RewardTrainer(model=model, args=args, processing_class=tok,
                                   train_dataset=Dataset.from_list(_trl_columns(rows, ("prompt", "chosen", "rejected")))))
    res = trainer.train()
    _save_trained(trainer, tok, out)
    return {"reward_train_loss": _train_loss(trainer, res), "reward_train_accuracy": _mean_logged(trainer, "accuracy")}


def run_rl(cfg, start: str, rows, out: Path, tok, reward_path: str) -> dict[str, Any]:
    """RLOO or GRPO on the prompts against the reward model at `reward_path`, KL-penalised (beta =
    trainer.rl_beta) to the stage's starting model: TRL builds the reference from `start` (with LoRA: the
    adapter disabled, or a frozen copy of a chained adapter). Returns the loss, mean reward and mean KL."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification

    t = cfg.trainer
    if t.rl_algorithm == "grpo":
        from trl import GRPOConfig as RLConfig, GRPOTrainer as RLTrainer
    else:
        from trl import RLOOConfig as RLConfig, RLOOTrainer as RLTrainer

    n_gen = t.rl_num_generations
    # per-device batch counts completions: a whole number of groups of n_gen
    per_dev = max(n_gen, (min(t.per_device_batch_size, max(1, len(rows) * n_gen)) // n_gen) * n_gen)
    args = _stage_args(RLConfig, cfg, "rl", out, len(rows), per_device_train_batch_size=per_dev,
                       num_generations=n_gen, max_completion_length=t.rl_max_completion_length, beta=t.rl_beta)
    reward_model = AutoModelForSequenceClassification.from_pretrained(reward_path, num_labels=1)
    reward_model.config.pad_token_id = tok.pad_token_id
    trainer = quiet(RLTrainer(model=_load_policy(cfg, start), reward_funcs=reward_model, args=args,
                               processing_class=tok, reward_processing_classes=tok,
                               train_dataset=Dataset.from_list(_trl_columns(rows, ("prompt",)))))
    res = trainer.train()
    _save_trained(trainer, tok, out)
    # RLOO/GRPO losses hover near 0 by construction (advantages are centred): the reward and KL say more
    return {"train_loss": _train_loss(trainer, res), "mean_reward": _mean_logged(trainer, "reward"),
            "mean_kl": _mean_logged(trainer, "kl"), "last_kl": _last_logged(trainer, "kl"), "beta": args.beta,
            "rl_steps": trainer.state.global_step}


def _truncated(tok, conversations: list[list[dict]], limit: int | None, what: str, report: dict | None,
               key: str = "truncated") -> int:
    """How many conversations the chat template makes longer than `limit` tokens (TRL cuts them): logged, and
    put in `report[key]` (the Checkpoint's metrics)."""
    if not limit:
        return 0
    n = sum(len(tok(tok.apply_chat_template(c, tokenize=False), add_special_tokens=False).input_ids) > limit
            for c in conversations)
    if n:
        log.warning("%d of %d %s are longer than max_length %d tokens and are cut (trainer.max_length)", n,
                    len(conversations), what, limit)
    if report is not None:
        report[key] = n
    return n


def _trl_columns(rows, keep) -> list[dict]:
    # Provenance columns stay in the rows we hash and log; TRL gets only what it reads.
    return [{k: r[k] for k in keep} for r in rows]


def load_tokenizer(model_path: str):
    """The tokenizer of a checkpoint (a LoRA adapter saved without one: its base model's), with a pad token;
    ValueError when it has no chat template (the rows are conversations)."""
    from transformers import AutoTokenizer

    tok_path = _base_of_adapter(model_path) if _is_adapter(model_path) and not (
        Path(model_path) / "tokenizer_config.json").is_file() else model_path
    tok = AutoTokenizer.from_pretrained(tok_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not tok.chat_template:
        raise ValueError(f"{tok_path}: the tokenizer has no chat template; the trainer formats conversations with it")
    return tok


def too_few(stage: str, rows: list, reward_rows: list | None) -> str | None:
    """Why a round has too little data to train (None: enough)."""
    what = {"sft": "failures with a winning answer", "dpo": "chosen/rejected pairs", "rl": "prompts"}[stage]
    if len(rows) < MIN_ROWS[stage]:
        return f"only {len(rows)} {what} in the slice (need {MIN_ROWS[stage]})"
    if stage == "rl" and len(reward_rows or []) < MIN_REWARD_PAIRS:
        return (f"only {len(reward_rows or [])} judged battles with a winner in the slice (need {MIN_REWARD_PAIRS}) "
                f"to train the reward model")
    return None


def _stage_counts(stage: str, rows: list[dict]) -> dict[str, Any]:
    """What a stage's data held, for the Checkpoint's metrics."""
    if stage == "sft":
        ids = sorted({r["failure_id"] for r in rows if r.get("failure_id")})
        # failure_ids: what trained it, so a restarted service can rebuild trainer.accumulate
        return {"turns": len(completion_rows(rows)), "failures_used": len(ids), "failure_ids": ids}
    if stage == "dpo":
        chosen: dict[str, int] = {}
        rejected: dict[str, int] = {}
        for r in rows:
            chosen[r["chosen_model"]] = chosen.get(r["chosen_model"], 0) + 1
            rejected[r["rejected_model"]] = rejected.get(r["rejected_model"], 0) + 1
        gaps = [r["gap"] for r in rows if r.get("gap") is not None]
        return {"pairs": {"chosen": dict(sorted(chosen.items())), "rejected": dict(sorted(rejected.items()))},
                "mean_gap": sum(gaps) / len(gaps) if gaps else None}
    return {"prompts": len(rows)}


# ---------------------------------------------------------------------- one round
def train_stage(cfg: Config, *, stage: str, model_path: str, iteration: int, target: str, parent: str = "base",
                rows: list[dict[str, Any]], publisher=None, reward_rows: list[dict[str, Any]] | None = None,
                provenance: dict[str, Any] | None = None) -> StageResult:
    """Train one stage from `model_path` on `rows` and save it as `<trainer.output_dir>/<target>/it<N>-<stage>`.

    rows: sft -> `batches.sft_rows`, dpo -> `batches.dpo_pairs` (its rows), rl -> `batches.rl_prompts`, with
    `reward_rows` (`batches.reward_rows` of the slice's judged battles) for the rl stage's reward model.
    The Checkpoint event (parent = `parent`) goes through `publisher` (sent and flushed) when one is given;
    its metrics hold train_loss, examples, the stage's data counts (sft: failure_ids, dpo: chosen/rejected
    per model, rl: mean_reward, mean_kl, the reward model's path), then `provenance` (which wins).
    Too few rows: nothing is trained, the result has `skipped` (the reason) and no checkpoint.
    """
    if stage not in STAGES:
        raise InputError(f"unknown trainer stage {stage!r}; the stages are {', '.join(STAGES)}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rows = list(rows)
    name = f"it{iteration}-{stage}"
    reason = too_few(stage, rows, reward_rows)
    if reason:
        log.warning("%s iteration %d: %s stage skipped: %s", target, iteration, stage, reason)
        return StageResult(None, {"stage": stage, "examples": len(rows), "skipped": reason,
                                  **({"reward_pairs": len(reward_rows or [])} if stage == "rl" else {})}, reason)
    tok = load_tokenizer(model_path)
    root = Path(cfg.trainer.output_dir) / target
    root.mkdir(parents=True, exist_ok=True)
    out = root / name
    metrics: dict[str, Any] = {"examples": len(rows), **_stage_counts(stage, rows)}
    hashed = rows
    started = time.perf_counter()
    if stage == "sft":
        metrics["train_loss"] = run_sft(cfg, model_path, rows, out, tok, metrics)
    elif stage == "dpo":
        metrics["train_loss"] = run_dpo(cfg, model_path, rows, out, tok, metrics)
    else:
        reward_out = root / f"{name}-reward"
        metrics.update(run_reward(cfg, model_path, reward_rows, reward_out, tok, metrics),
                       reward_pairs=len(reward_rows),
                       reward_model=str(reward_out.resolve()))
        metrics["reward_s"] = round(time.perf_counter() - started, 3)
        metrics.update(run_rl(cfg, model_path, rows, out, tok, str(reward_out.resolve())))
        hashed = rows + list(reward_rows)
    metrics.update(algorithm=cfg.trainer.rl_algorithm if stage == "rl" else stage, lora=cfg.trainer.lora,
                   precision=precision(cfg),
                   train_s=round(time.perf_counter() - started, 3))
    metrics.update(provenance or {})
    path = str(out.resolve())
    ev = Checkpoint(model=target, checkpoint=name, path=path, iteration=iteration, stage=stage, parent=parent,
                    dataset_hash=dataset_hash(hashed), metrics=metrics, uri=out.resolve().as_uri(),
                    content_hash=content_hash(out))
    if publisher is not None:
        publisher.send(ev)
        publisher.flush()
    log.info("%s: %s trained from %s in %.1f s (loss %s)", target, name, parent, metrics["train_s"],
             metrics.get("train_loss"))
    return StageResult(ev, {**metrics, "path": path, "dataset_hash": ev.dataset_hash})
