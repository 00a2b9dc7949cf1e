"""OpenAI-compatible chat completions over HTTP (httpx): vllm serve, TGI, llama.cpp server, SGLang,
Ollama, and hosted APIs.

- POST {base_url}/chat/completions with model, messages, max_tokens, temperature, top_p (and seed when set).
- The API key is read from the environment variable named by `api_key_env` (never from the config file);
  without it no Authorization header is sent, which is what local servers expect.
- A batch is sent as up to `concurrency` requests in flight at once (a thread pool).
- 429, 5xx, timeouts and connection errors are retried with exponential backoff (honouring Retry-After,
  capped) up to `max_retries` times; other 4xx (bad request, context too long, unknown model) are not.
  A request that still fails comes back as a Completion with `error` set and retryable=False, because
  this backend has already retried it: the pool dead-letters it instead of multiplying retries.
- `load(path)`: the checkpoint's path is used as the served model name from then on (e.g. a LoRA
  adapter registered with vLLM's `--lora-modules name=dir`, or a new model loaded into the server).
  With `options.runtime_lora = true` a LoRA adapter directory (adapter_config.json) is loaded into the running
  server through vLLM's runtime endpoint, POST {base_url}/load_lora_adapter {"lora_name", "lora_path"} (the
  server needs VLLM_ALLOW_RUNTIME_LORA_UPDATING=True), and asked for under its name, the directory's name
  (a name the server already has is unloaded first, so a re-trained adapter is not served stale).
  A full checkpoint needs a server of its own: `options.checkpoint_urls` maps a checkpoint's name (its
  directory's name) to that server's base URL, or is a template such as "http://ckpt-{name}:8000/v1"; the
  backend then asks that server for the checkpoint's path as the model (what `vllm serve PATH` serves).
"""
from __future__ import annotations

import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .base import BackendError, Completion, GenerationRequest

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
DEFAULT_BASE_URL = "https://api.openai.com/v1"


class OpenAIBackend:
    name = "openai"

    def __init__(self, model: str, *, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 4, timeout_s: float = 120.0, max_retries: int = 3, backoff_s: float = 0.5,
                 max_backoff_s: float = 20.0, headers: dict[str, str] | None = None,
                 extra_body: dict[str, Any] | None = None, runtime_lora: bool = False,
                 checkpoint_urls: dict[str, str] | str | None = None):
        try:
            import httpx
        except ImportError:  # pragma: no cover - httpx is a core dependency
            raise BackendError("the openai backend needs httpx: pip install httpx") from None
        if not model:
            raise BackendError("the openai backend needs model = \"served-model-name\" (as the server lists it "
                               "under /v1/models)")
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        if not self.base_url.startswith(("http://", "https://")):
            raise BackendError(f"base_url {self.base_url!r} must start with http:// or https:// "
                               f"(e.g. \"http://localhost:8000/v1\")")
        self.api_key_env = api_key_env
        key = os.environ.get(api_key_env, "") if api_key_env else ""
        if not key and self.base_url == DEFAULT_BASE_URL:
            raise BackendError(f"the OpenAI API needs a key: export {api_key_env}=... "
                               f"(or set base_url to a local OpenAI-compatible server)")
        hdrs = {"Content-Type": "application/json"}
        if key:
            hdrs["Authorization"] = f"Bearer {key}"
        hdrs.update(headers or {})
        self.timeout_s = float(timeout_s)
        self.max_retries = max(0, int(max_retries))
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.extra_body = dict(extra_body or {})
        self.runtime_lora = bool(runtime_lora)
        self.checkpoint_urls = checkpoint_urls
        self.home_url = self.base_url  # the base model's server: where LoRA adapters (of that base) are loaded
        self.concurrency = max(1, int(concurrency))
        self._httpx = httpx
        self.client = httpx.Client(base_url=self.base_url, headers=hdrs, timeout=httpx.Timeout(self.timeout_s),
                                   limits=httpx.Limits(max_connections=self.concurrency,
                                                       max_keepalive_connections=self.concurrency))
        self.pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="openai")
        self._lock = threading.Lock()
        self.retries = 0  # total HTTP retries, for stats

    def load(self, path: str) -> None:
        name = os.path.basename(os.path.normpath(path))
        if self.runtime_lora and os.path.isfile(os.path.join(path, "adapter_config.json")):
            self._use_server(self.home_url)
            self.model = self._load_lora(path)
        else:
            url = self._server_for(name)
            if url:
                self._use_server(url)
            self.model = path
        log.info("openai backend now asks %s for model %r", self.base_url, self.model)

    def _server_for(self, name: str) -> str | None:
        urls = self.checkpoint_urls
        url = urls.get(name) if isinstance(urls, dict) else urls.format(name=name) if urls else None
        if url and not url.startswith(("http://", "https://")):
            raise BackendError(f"options.checkpoint_urls for {name!r}: {url!r} must start with http:// or https://")
        return url

    def _use_server(self, url: str) -> None:
        self.base_url = url.rstrip("/")
        self.client.base_url = self.base_url

    def _load_lora(self, path: str) -> str:
        """Load a LoRA adapter into the running server (vLLM's runtime endpoint); its served name."""
        name = os.path.basename(os.path.normpath(path))
        body = {"lora_name": name, "lora_path": os.path.abspath(path)}
        try:
            resp = self.client.post("/load_lora_adapter", json=body)
            if resp.status_code == 400 and "already" in resp.text:  # a stale adapter of that name: replace it
                self.client.post("/unload_lora_adapter", json={"lora_name": name})
                resp = self.client.post("/load_lora_adapter", json=body)
        except self._httpx.HTTPError as exc:
            raise BackendError(f"{self.base_url}/load_lora_adapter: {type(exc).__name__}: {exc}") from None
        if resp.status_code == 404:
            raise BackendError(f"{self.base_url} has no /load_lora_adapter: start vllm serve with "
                               f"VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and --enable-lora")
        if resp.status_code != 200:
            raise BackendError(f"{self.base_url}/load_lora_adapter {name!r} from {path}: HTTP {resp.status_code} "
                               f"{resp.text[:300]}")
        return name

    def _body(self, r: GenerationRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": r.messages, "max_tokens": r.max_new_tokens,
                                "temperature": r.temperature, "top_p": r.top_p}
        if r.seed is not None:
            body["seed"] = r.seed
        body.update(self.extra_body)
        return body

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(self.max_backoff_s, max(0.0, float(retry_after)))
            except ValueError:
                pass
        base = self.backoff_s * (2 ** attempt)
        return min(self.max_backoff_s, base * (0.5 + random.random() / 2))

    def _one(self, r: GenerationRequest) -> Completion:
        httpx = self._httpx
        body = self._body(r)
        last = ""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                resp = self.client.post("/chat/completions", json=body)
            except httpx.TimeoutException as exc:
                last = f"timeout after {self.timeout_s:g}s ({type(exc).__name__})"
            except httpx.TransportError as exc:
                last = f"connection error to {self.base_url}: {exc}"
            else:
                if resp.status_code == 200:
                    return self._parse(resp)
                detail = resp.text[:300].replace("\n", " ")
                last = f"HTTP {resp.status_code} from {self.base_url}: {detail}"
                if resp.status_code not in RETRY_STATUS:
                    if resp.status_code in (401, 403):
                        last += f" (check ${self.api_key_env})"
                    return Completion(text="", error=last, retryable=False)
                retry_after = resp.headers.get("retry-after")
            if attempt < self.max_retries:
                with self._lock:
                    self.retries += 1
                time.sleep(self._delay(attempt, retry_after))
        return Completion(text="", error=f"{last} (after {self.max_retries + 1} attempts)", retryable=False)

    def _parse(self, resp) -> Completion:
        try:
            data = resp.json()
            choice = data["choices"][0]
            msg = choice.get("message") or {}
            text = msg.get("content")
            if text is None:
                text = choice.get("text", "")
            usage = data.get("usage") or {}
            return Completion(text=text or "", output_tokens=int(usage.get("completion_tokens") or 0),
                              finish_reason=choice.get("finish_reason"))
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            return Completion(text="", error=f"malformed chat completion from {self.base_url}: "
                              f"{type(exc).__name__} {exc}; body: {resp.text[:200]}", retryable=True)

    def generate(self, requests: list[GenerationRequest]) -> list[Completion]:
        if len(requests) == 1:
            return [self._one(requests[0])]
        return list(self.pool.map(self._one, requests))

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model, "base_url": self.base_url}
