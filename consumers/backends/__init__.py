"""Model backends shared by generation and judge pools: transformers, vLLM, OpenAI-compatible, replay.

`create_backend(cfg_like)` builds one from any object with the fields of a CompetitorConfig or a
JudgeConfig (backend, model, base_url, api_key_env, device, dtype, batch_size, concurrency, timeout_s,
max_retries, options); missing fields take defaults, keyword overrides win. Heavy imports (torch,
vllm) happen only when a backend of that kind is made.
"""
from __future__ import annotations

from typing import Any

from .base import Backend, BackendError, Completion, GenerationRequest, RetryableError
from .openai_backend import OpenAIBackend
from .replay_backend import ReplayBackend
from .transformers_backend import TransformersBackend
from .vllm_backend import VLLMBackend  # imports vllm only when a VLLMBackend is made (optional extra)

BACKENDS = ("transformers", "vllm", "openai", "replay")

__all__ = ["Backend", "BackendError", "Completion", "GenerationRequest", "RetryableError", "BACKENDS",
           "create_backend"]


def _get(cfg_like: Any, name: str, default: Any = None) -> Any:
    if isinstance(cfg_like, dict):
        v = cfg_like.get(name, default)
    else:
        v = getattr(cfg_like, name, default)
    return default if v is None else v


def create_backend(cfg_like: Any, **overrides: Any) -> Backend:
    """Build the backend a CompetitorConfig / JudgeConfig (or a dict with the same keys) asks for."""
    def get(name: str, default: Any = None) -> Any:
        return overrides[name] if overrides.get(name) is not None else _get(cfg_like, name, default)

    kind = get("backend", "transformers")
    model = get("model", "")
    options = dict(get("options", {}) or {})
    if kind == "transformers":
        return TransformersBackend(model, device=get("device", "auto"), dtype=get("dtype", "auto"),
                                   max_batch_size=int(get("batch_size", 8)),
                                   trust_remote_code=bool(options.get("trust_remote_code", False)),
                                   attn_implementation=options.get("attn_implementation"))
    if kind == "vllm":
        base_model = options.pop("base_model", None)
        return VLLMBackend(model, dtype=get("dtype", "auto"), engine_args=options, base_model=base_model)
    if kind == "openai":
        return OpenAIBackend(model, base_url=get("base_url"), api_key_env=get("api_key_env", "OPENAI_API_KEY"),
                             concurrency=int(get("concurrency", 4)), timeout_s=float(get("timeout_s", 120.0)),
                             max_retries=int(get("max_retries", 3)),
                             backoff_s=float(options.get("backoff_s", 0.5)),
                             max_backoff_s=float(options.get("max_backoff_s", 20.0)),
                             headers=options.get("headers"), extra_body=options.get("extra_body"),
                             runtime_lora=bool(options.get("runtime_lora", False)),
                             checkpoint_urls=options.get("checkpoint_urls"))
    if kind == "replay":
        return ReplayBackend(model, questions=options.get("questions"), model_filter=options.get("model_filter"))
    raise BackendError(f"unknown backend {kind!r}: use one of {', '.join(BACKENDS)}")
