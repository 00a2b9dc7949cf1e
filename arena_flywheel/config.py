"""One configuration: `arena.toml` (every field has a default) plus environment overrides.

Precedence, lowest to highest: defaults < arena.toml < environment variables < CLI flags.
A bad value raises ConfigError whose message is one line: the key, what was wrong, and a good example.
"""
from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError

__all__ = ["Config", "ConfigError", "load_config"]


class Section(BaseModel):
    # Unknown keys are errors: a typo in arena.toml must not be silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class KafkaConfig(Section):
    bootstrap_servers: str = Field("", description="host:port[,host:port]; empty starts the embedded Tansu broker")
    topic_prefix: str = "arena."
    partitions: int = Field(4, ge=1, description="partitions of the per-instruction topics")
    replication_factor: int = Field(1, ge=1)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = Field(None, description="PLAIN, SCRAM-SHA-256, SCRAM-SHA-512")
    sasl_username: str | None = None
    sasl_password_env: str = Field("KAFKA_SASL_PASSWORD", description="env var holding the SASL password")
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    # Group settings that make joins quick on Tansu (it holds the first JoinGroup reply for about
    # half of session_timeout_ms) and stay correct on Apache Kafka. See docs/kafka.md.
    session_timeout_ms: int = Field(6000, ge=1000)
    heartbeat_interval_ms: int = Field(1000, ge=100)
    fetch_max_wait_ms: int = Field(20, ge=1)
    max_poll_interval_ms: int = Field(600_000, ge=10_000, description="slow model batches must fit in it")
    embedded_port: int = Field(0, ge=0, le=65535, description="0 picks a free loopback port")


class DatabaseConfig(Section):
    url: str = Field("sqlite:///arena.db", description="SQLAlchemy URL: sqlite:///path or postgresql+psycopg://...")

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        if not (v.startswith("sqlite:") or v.startswith("postgresql")):
            raise ValueError("must start with sqlite:/// or postgresql+psycopg://")
        return v


class FeedConfig(Section):
    max_prompt_chars: int = Field(32_000, ge=1, description="longer instructions are dead-lettered")
    default_split: Literal["train", "eval"] = "train"


class CompetitorConfig(Section):
    name: str
    backend: Literal["transformers", "vllm", "openai", "replay"] = "transformers"
    model: str = Field("", description="local path or hub id (transformers/vllm), model name (openai), file (replay)")
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(512, ge=1)
    batch_size: int = Field(8, ge=1)
    concurrency: int = Field(4, ge=1)
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(3, ge=0)
    splits: list[Literal["train", "eval"]] = ["train", "eval"]
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1")
    dtype: str = Field("auto", description="auto, float32, bfloat16, float16")
    options: dict[str, Any] = Field(default_factory=dict, description=(
        "backend-specific extras: vllm engine args (e.g. gpu_memory_utilization, max_model_len, enable_lora), "
        "openai headers, replay questions file; see docs/models.md"))


class JudgeConfig(Section):
    backend: Literal["reference", "transformers", "vllm", "openai", "replay"] = "reference"
    model: str = Field("", description="judge model (transformers/vllm/openai), or the recorded judgments file "
                       "or folder (replay: FastChat vicuna-eval reviews or MT-bench pairwise judgments)")
    recorded_answers: str | None = Field(None, description=(
        "replay: folder of the answer files the recorded judgments refer to; default: an answer/ or "
        "model_answer/ folder beside or above the recordings"))
    games: int = Field(2, ge=1, le=2, description=(
        "2: every battle judged in both orders (position bias cancelled per battle); 1: one game per battle, "
        "order picked from the battle id (or the recorded order when replaying single-order recordings), "
        "so position bias only averages out over many battles"))
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    template: str = "wizardarena-dual-score"
    reference_template: str | None = Field(None, description=(
        "model judges: template for battles that carry a reference answer and whose category is in "
        "reference_categories (MT-bench style), e.g. reference-guided-dual-score or "
        "reference-guided-pairwise-abc; unset: `template` for every battle"))
    reference_categories: list[str] = Field(default_factory=lambda: ["math", "reasoning", "coding"], description=(
        "categories judged with reference_template when the battle has a reference; empty: every battle "
        "with a reference"))
    policy: Literal["score-sum", "fastchat", "arena-hard"] = "score-sum"
    combine: Literal["mean", "sum"] = Field("mean", description=(
        "score-sum: each answer's score over the two games, their mean (the 1-10 scale of one game, on which "
        "trainer.threshold_schedule and tie_margin apply) or their sum (2-20: double the thresholds)"))
    tie_margin: float = Field(0.0, ge=0, description="score-sum: |a-b| below this is a tie")
    max_parse_retries: int = Field(2, ge=0)
    temperature: float = Field(0.0, ge=0)
    max_new_tokens: int = Field(512, ge=1)
    concurrency: int = Field(4, ge=1)
    timeout_s: float = Field(120.0, gt=0)
    injection_probe: int = Field(0, ge=0, description=(
        "judge the first N battles once more as answer X against X + a prompt-injection suffix; the judge "
        "health reports injection_rate (docs/judges.md)"))


class LimitsConfig(Section):
    """What a record may hold before it is refused as hostile or broken (docs/events.md, "Limits")."""
    max_record_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="larger Kafka values and input lines "
                                  "are dead letters (the producer's request limit is 16 MiB)")
    max_depth: int = Field(32, ge=4, description="deepest JSON nesting of a record")
    max_int_digits: int = Field(64, ge=4, description="longest integer literal in a record")
    max_text_chars: int = Field(1_000_000, ge=100, description="longest text field of an event (a prompt, an "
                                "answer, a judge's reply); the feed's own max_prompt_chars is stricter")
    dead_letter_excerpt_bytes: int = Field(4096, ge=64, description="a dead letter keeps this much of the raw "
                                           "record (and its size), never the whole oversized value")


def limits_of(limits: Any = None) -> LimitsConfig:
    """The record limits to apply: `cfg.limits`, a whole Config (its .limits), or None for the defaults."""
    if limits is None:
        return _DEFAULT_LIMITS
    if isinstance(limits, LimitsConfig):  # the common case first: getattr's miss on a pydantic model costs
        return limits                     # ~2 us (its __getattr__ raises), paid per decoded record
    return getattr(limits, "limits", limits)


_DEFAULT_LIMITS = LimitsConfig()


BattlePlan = Literal["target-vs-all", "round-robin", "sampled"]


class ArenaConfig(Section):
    battle_plan: BattlePlan = Field("target-vs-all", description="how the pairing agent pairs an instruction's "
                                    "competitors, on both splits unless a split names its own plan below")
    eval_battle_plan: BattlePlan | None = Field(None, description="the eval split's plan (default: battle_plan); "
                                                "round-robin rates the fixed opponents against each other too")
    train_battle_plan: BattlePlan | None = Field(None, description="the train split's plan (default: "
                                                 "battle_plan); target-vs-all finds the targets' losses")
    targets: list[str] = Field(default_factory=list, description="models whose losses feed the flywheel")
    pairing_records: int = Field(20_000, ge=1, description=(
        "train instructions per partition whose pairing records (instruction, responses, battles sent) the "
        "stream keeps once they have sent battles, the least recently paired dropped first; a train response "
        "that arrives after that makes no battle. Instructions still waiting for responses, and every eval "
        "record (new checkpoints pair on the eval set again), are kept"))
    sampled_k: int = Field(2, ge=1)
    seed: int = 0

    def plan_for(self, split: str) -> str:
        """The battle plan of `split` (eval or train)."""
        own = {"eval": self.eval_battle_plan, "train": self.train_battle_plan}.get(split)
        return own or self.battle_plan


class RatingsConfig(Section):
    elo_k: float = Field(4.0, gt=0)
    elo_init: float = 1000.0
    scale: float = Field(400.0, gt=0)
    base: float = Field(10.0, gt=1)
    bootstrap_rounds: int = Field(100, ge=0)
    anchor_model: str | None = None
    anchor_rating: float = 1000.0
    refresh_s: float = Field(1.0, gt=0)
    dedupe_window: int = Field(20_000, ge=1_000, description=(
        "verdict ids per partition the stream remembers to drop a verdict re-sent as a new record; older "
        "re-sends are counted again (a redelivered record is always caught by the offset watermark)"))
    loss_records: int = Field(10_000, ge=1, description=(
        "instructions per partition whose target train losses the stream keeps to build Failures; the least "
        "recently lost are dropped"))


class TrainerConfig(Section):
    output_dir: str = "arena-data/checkpoints"
    stages: list[Literal["sft", "dpo", "rl"]] = Field(["sft"], min_length=1, description=(
        "the stages of an iteration, in this order, each on its own fresh slice battled by the newest "
        "checkpoint (the paper's SFT, DPO and PPO; rl trains a reward model on the slice's judged battles, "
        "then RLOO or GRPO against it)"))
    slice_size: int = Field(64, ge=1, description=(
        "train instructions per slice: a dpo or rl round closes once this many instructions were battled and "
        "judged with the current checkpoint (an sft round closes on batch_size failures)"))
    threshold_schedule: list[float] = Field(
        default_factory=lambda: [3.0, 2.0, 1.0], min_length=1,
        description="iteration N trains on failures lost by >= entry N (the last repeats); the smallest entry "
                    "is also the margin at which the stream records a Failure")
    batch_size: int = Field(64, ge=1, description="failures that close a training round")
    accumulate: bool = Field(False, description="train each iteration on its own selection plus the failures "
                             "selected in earlier iterations (latest record per instruction): steadier gains "
                             "from small rounds, more training time per round")
    learning_rate: float = Field(5e-5, gt=0)
    epochs: float = Field(1.0, gt=0)
    per_device_batch_size: int = Field(8, ge=1)
    rl_algorithm: Literal["rloo", "grpo"] = Field("rloo", description=(
        "TRL has no PPOTrainer: the paper's PPO stage runs as RLOO or GRPO"))
    rl_beta: float = Field(0.05, gt=0, description="KL penalty of the rl stage against its reference model "
                           "(the stage's starting checkpoint)")
    rl_max_completion_length: int = Field(64, ge=1, description="tokens the policy writes per rl completion")
    rl_num_generations: int = Field(2, ge=2, description="completions per prompt (the RLOO/GRPO group)")
    stage_args: dict[Literal["sft", "dpo", "reward", "rl"], dict[str, Any]] = Field(
        default_factory=dict,
        description="per stage, keyword arguments passed to its TRL config (e.g. dpo = {beta = 0.2, "
                    "num_train_epochs = 2}); they override the settings above")
    lora: bool = False
    lora_r: int = Field(8, ge=1, description="LoRA rank (trainer.lora = true)")
    lora_alpha: int = Field(16, ge=1)
    seed: int = 0
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description=(
        "auto: bf16 where the CUDA device supports it, else fp32 (CPU: always fp32)"))
    max_length: int | None = Field(None, ge=16, description=(
        "tokens per training sequence (longer examples are cut and counted in the checkpoint's "
        "metrics.truncated); unset: 4096 with CUDA, 256 on CPU"))
    gradient_checkpointing: bool | None = Field(None, description="unset: on with CUDA, off on CPU")
    gradient_accumulation_steps: int = Field(1, ge=1)
    lr_scheduler: str = Field("constant", description="transformers' lr_scheduler_type: constant, linear, cosine, ...")
    warmup: float = Field(0, ge=0, description="warmup steps (a whole number), or a share of the steps in [0, 1)")
    launcher: Literal["accelerate", "python", "inline"] = Field("accelerate", description=(
        "how a round trains: accelerate (a job started with `accelerate launch`), python (a plain "
        "`python -m trainer.job` process), inline (inside the service's process, no job)"))
    accelerate_config: str | None = Field(None, description=(
        "the accelerate config file for `accelerate launch --config_file` (one GPU, DDP, FSDP, DeepSpeed); "
        "unset: one process, --cpu when there is no CUDA"))
    checkpoint_roots: list[str] = Field(default_factory=list, description=(
        "directories generation pools may load checkpoints from (shared storage they can read; output_dir "
        "belongs under one): a Checkpoint whose path resolves outside them is dead-lettered, nothing loads. "
        "Empty: output_dir alone (add the directories of checkpoints trained elsewhere)"))
    job_retries: int = Field(1, ge=0, description="a failed training job is started again this many times, "
                             "then reported (a dead letter) and the service stops without committing the round")


class Config(Section):
    data_dir: str = "arena-data"
    kafka: KafkaConfig = KafkaConfig()
    db: DatabaseConfig = DatabaseConfig()
    feed: FeedConfig = FeedConfig()
    arena: ArenaConfig = ArenaConfig()
    competitors: list[CompetitorConfig] = Field(default_factory=list)
    judge: JudgeConfig = JudgeConfig()
    ratings: RatingsConfig = RatingsConfig()
    trainer: TrainerConfig = TrainerConfig()
    limits: LimitsConfig = LimitsConfig()

    def topic(self, name: str) -> str:
        return f"{self.kafka.topic_prefix}{name}"

    def threshold_for(self, iteration: int) -> float:
        """The margin iteration N (1-based) selects failures by: the paper's schedule, 3 -> 2 -> 1."""
        s = self.trainer.threshold_schedule
        return float(s[min(max(iteration, 1) - 1, len(s) - 1)])

    @property
    def failure_margin(self) -> float:
        """The stream records a Failure when a target loses by at least this: the smallest threshold any
        iteration selects by, so one schedule is the single source of the margin."""
        return float(min(self.trainer.threshold_schedule))


# Environment variable -> dotted key. Documented in docs/configuration.md.
ENV_OVERRIDES: dict[str, str] = {
    "KAFKA_BOOTSTRAP_SERVERS": "kafka.bootstrap_servers",
    "KAFKA_SECURITY_PROTOCOL": "kafka.security_protocol",
    "KAFKA_SASL_MECHANISM": "kafka.sasl_mechanism",
    "KAFKA_SASL_USERNAME": "kafka.sasl_username",
    "ARENA_TOPIC_PREFIX": "kafka.topic_prefix",
    "ARENA_PARTITIONS": "kafka.partitions",
    "ARENA_DB_URL": "db.url",
    "ARENA_DATA_DIR": "data_dir",
}

_EXAMPLES: dict[str, str] = {
    "kafka.bootstrap_servers": '"localhost:9092"',
    "kafka.partitions": "4",
    "kafka.security_protocol": '"SASL_SSL"',
    "db.url": '"sqlite:///arena.db" or "postgresql+psycopg://user@host/arena"',
    "judge.policy": '"score-sum"',
    "judge.backend": '"reference"',
    "arena.battle_plan": '"target-vs-all"',
    "arena.eval_battle_plan": '"round-robin"',
    "arena.train_battle_plan": '"target-vs-all"',
    "trainer.stages": '["sft", "dpo"]',
    "trainer.stage_args": '{dpo = {beta = 0.1, num_train_epochs = 2}}',
}


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


# Keys that existed once: say what replaced them instead of "unknown key".
_REMOVED = {"ratings.failure_margin": "removed: the stream records a Failure at min(trainer.threshold_schedule), "
                                      "the one schedule the trainer selects by; set that instead"}
_REMOVED_VALUES = {("trainer.stages", "reward"): "the reward stage is part of rl now (the rl stage trains its reward "
                                                  "model on the slice's judged battles): use stages = [\"sft\", "
                                                  "\"dpo\", \"rl\"]"}


def _one_line(err: ValidationError, source: str) -> str:
    e = err.errors()[0]
    key = ".".join(str(p) for p in e["loc"])
    example_key = ".".join(str(p) for p in e["loc"] if not isinstance(p, int))
    example = _EXAMPLES.get(example_key)
    msg = e["msg"]
    removed = _REMOVED_VALUES.get((".".join(str(p) for p in e["loc"] if not isinstance(p, int)), e.get("input")))
    if removed:
        return f"{source}: {key}: {removed}"
    if e["type"] == "extra_forbidden":
        msg = _REMOVED.get(key, "unknown key (check the spelling; docs/configuration.md lists every key)")
    got = "" if e["type"] == "extra_forbidden" else f" (got {e.get('input')!r})"
    hint = f"; e.g. {example_key} = {example}" if example else ""
    more = f" [and {len(err.errors()) - 1} more]" if len(err.errors()) > 1 else ""
    return f"{source}: {key}: {msg}{got}{hint}{more}"


def load_config(path: str | os.PathLike | None = None, env: dict[str, str] | None = None,
                overrides: dict[str, Any] | None = None) -> Config:
    """Load arena.toml (or `path`; no file is fine), apply env overrides, then `overrides` (dotted keys)."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    source = "defaults"
    if path is None and env.get("ARENA_CONFIG"):
        path = env["ARENA_CONFIG"]
    if path is None and Path("arena.toml").is_file():
        path = "arena.toml"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found (pass --config PATH to an existing arena.toml, or omit it)")
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    for var, dotted in ENV_OVERRIDES.items():
        if env.get(var) not in (None, ""):
            _set_dotted(data, dotted, env[var])
            source = f"{source} + ${var}" if source != "defaults" else f"${var}"
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(data, dotted, value)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, source)) from None


def _type_name(t: Any) -> str:
    import typing

    if typing.get_origin(t) is Literal:
        return " \\| ".join(repr(a) for a in typing.get_args(t))
    name = getattr(t, "__name__", None)
    if name and not typing.get_args(t):
        return name
    return str(t).replace("typing.", "").replace("arena_flywheel.config.", "").replace("__main__.", "").replace("|", "\\|")


def reference_markdown() -> str:
    """The configuration reference (docs/configuration.md is this text; a test keeps them in sync)."""
    lines = ["# Configuration reference", "",
             "Generated from `arena_flywheel/config.py` by `python -m arena_flywheel.config > docs/configuration.md`.",
             "", "`arena.toml` is optional: every key has a default, so the demo needs no file. Precedence, lowest",
             "to highest: defaults, `arena.toml` (or `--config PATH`, or `$ARENA_CONFIG`), environment variables,",
             "command-line flags. Unknown keys are errors, and a bad value gets a one-line message naming the key.",
             "", "## Environment variables", "", "| variable | key |", "|---|---|"]
    lines += [f"| `{var}` | `{key}` |" for var, key in ENV_OVERRIDES.items()]
    lines += ["", "Secrets are never read from the file: `kafka.sasl_password_env` and `api_key_env` name the",
              "environment variables that hold them.", ""]

    def section(title: str, model: type[BaseModel], note: str = "") -> None:
        lines.extend([f"## `{title}`", ""])
        if note:
            lines.extend([note, ""])
        lines.extend(["| key | type | default | meaning |", "|---|---|---|---|"])
        for name, f in model.model_fields.items():
            if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
                continue
            ann = _type_name(f.annotation)
            default = f.default_factory() if f.default_factory else f.default
            lines.append(f"| `{name}` | `{ann}` | `{default!r}` | {f.description or ''} |".replace("\n", " "))
        lines.append("")

    section("top level", Config)
    for name, f in Config.model_fields.items():
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
            section(f"[{name}]", f.annotation)
    section("[[competitors]]", CompetitorConfig, "One table per competitor model; the demo fills these itself.")
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference_markdown())
