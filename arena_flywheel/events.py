"""The event contract: every record that crosses a topic, in one module.

Each event type has
- a schema name and major version on the wire (`"schema": "arena.verdict/1"`),
- a deterministic `id` computed from the fields that identify it, so that reprocessing or
  redelivery produces the same id and every consumer can be idempotent on it,
- a Kafka key (`kafka_key()`): the instruction id for everything per-instruction, so pairing
  and loss records stay on one partition (DESIGN.md: "keys decide locality"),
- a topic (`TOPICS`), documented with partitions and cleanup policy in docs/events.md.

JSON on the wire (UTF-8). `decode()` turns bytes into a typed event or raises BadEvent with a
reason that goes to the dead-letter topic verbatim; it parses within `cfg.limits` (arena_flywheel/safejson.py),
so hostile input (null, oversized, deeply nested, huge numbers, NaN) is a BadEvent like any other.

Every text of every event follows one rule (`clean_text`, applied by the models themselves before the id is
computed, so an event built in code and the same event decoded agree), and the models check what the
system relies on: distinct competitors in a battle, verdict or failure, scores and margins in range
(docs/events.md, "Limits and validation").
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Annotated, Any, ClassVar, Literal, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .config import limits_of
from .safejson import JSONLimitError
from .safejson import loads as _json_loads

Split = Literal["train", "eval"]
Role = Literal["system", "user", "assistant"]


class BadEvent(ValueError):
    """A record that does not satisfy the contract; `reason` (one line, at most 1,000 characters) is for
    humans and the dead-letter topic."""

    def __init__(self, reason: str):
        reason = " ".join(str(reason).split())
        if len(reason) > 1000:
            reason = reason[:999] + "\u2026"
        super().__init__(reason)
        self.reason = reason


# json.dumps with these options builds a new encoder on every call; one shared encoder gives the same text
_STABLE_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"))
_JSON_STR = json.encoder.encode_basestring  # the string encoder _STABLE_JSON uses (C when available)


def stable_hash(*parts: Any, length: int = 20) -> str:
    """Deterministic hex digest of JSON-serialisable parts (order matters)."""
    try:  # strings only (every event id): the encoder's text, in a third of the time
        blob = "[" + ",".join(map(_JSON_STR, parts)) + "]"
    except TypeError:  # a part that is not a string
        blob = _STABLE_JSON.encode(parts)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:length]


def now() -> float:
    return time.time()


# ---------------------------------------------------------------------------------------------- the text rule

# NUL and the other C0 controls except tab, newline and carriage return; DEL; lone surrogates (not UTF-8).
_BAD_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_ESCAPES = re.compile(rb"\\[ubf]")  # JSON escapes that can decode to one (\u0000, \b, \f)
_CLEAN_WIRE = "arena.clean-wire"  # decode()'s validation context key: the wire bytes hold no such character


def clean_text(text: str) -> str:
    """The text rule of every event: NUL and the other C0 control characters except tab, newline and carriage
    return, DEL (U+007F) and lone surrogates (which UTF-8 cannot encode) are removed; all else is kept."""
    return _BAD_CHARS.sub("", text)


_sub = _BAD_CHARS.sub
_BAD_BYTES = bytes(range(0x00, 0x09)) + b"\x0b\x0c" + bytes(range(0x0e, 0x20)) + b"\x7f"


def _unclean(text: str) -> bool:
    """Whether `text` holds a character clean_text removes. Long texts are checked as UTF-8 bytes (several
    times faster than the regex): a C0 or DEL byte is never part of a multi-byte character, and a lone
    surrogate does not encode."""
    if len(text) < 64:
        return _BAD_CHARS.search(text) is not None
    try:
        b = text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return len(b.translate(None, _BAD_BYTES)) != len(b)


def _cleaned(value: Any) -> Any:
    """`value` with the text rule applied to every string in it (dict keys too); the same object when
    nothing changes. Nested models are cleaned by their own validators."""
    t = type(value)
    if t is str:
        return _sub("", value) if _unclean(value) else value
    if t is list:
        for x in value:
            tx = type(x)
            if (tx is str and _unclean(x)) or ((tx is list or tx is dict) and _cleaned(x) is not x):
                return [_cleaned(y) for y in value]
        return value
    if t is dict:
        for k, x in value.items():
            tx = type(x)
            if ((type(k) is str and _unclean(k)) or (tx is str and _unclean(x))
                    or ((tx is list or tx is dict) and _cleaned(x) is not x)):
                return {_cleaned(k): _cleaned(y) for k, y in value.items()}
        return value
    return value


_TEXT_FIELDS: dict[type, tuple[str, ...]] = {}  # per model class: the fields whose type can hold a string


def _may_hold_text(tp: Any) -> bool:
    """Whether a field of type `tp` can hold a string (nested models clean themselves; Literals are fixed)."""
    if tp is str or tp is Any:
        return True
    origin = get_origin(tp)
    if origin is Literal:
        return False
    if origin is Annotated:
        return _may_hold_text(get_args(tp)[0])
    if origin is None:
        return not (isinstance(tp, type) and (issubclass(tp, (int, float, BaseModel)) or tp is type(None)))
    return any(_may_hold_text(a) for a in get_args(tp))


def _clean_fields(model: BaseModel, info: ValidationInfo) -> None:
    """Apply the text rule to a model's fields in place (frozen models included). decode() skips it when
    the wire bytes cannot decode to a character the rule removes (no \\u, \\b, \\f escape, no DEL)."""
    ctx = info.context
    if ctx and ctx.get(_CLEAN_WIRE):
        return
    names = _TEXT_FIELDS.get(type(model))
    if names is None:
        names = _TEXT_FIELDS[type(model)] = tuple(k for k, f in type(model).model_fields.items()
                                                  if _may_hold_text(f.annotation))
    d = model.__dict__
    for k in names:
        v = d[k]
        t = type(v)
        if t is str:
            if _unclean(v):
                d[k] = _sub("", v)
        elif t is list or t is dict:
            c = _cleaned(v)
            if c is not v:
                d[k] = c


def _wire_may_hold_removed_chars(raw: Any) -> bool:
    """False only for bytes whose JSON strings cannot hold a character clean_text removes: the strict
    parser refuses raw control characters, so they can only come from \\u, \\b or \\f escapes, and UTF-8
    bytes cannot hold a lone surrogate; DEL may be raw."""
    if not isinstance(raw, (bytes, bytearray)):
        return True
    return b"\x7f" in raw or _ESCAPES.search(raw) is not None


class _Part(BaseModel):
    """A model nested in events (Message, Contestant, Game, JudgeInfo): its texts follow the rule too."""

    @model_validator(mode="after")
    def _clean_texts(self, info: ValidationInfo):
        _clean_fields(self, info)
        return self


# Scores: the judges score each answer 1-10 per game (WizardArena / Vicuna dual scores; parse.py refuses
# numbers outside 0-10) and score-sum records the sum or mean of two games (<= 20). 0-100 leaves room for a
# judge on a percent scale and refuses what is no score at all (negative, huge, NaN, infinite).
SCORE_MIN, SCORE_MAX = 0.0, 100.0
Score = Annotated[float, Field(ge=SCORE_MIN, le=SCORE_MAX, allow_inf_nan=False)]
Margin = Annotated[float, Field(ge=0.0, le=SCORE_MAX - SCORE_MIN, allow_inf_nan=False)]


class Message(_Part):
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
    def _clean_check_fill_id(self, info: ValidationInfo):
        _clean_fields(self, info)  # the text rule first: the id is computed over the cleaned texts
        self.check()
        if not self.id:  # a given id is checked against the content once, in validate()
            self.id = self.compute_id()
        return self

    def check(self) -> None:
        """Cross-field rules of the event type; raise ValueError with a one-line reason."""

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


class Contestant(_Part):
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

    def check(self) -> None:
        if self.a.competitor == self.b.competitor:
            raise ValueError(f"a battle of {self.a.competitor!r} against itself")

    def kafka_key(self) -> str:
        return self.instruction_id


class Game(_Part):
    """One judging pass. order "ab": answer a shown first; "ba": positions swapped.
    score_a / score_b always refer to the battle's a and b, whatever the order shown."""

    model_config = ConfigDict(extra="ignore")
    order: Literal["ab", "ba"]
    raw: str = ""
    score_a: Score | None = None
    score_b: Score | None = None
    preference: str | None = Field(None, description="policy-specific label, e.g. A>>B")
    attempts: int = 1
    error: str | None = None


class JudgeInfo(_Part):
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
    score_a: Score | None = None
    score_b: Score | None = None
    winner: Winner
    margin: Margin = Field(0.0, description="|score_a - score_b| after the policy's aggregation")
    policy: str = "score-sum"
    judge: JudgeInfo
    # Characters of each side's answers, all turns, as the judge saw them: lets whoever reads only verdicts
    # (the stream worker) measure the judge's longer-answer bias. None in verdicts from before they existed.
    length_a: int | None = Field(None, ge=0)
    length_b: int | None = Field(None, ge=0)

    def identity(self) -> tuple:
        return (self.battle_id, self.judge.judge_id, self.policy)

    def check(self) -> None:
        if self.competitor_a == self.competitor_b:
            raise ValueError(f"a verdict on {self.competitor_a!r} against itself")

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
    margin: Margin
    score_target: Score | None = None
    score_winner: Score | None = None
    battle_ids: list[str] = Field(default_factory=list)
    verdict_ids: list[str] = Field(default_factory=list)
    losses: int = 1
    judge: JudgeInfo | None = None

    def identity(self) -> tuple:
        return (self.instruction_id, self.target, self.target_checkpoint, sorted(self.verdict_ids))

    def check(self) -> None:
        target = competitor_name(self.target, self.target_checkpoint)
        if self.winner_model == target:
            raise ValueError(f"a failure of {target!r} against itself")

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
    uri: str | None = Field(None, description="where the checkpoint is stored (file:///...), for readers on "
                            "other hosts; pools load `path` and refuse a uri that names another place")
    content_hash: str | None = Field(None, description="sha256 over the checkpoint's files (relative names "
                                     "and bytes): what was published is what is on the storage")

    def identity(self) -> tuple:
        return (self.model, self.checkpoint, self.path)

    def kafka_key(self) -> str:
        return self.model


class DeadLetter(Event):
    """A record that could not be processed, with the reason and (an excerpt of) the raw bytes."""

    SCHEMA: ClassVar[str] = "arena.deadletter"
    TOPIC: ClassVar[str] = "deadletter"

    source: str = Field(description="topic[partition]@offset, or file:line for the feed")
    reason: str
    raw: str = Field("", description="the original bytes (at most limits.dead_letter_excerpt_bytes of them), "
                     "decoded as UTF-8 with backslash escapes for invalid bytes and control characters")
    stage: str = ""
    raw_bytes: int | None = Field(None, description="size of the original record in bytes; more than raw "
                                  "holds when it was cut (None: unknown, or a record older than this field)")

    def identity(self) -> tuple:
        return (self.source, self.raw, self.stage)

    def kafka_key(self) -> str:
        return self.source

    @classmethod
    def of(cls, source: str, reason: str, raw: bytes | str | None, stage: str = "",
           limits: Any = None) -> "DeadLetter":
        """The dead letter of a record: its source, a one-line reason (cut to 1,000 characters) and at most
        `limits.dead_letter_excerpt_bytes` of the raw record with its size, so it always fits a request."""
        size = None if raw is None else len(_raw_bytes(raw))
        reason = " ".join(str(reason).split())
        reason = reason if len(reason) <= 1000 else reason[:999] + "\u2026"
        return cls(source=source, reason=reason, stage=stage, raw_bytes=size,
                   raw=cls.raw_text(raw, limits_of(limits).dead_letter_excerpt_bytes))

    @staticmethod
    def raw_text(raw: bytes | str | None, max_bytes: int | None = None) -> str:
        """The raw record as text: at most `max_bytes` of it (cut at a character boundary), decoded as UTF-8
        with backslash escapes for invalid bytes and for the characters the text rule removes (\\x00)."""
        if raw is None:
            return ""
        b = _raw_bytes(raw)
        if max_bytes is not None and len(b) > max_bytes:
            cut = max_bytes
            while cut > max(0, max_bytes - 3) and (b[cut] & 0xC0) == 0x80:  # not inside a character
                cut -= 1
            b = b[:cut]
        text = b.decode("utf-8", errors="backslashreplace")
        return _BAD_CHARS.sub(lambda m: f"\\x{ord(m[0]):02x}", text)


def _raw_bytes(raw: Any) -> bytes:
    if isinstance(raw, str):
        return raw.encode("utf-8", errors="surrogatepass")
    return bytes(raw) if isinstance(raw, (bytes, bytearray, memoryview)) else repr(raw).encode("utf-8")


EVENT_TYPES: dict[str, type[Event]] = {
    cls.SCHEMA: cls for cls in (Instruction, Response, Battle, Verdict, Failure, Checkpoint, DeadLetter)
}
BY_KIND: dict[str, type[Event]] = {cls.SCHEMA.split(".")[-1]: cls for cls in EVENT_TYPES.values()}


_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean",
               type(None): "null"}



def _long_text(value: Any, limit: int, path: str = "") -> tuple[str, int] | None:
    """(path, length) of the first string (or key) in a parsed record longer than `limit`, or None."""
    stack = [(value, path)]
    while stack:
        v, p = stack.pop()
        if isinstance(v, str):
            if len(v) > limit:
                return p or "<root>", len(v)
        elif isinstance(v, dict):
            for k, x in v.items():
                if len(k) > limit:
                    return f"{p}.<key>".lstrip("."), len(k)
                stack.append((x, f"{p}.{k}".lstrip(".")))
        elif isinstance(v, list):
            stack.extend((x, f"{p}.{i}".lstrip(".")) for i, x in enumerate(v))
    return None


def decode(raw: bytes | None, expect: type[Event] | None = None, limits: Any = None) -> Event:
    """Parse wire bytes into a typed event, or raise BadEvent with a one-line reason (the only exception).

    `limits` (cfg.limits, a Config, or None for the defaults of LimitsConfig) bound the record's size, JSON
    nesting, integer digits and the length of each text; what exceeds them is a BadEvent, like null values,
    invalid UTF-8, NaN, wrong types and contract violations."""
    lim = limits_of(limits)
    try:
        data = _json_loads(raw, max_bytes=lim.max_record_bytes, max_depth=lim.max_depth,
                           max_int_digits=lim.max_int_digits)
    except JSONLimitError as exc:
        reason = str(exc)
        raise BadEvent(reason if reason.startswith("invalid") else f"refused: {reason}") from None
    if not isinstance(data, dict):
        raise BadEvent(f"expected a JSON object, got {_JSON_TYPES.get(type(data), type(data).__name__)}")
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
    if len(raw) > lim.max_text_chars:  # a shorter record cannot hold a longer text
        long = _long_text(data, lim.max_text_chars)
        if long is not None:
            raise BadEvent(f"{name}: field {long[0]}: a text of {long[1]:,} characters "
                           f"(limit {lim.max_text_chars:,})")
    return validate(cls, data, _clean_wire=not _wire_may_hold_removed_chars(raw))


def validate(cls: type[Event], data: dict[str, Any], *, _clean_wire: bool = False) -> Event:
    """Build an event from a dict, turning validation errors into a one-line BadEvent."""
    try:
        event = cls.model_validate(data, context={_CLEAN_WIRE: True} if _clean_wire else None)
    except ValidationError as exc:
        e = exc.errors()[0]
        msg = e["msg"].removeprefix("Value error, ")
        where = f"field {'.'.join(str(p) for p in e['loc'])}: " if e["loc"] else ""
        more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise BadEvent(f"{cls.SCHEMA}: {where}{msg}{more}") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # hostile input, never a crash
        raise BadEvent(f"{cls.SCHEMA}: {type(exc).__name__}: {exc}") from None
    if data.get("id"):
        expected = event.compute_id()
        if data["id"] != expected:
            raise BadEvent(f"{cls.SCHEMA}: id {data['id'][:60]!r} does not match its content "
                           f"(expected {expected!r})")
    return event
