"""The one small interface every model backend implements, shared by generation and judge pools."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


class BackendError(RuntimeError):
    """A backend cannot work here (missing package, no GPU, bad path): the message says what to do."""


class RetryableError(RuntimeError):
    """A transient failure (HTTP 5xx, timeout, OOM): the pool retries, then dead-letters with the reason."""


@dataclass
class GenerationRequest:
    """One chat completion to produce. `messages` are OpenAI-style dicts: {"role", "content"}."""

    messages: list[dict[str, str]]
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    request_id: str = ""  # e.g. the instruction id; replay matches on it
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Completion:
    text: str
    output_tokens: int = 0
    finish_reason: str | None = None  # "stop", "length", ...
    error: str | None = None  # set when this one request failed; the others in the batch stand
    # False: retrying cannot help (the backend already retried, or no answer exists); pools then
    # dead-letter the request at once instead of spending their own retries on it.
    retryable: bool = True


@runtime_checkable
class Backend(Protocol):
    name: str  # "transformers", "vllm", "openai", "replay", "reference", ...

    def generate(self, requests: list[GenerationRequest]) -> list[Completion]:
        """Answer a batch; one Completion per request, same order."""

    def load(self, path: str) -> None:
        """Hot-plug new weights (a checkpoint directory) without a process restart."""

    def close(self) -> None:
        ...
