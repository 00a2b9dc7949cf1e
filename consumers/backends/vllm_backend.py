"""vLLM in-process backend (optional extra: pip install 'arena-flywheel[vllm]'; Linux + CUDA GPU).

- One `vllm.LLM` engine per process; a whole batch goes to the engine in one `LLM.chat` call, so
  vLLM's continuous batching and paged attention do the scheduling. Chat templates come from the
  model's tokenizer, as with the transformers backend.
- `options` from the competitor config are passed to `vllm.LLM(...)` as engine arguments
  (gpu_memory_utilization, max_model_len, tensor_parallel_size, enable_lora, max_lora_rank, ...).
- Checkpoints: a directory with `adapter_config.json` is a LoRA adapter and is served through a
  `LoRARequest` on the running engine (no reload); the engine is created with enable_lora when the
  competitor's model is itself an adapter or `options.enable_lora = true`. A full checkpoint re-creates
  the engine in this process (the old one is shut down first to free GPU memory); that takes the
  engine's start-up time, which is why LoRA is the cheap path for flywheel iterations.
- No fallback: without vLLM importable or without a CUDA GPU, construction raises BackendError.
"""
from __future__ import annotations

import gc
import json
import logging
from pathlib import Path
from typing import Any

from .base import BackendError, Completion, GenerationRequest, RetryableError

log = logging.getLogger(__name__)


def _require_vllm():
    try:
        import vllm  # noqa: F401
    except ImportError as exc:
        raise BackendError(
            "the vllm backend needs the vLLM package, which is not importable here "
            f"({exc.__class__.__name__}: {exc}); install the extra on a Linux machine with a CUDA GPU: "
            "pip install 'arena-flywheel[vllm]' (vLLM pins its own torch build), or use backend = "
            "\"transformers\" or an OpenAI-compatible `vllm serve` with backend = \"openai\"") from None
    try:
        import torch
    except ImportError:  # pragma: no cover - vllm depends on torch
        raise BackendError("the vllm backend needs torch with CUDA") from None
    if not torch.cuda.is_available():
        raise BackendError(f"the vllm backend needs a CUDA GPU and torch {torch.__version__} sees none; "
                           "use backend = \"transformers\" (CPU) or \"openai\" against a remote server")
    return vllm


def adapter_base(path: str | Path) -> str | None:
    cfg = Path(path) / "adapter_config.json"
    if not cfg.is_file():
        return None
    try:
        return json.loads(cfg.read_text(encoding="utf-8")).get("base_model_name_or_path") or ""
    except ValueError:
        raise BackendError(f"{cfg} is not valid JSON") from None


class VLLMBackend:
    name = "vllm"

    def __init__(self, model_path: str, *, dtype: str = "auto", engine_args: dict[str, Any] | None = None,
                 base_model: str | None = None):
        self._vllm = _require_vllm()
        if not model_path:
            raise BackendError("the vllm backend needs model = \"/path/or/hub-id\"")
        self.engine_args = dict(engine_args or {})
        self.engine_args.setdefault("dtype", dtype or "auto")
        self.lora_request = None
        self._lora_ids: dict[str, int] = {}
        base = adapter_base(model_path)
        if base is not None:  # the competitor itself is an adapter: engine on its base, adapter per request
            self.base_path = base_model or self.engine_args.pop("base_model", None) or base
            if not self.base_path:
                raise BackendError(f"adapter {model_path!r} names no base model; set options.base_model")
            self.engine_args.setdefault("enable_lora", True)
        else:
            self.base_path = model_path
        self.llm = None
        self._start_engine(self.base_path)
        self.current_path = self.base_path
        if base is not None:
            self._use_adapter(model_path)

    def _start_engine(self, path: str) -> None:
        try:
            self.llm = self._vllm.LLM(model=path, **self.engine_args)
        except TypeError as exc:
            raise BackendError(f"bad vLLM engine option in options: {exc}") from None
        except (OSError, ValueError) as exc:
            raise BackendError(f"vLLM cannot load {path!r}: {exc}") from None
        self.base_path = path

    def _stop_engine(self) -> None:
        llm, self.llm = self.llm, None
        if llm is None:
            return
        engine = getattr(llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            try:
                core.shutdown()
            except Exception:  # noqa: BLE001 - best effort, the engine is being discarded
                log.warning("vLLM engine shutdown raised; continuing", exc_info=True)
        del llm, engine, core
        gc.collect()
        import torch

        torch.cuda.empty_cache()

    def _use_adapter(self, path: str) -> None:
        if not self.engine_args.get("enable_lora"):
            log.warning("checkpoint %s is a LoRA adapter; re-creating the vLLM engine with enable_lora=True "
                        "(set options.enable_lora = true to avoid this restart)", path)
            self.engine_args["enable_lora"] = True
            self._stop_engine()
            self._start_engine(self.base_path)
        from vllm.lora.request import LoRARequest

        lora_id = self._lora_ids.setdefault(str(path), len(self._lora_ids) + 1)
        self.lora_request = LoRARequest(Path(path).name or f"adapter{lora_id}", lora_id, str(path))
        self.current_path = str(path)

    def load(self, path: str) -> None:
        if adapter_base(path) is not None:
            self._use_adapter(path)
            return
        if not Path(path).exists():
            raise BackendError(f"checkpoint {path!r} is not a directory on this machine")
        self.lora_request = None
        self._stop_engine()
        self._start_engine(path)
        self.current_path = path

    def _params(self, r: GenerationRequest):
        kw: dict[str, Any] = {"max_tokens": r.max_new_tokens, "temperature": r.temperature, "top_p": r.top_p}
        if r.seed is not None:
            kw["seed"] = r.seed
        return self._vllm.SamplingParams(**kw)

    def _chat(self, requests: list[GenerationRequest]):
        return self.llm.chat([r.messages for r in requests], sampling_params=[self._params(r) for r in requests],
                             use_tqdm=False, lora_request=self.lora_request, add_generation_prompt=True)

    def generate(self, requests: list[GenerationRequest]) -> list[Completion]:
        import torch

        if not requests:
            return []
        try:
            outs = self._chat(requests)
        except torch.cuda.OutOfMemoryError as exc:
            gc.collect()
            torch.cuda.empty_cache()
            raise RetryableError(f"CUDA out of memory in vLLM: {str(exc).splitlines()[0]}") from None
        except ValueError as exc:
            # vLLM rejects the whole batch when one prompt is too long: isolate it
            if len(requests) == 1:
                return [Completion(text="", error=f"vLLM rejected the request: {exc}", retryable=False)]
            return [c for r in requests for c in self.generate([r])]
        result = []
        for o in outs:
            c = o.outputs[0]
            result.append(Completion(text=c.text, output_tokens=len(c.token_ids), finish_reason=c.finish_reason))
        return result

    def close(self) -> None:
        self._stop_engine()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "path": self.current_path, "base": self.base_path,
                "lora": self.lora_request is not None}
