"""The event contract: every record that crosses a topic, in one module.

Each event type has
- a schema name and major version on the wire (`"schema": "arena.verdict/1"`),
- a deterministic `id` computed from the fields that identify it, so that reprocessing or
  redelivery produces the same id and every consumer can be idempotent on it,
- a Kafka key (`kafka_key()`): the instruction id for everything per-instruction, so pairing
  and loss records stay on one partition (DESIGN.md: "keys decide locality"),
- a topic (`TOPICS`), documented with partitions and cleanup policy in docs/events.md.

JSON on the wire (UTF-8). `decode()` turns bytes into a typed event or raises BadEvent with a
reason that goes to the dead-letter topic verbatim.
"""
from __future__ import annotations

import hashlib
import json
import time
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Split = Literal["train", "eval"]
Role = Literal["system", "user", "assistant"]


class BadEvent(ValueError):
    """A record that does not satisfy the contract; `reason` is for humans and the dead-letter topic."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def stable_hash(*parts: Any, length: int = 20) -> str:
    """Deterministic hex digest of JSON-serialisable parts (order matters)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:length]


def now() -> float:
    return time.time()


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    role: Role
    content: str


def chat(messages: list[Message], answers: list[str], turns: int | None = None) -> list[dict[str, str]]:
    """The chat of a conversation with `answers` in place of its assistant messages: system messages, then
    each user turn followed by answers[k] when there is one, up to `turns` user turns (default: as many as
    there are answers). Generation asks for turn k with answers[:k] and turns=k + 1; training rows pair
    every user turn with an answer."""
    turns = len(answers) if turns is None else turns
    out: list[dict[str, str]] = []
    k = 0
    for m in messages:
        if m.role == "system":
            out.append({"role": "system", "content": m.content})
        elif m.role == "user":
            if k >= turns:
                break
            out.append({"role": "user", "content": m.content})
            if k < len(answers):
                out.append({"role": "assistant", "content": answers[k]})
            k += 1
    return out


class Event(BaseModel):
    """Base of every event. Subclasses set SCHEMA, TOPIC and implement identity()/kafka_key()."""

    model_config = ConfigDict(extra="ignore")  # a newer minor version may add fields
    SCHEMA: ClassVar[str]
    VERSION: ClassVar[int] = 1
    TOPIC: ClassVar[str]

    id: str = ""
    created_at: float = Field(default_factory=now)

    def identity(self) -> tuple:  # the fields that make two events "the same event"
        raise NotImplementedError

    def kafka_key(self) -> str:
        raise NotImplementedError

    @model_validator(mode="after")
    def _fill_id(self):
        if not self.id:  # a given id is checked against the content once, in validate()
            self.id = self.compute_id()
        return self

    def compute_id(self) -> str:
        return f"{self.SCHEMA.split('.')[-1][:3]}-{stable_hash(*self.identity())}"

    def to_wire(self) -> dict[str, Any]:
        d = self.model_dump(mode="json")
        d["schema"] = f"{self.SCHEMA}/{self.VERSION}"
        return d

    def encode(self) -> bytes:
        return json.dumps(self.to_wire(), ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class Instruction(Event):
    """A prompt: one or more turns. The id is a hash of the conversation, so equal prompts dedupe."""

    SCHEMA: ClassVar[str] = "arena.instruction"
    TOPIC: ClassVar[str] = "instructions"  # instructions.train / instructions.eval by split

    messages: list[Message]
    split: Split = "train"
    source: str = ""
    source_id: str | None = None
    category: str | None = None
    tags: list[str] = Field(default_factory=list)
    reference: str | None = Field(None, description="reference answer (final turn) for verifiable tasks")
    references: list[str] | None = Field(None, description="one reference per user turn, when known")

    @field_validator("messages")
    @classmethod
    def _has_user_turn(cls, v: list[Message]) -> list[Message]:
        if not any(m.role == "user" for m in v):
            raise ValueError("needs at least one user message")
        if any(not m.content.strip() for m in v if m.role == "user"):
            raise ValueError("user messages must not be empty")
        return v

    def identity(self) -> tuple:
        return ([m.model_dump() for m in self.messages],)

    def kafka_key(self) -> str:
        return self.id

    @property
    def user_turns(self) -> list[str]:
        return [m.content for m in self.messages if m.role == "user"]

    def topic_name(self) -> str:
        return f"{self.TOPIC}.{self.split}"


class Response(Event):
    """One competitor's answer to an instruction: one answer per user turn (multi-turn kept)."""

    SCHEMA: ClassVar[str] = "arena.response"
    TOPIC: ClassVar[str] = "responses"

    instruction_id: str
    split: Split = "train"
    model: str
    checkpoint: str = "base"
    sample: int = 0
    answers: list[str]
    backend: str = ""
    sampling: dict[str, Any] = Field(default_factory=dict)
    output_tokens: int = 0
    latency_ms: float = 0.0
    finish_reason: str | None = None

    def identity(self) -> tuple:
        return (self.instruction_id, self.model, self.checkpoint, self.sample)

    def kafka_key(self) -> str:
        return self.instruction_id

    @property
    def competitor(self) -> str:
        return competitor_name(self.model, self.checkpoint)


def competitor_name(model: str, checkpoint: str = "base") -> str:
    """The rated identity: each checkpoint of a model is its own competitor."""
    return model if checkpoint in ("", "base") else f"{model}@{checkpoint}"


class Contestant(BaseModel):
    model_config = ConfigDict(extra="ignore")
    response_id: str
    model: str
    checkpoint: str = "base"
    answers: list[str]

    @property
    def competitor(self) -> str:
        return competitor_name(self.model, self.checkpoint)


class Battle(Event):
    """Two answers to one instruction, self-contained so a judge needs no lookup.

    Side a / b are in canonical order (sorted response ids), so the same pair is the same battle.
    """

    SCHEMA: ClassVar[str] = "arena.battle"
    TOPIC: ClassVar[str] = "battles"

    instruction_id: str
    split: Split = "train"
    messages: list[Message]
    reference: str | None = None
    references: list[str] | None = None
    category: str | None = None
    a: Contestant
    b: Contestant
    plan: str = ""

    def identity(self) -> tuple:
        return (self.instruction_id, self.a.response_id, self.b.response_id)

    def kafka_key(self) -> str:
        return self.instruction_id


class Game(BaseModel):
    """One judging pass. order "ab": answer a shown first; "ba": positions swapped.
    score_a / score_b always refer to the battle's a and b, whatever the order shown."""

    model_config = ConfigDict(extra="ignore")
    order: Literal["ab", "ba"]
    raw: str = ""
    score_a: float | None = None
    score_b: float | None = None
    preference: str | None = Field(None, description="policy-specific label, e.g. A>>B")
    attempts: int = 1
    error: str | None = None


class JudgeInfo(BaseModel):
    model_config = ConfigDict(extra="ignore")
    backend: str
    model: str = ""
    template_id: str = ""
    template_hash: str = ""
    sampling: dict[str, Any] = Field(default_factory=dict)
    games: int = Field(2, description="games per battle: 2 = both orders, 1 = one order (bias not cancelled)")

    @property
    def judge_id(self) -> str:
        one = ":1-game" if self.games == 1 else ""  # a different protocol is a different judge; 2 keeps old ids
        return f"{self.backend}:{self.model}:{self.template_id}:{self.template_hash}{one}"


Winner = Literal["model_a", "model_b", "tie", "invalid"]


class Verdict(Event):
    """The judge's decision on a battle, with both games kept."""

    SCHEMA: ClassVar[str] = "arena.verdict"
    TOPIC: ClassVar[str] = "verdicts"

    battle_id: str
    instruction_id: str
    split: Split = "train"
    competitor_a: str
    competitor_b: str
    model_a: str
    model_b: str
    checkpoint_a: str = "base"
    checkpoint_b: str = "base"
    games: list[Game] = Field(default_factory=list)
    score_a: float | None = None
    score_b: float | None = None
    winner: Winner
    margin: float = Field(0.0, description="|score_a - score_b| after the policy's aggregation")
    policy: str = "score-sum"
    judge: JudgeInfo

    def identity(self) -> tuple:
        return (self.battle_id, self.judge.judge_id, self.policy)

    def kafka_key(self) -> str:
        return self.instruction_id


class Failure(Event):
    """A battle the target lost by at least the threshold margin: the flywheel's raw material.

    Keyed by `instruction_id` and compacted; the latest record per instruction wins and always
    carries the best winning answer seen so far for that instruction.
    """

    SCHEMA: ClassVar[str] = "arena.failure"
    TOPIC: ClassVar[str] = "failures"

    instruction_id: str
    split: Split = "train"
    target: str
    target_checkpoint: str = "base"
    messages: list[Message]
    reference: str | None = None
    target_answers: list[str]
    winner_model: str
    winner_answers: list[str]
    margin: float
    score_target: float | None = None
    score_winner: float | None = None
    battle_ids: list[str] = Field(default_factory=list)
    verdict_ids: list[str] = Field(default_factory=list)
    losses: int = 1
    judge: JudgeInfo | None = None

    def identity(self) -> tuple:
        return (self.instruction_id, self.target, self.target_checkpoint, sorted(self.verdict_ids))

    def kafka_key(self) -> str:
        return self.instruction_id


class Checkpoint(Event):
    """A trained checkpoint, plugged into the arena by the competitor pool of `model`."""

    SCHEMA: ClassVar[str] = "arena.checkpoint"
    TOPIC: ClassVar[str] = "checkpoints"

    model: str
    checkpoint: str
    path: str
    iteration: int = 0
    stage: str = ""
    parent: str | None = None
    dataset_hash: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)

    def identity(self) -> tuple:
        return (self.model, self.checkpoint, self.path)

    def kafka_key(self) -> str:
        return self.model


class DeadLetter(Event):
    """A record that could not be processed, with the reason and the raw bytes; nothing is lost."""

    SCHEMA: ClassVar[str] = "arena.deadletter"
    TOPIC: ClassVar[str] = "deadletter"

    source: str = Field(description="topic[partition]@offset, or file:line for the feed")
    reason: str
    raw: str = Field("", description="the original bytes, decoded as UTF-8 with backslash escapes")
    stage: str = ""

    def identity(self) -> tuple:
        return (self.source, self.raw, self.stage)

    def kafka_key(self) -> str:
        return self.source

    @staticmethod
    def raw_text(raw: bytes | str | None) -> str:
        if raw is None:
            return ""
        if isinstance(raw, str):
            return raw
        return raw.decode("utf-8", errors="backslashreplace")


EVENT_TYPES: dict[str, type[Event]] = {
    cls.SCHEMA: cls for cls in (Instruction, Response, Battle, Verdict, Failure, Checkpoint, DeadLetter)
}
BY_KIND: dict[str, type[Event]] = {cls.SCHEMA.split(".")[-1]: cls for cls in EVENT_TYPES.values()}


def decode(raw: bytes, expect: type[Event] | None = None) -> Event:
    """Parse wire bytes into a typed event, or raise BadEvent with a one-line reason."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadEvent(f"invalid UTF-8 at byte {exc.start}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadEvent(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(data, dict):
        raise BadEvent(f"expected a JSON object, got {type(data).__name__}")
    schema = data.pop("schema", None)
    if not isinstance(schema, str) or "/" not in schema:
        raise BadEvent("missing or malformed 'schema' field (expected e.g. 'arena.verdict/1')")
    name, _, version = schema.rpartition("/")
    cls = EVENT_TYPES.get(name)
    if cls is None:
        raise BadEvent(f"unknown schema {name!r}")
    if expect is not None and cls is not expect:
        raise BadEvent(f"expected {expect.SCHEMA}, got {name}")
    if version != str(cls.VERSION):
        raise BadEvent(f"unsupported version {version!r} of {name} (this build reads /{cls.VERSION})")
    return validate(cls, data)


def validate(cls: type[Event], data: dict[str, Any]) -> Event:
    """Build an event from a dict, turning validation errors into a one-line BadEvent."""
    try:
        event = cls.model_validate(data)
    except ValidationError as exc:
        e = exc.errors()[0]
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise BadEvent(f"{cls.SCHEMA}: field {loc}: {e['msg']}{more}") from None
    if data.get("id"):
        expected = event.compute_id()
        if data["id"] != expected:
            raise BadEvent(f"{cls.SCHEMA}: id {data['id']!r} does not match its content (expected {expected!r})")
    return event
