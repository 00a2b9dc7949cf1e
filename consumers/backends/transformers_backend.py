"""Hugging Face transformers backend: CPU or CUDA, batched generation with left padding.

- Prompts are rendered with the tokenizer's chat template (add_generation_prompt=True). A tokenizer
  without one gets a plain "role: content" transcript and a warning, once.
- dtype "auto": float32 on CPU; bfloat16 on CUDA when the GPU supports it, else float16.
- Requests in a batch that share sampling settings go to one `model.generate` call (chunks of
  `max_batch_size`); greedy when temperature == 0.
- `load(path)` hot-plugs a checkpoint without a restart: a full checkpoint with the same tensor shapes
  is copied into the live parameters in place (no second copy of the model in memory); a PEFT/LoRA
  adapter directory is applied to the base weights and merged; anything else (new architecture or
  vocabulary) is a full reload.
- CUDA out-of-memory raises RetryableError (the pool retries, splitting the batch); a prompt that does
  not fit the model's context gives that one request an error, the others stand.
"""
from __future__ import annotations

import gc
import logging
import threading
from pathlib import Path
from typing import Any

from .base import BackendError, Completion, GenerationRequest, RetryableError

# Loading is serialized per process: transformers' lazy module raises ImportError to a second thread
# importing it at the same time, and from_pretrained builds modules on the meta device through
# process-global patches, so two threads loading at once (several pools in one process, as in the
# demo) leave meta tensors behind. RLock: _load_model runs inside the constructor's hold.
_LOAD_LOCK = threading.RLock()

log = logging.getLogger(__name__)


def _torch():
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is installed by ./arena
        raise BackendError("the transformers backend needs torch: run ./arena once (it installs a CPU or CUDA "
                           "build for this machine) or pip install torch") from None
    return torch


def pick_device(device: str = "auto") -> str:
    torch = _torch()
    if device in ("", "auto"):
        if torch.cuda.is_available():
            return "cuda"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendError(f"device {device!r} asked for but no CUDA GPU is visible to torch "
                           f"(torch {torch.__version__}); use device = \"cpu\" or \"auto\"")
    return device


def pick_dtype(dtype: str, device: str):
    torch = _torch()
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}
    if dtype in ("", "auto"):
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in names:
        raise BackendError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16")
    return names[dtype]


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def _weight_files(path: Path) -> list[Path]:
    st = sorted(path.glob("*.safetensors"))
    if st:
        return st
    return sorted(path.glob("pytorch_model*.bin"))


class TransformersBackend:
    name = "transformers"

    def __init__(self, model_path: str, *, device: str = "auto", dtype: str = "auto", max_batch_size: int = 8,
                 trust_remote_code: bool = False, attn_implementation: str | None = None):
        if not model_path:
            raise BackendError("the transformers backend needs a model: set model = \"/path/to/checkpoint\" "
                               "or a hub id such as \"Qwen/Qwen2.5-0.5B-Instruct\"")
        self.device = pick_device(device)
        self.torch_dtype = pick_dtype(dtype, self.device)
        self.max_batch_size = max(1, int(max_batch_size))
        self.trust_remote_code = trust_remote_code
        self.attn_implementation = attn_implementation
        self.base_path = str(model_path)
        self.current_path = str(model_path)
        self._lock = threading.Lock()  # generate and load never overlap
        self._warned_template = False
        with _LOAD_LOCK:
            self.tokenizer = self._load_tokenizer(self.base_path)
            self.model = self._load_model(self.base_path)

    # ------------------------------------------------------------------ loading
    def _load_tokenizer(self, path: str):
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(path, trust_remote_code=self.trust_remote_code)
        except (OSError, ValueError) as exc:
            raise BackendError(f"cannot load a tokenizer from {path!r}: {exc}") from None
        tok.padding_side = "left"
        if tok.pad_token is None:
            if tok.eos_token is None:
                raise BackendError(f"tokenizer at {path!r} has neither a pad nor an eos token")
            tok.pad_token = tok.eos_token
        return tok

    def _load_model(self, path: str):
        from transformers import AutoModelForCausalLM

        kw: dict[str, Any] = {"dtype": self.torch_dtype, "trust_remote_code": self.trust_remote_code}
        if self.attn_implementation:
            kw["attn_implementation"] = self.attn_implementation
        try:
            with _LOAD_LOCK:
                model = AutoModelForCausalLM.from_pretrained(path, **kw)
                model.to(self.device)
        except (OSError, ValueError) as exc:
            raise BackendError(f"cannot load a causal LM from {path!r}: {exc}") from None
        model.eval()
        return model

    def _copy_in_place(self, path: Path) -> bool:
        """Copy a checkpoint's tensors into the live model when every name and shape matches."""
        torch = _torch()
        files = _weight_files(path)
        if not files:
            return False
        params = dict(self.model.named_parameters())
        params.update(dict(self.model.named_buffers()))
        state: dict[str, Any] = {}
        for f in files:
            if f.suffix == ".safetensors":
                from safetensors.torch import load_file

                state.update(load_file(str(f), device="cpu"))
            else:
                state.update(torch.load(str(f), map_location="cpu", weights_only=True))
        if any(k not in params or tuple(params[k].shape) != tuple(v.shape) for k, v in state.items()):
            return False
        missing = [k for k in params if k not in state and k in dict(self.model.named_parameters())]
        tied = bool(getattr(self.model.config, "tie_word_embeddings", False))
        if any(not (tied and "lm_head" in k) for k in missing):
            return False
        with torch.no_grad():
            for k, v in state.items():
                params[k].copy_(v.to(params[k].dtype))
        return True

    def load(self, path: str) -> None:
        """Hot-plug the checkpoint at `path` (full weights or a PEFT adapter)."""
        p = Path(path)
        if not p.is_dir():
            raise BackendError(f"checkpoint {path!r} is not a directory on this machine")
        with self._lock:
            if is_adapter_dir(p):
                self._load_adapter(p)
            else:
                self._load_full(p)
            self.current_path = str(p)
        log.info("transformers backend now serves %s", path)

    def _load_full(self, p: Path) -> None:
        same_tokenizer = True
        if (p / "tokenizer_config.json").is_file():
            tok = self._load_tokenizer(str(p))
            same_tokenizer = tok.get_vocab() == self.tokenizer.get_vocab()
            self.tokenizer = tok
        if same_tokenizer and self._unwrap_ok() and self._copy_in_place(p):
            return
        self._release_model()
        self.model = self._load_model(str(p))

    def _unwrap_ok(self) -> bool:
        return not hasattr(self.model, "peft_config")

    def _load_adapter(self, p: Path) -> None:
        try:
            from peft import PeftModel
        except ImportError:
            raise BackendError("checkpoint is a LoRA/PEFT adapter but peft is not installed: pip install peft") from None
        # Adapters apply to the base weights, never on top of a previous checkpoint.
        if self.current_path != self.base_path:
            if not self._copy_in_place(Path(self.base_path)):
                self._release_model()
                self.model = self._load_model(self.base_path)
        if (p / "tokenizer_config.json").is_file():
            self.tokenizer = self._load_tokenizer(str(p))
        try:
            merged = PeftModel.from_pretrained(self.model, str(p)).merge_and_unload()
        except (OSError, ValueError, KeyError) as exc:
            raise BackendError(f"cannot apply adapter {str(p)!r} to base {self.base_path!r}: {exc}") from None
        merged.eval()
        self.model = merged
        # merged weights now differ from base: the next adapter must restore base first
        self.current_path = str(p)

    def _release_model(self) -> None:
        torch = _torch()
        self.model = None
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ generation
    def render(self, messages: list[dict[str, str]]) -> str:
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        if not self._warned_template:
            log.warning("tokenizer at %s has no chat template; using a plain 'role: content' transcript",
                        self.current_path)
            self._warned_template = True
        lines = [f"{m['role']}: {m['content']}" for m in messages]
        return "\n".join(lines) + "\nassistant:"

    def context_limit(self) -> int | None:
        cfg = self.model.config
        for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            v = getattr(cfg, attr, None)
            if isinstance(v, int) and v > 0:
                return v
        return None

    def generate(self, requests: list[GenerationRequest]) -> list[Completion]:
        out: list[Completion | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            # seeds do not split batches: a sampled chunk is seeded with its first request's seed
            key = (float(r.temperature), float(r.top_p), int(r.max_new_tokens))
            groups.setdefault(key, []).append(i)
        with self._lock:
            for (temp, top_p, max_new), idxs in groups.items():
                for s in range(0, len(idxs), self.max_batch_size):
                    chunk = idxs[s:s + self.max_batch_size]
                    seed = requests[chunk[0]].seed
                    for i, c in zip(chunk, self._generate_chunk([requests[i] for i in chunk], temp, top_p,
                                                                max_new, seed)):
                        out[i] = c
        return out  # type: ignore[return-value]

    def _generate_chunk(self, reqs: list[GenerationRequest], temp: float, top_p: float, max_new: int,
                        seed: int | None) -> list[Completion]:
        torch = _torch()
        tok = self.tokenizer
        texts = [self.render(r.messages) for r in reqs]
        ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        limit = self.context_limit()
        results: list[Completion | None] = [None] * len(reqs)
        live = []
        for i, seq in enumerate(ids):
            if limit is not None and len(seq) >= limit:
                results[i] = Completion(text="", error=f"context too long: prompt has {len(seq)} tokens, "
                                        f"the model's context is {limit}", retryable=False)
            else:
                live.append(i)
        if not live:
            return results  # type: ignore[return-value]
        longest = max(len(ids[i]) for i in live)
        budget = max_new if limit is None else max(1, min(max_new, limit - longest))
        batch = tok.pad({"input_ids": [ids[i] for i in live]}, padding=True, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = tok.eos_token_id
        gen_kw: dict[str, Any] = {"max_new_tokens": budget, "pad_token_id": tok.pad_token_id, "eos_token_id": eos}
        if temp > 0:
            gen_kw.update(do_sample=True, temperature=temp, top_p=top_p)
            if seed is not None:
                torch.manual_seed(seed)
        else:
            gen_kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        try:
            with torch.inference_mode():
                gen = self.model.generate(**batch, **gen_kw)
        except torch.cuda.OutOfMemoryError as exc:
            del batch
            gc.collect()
            torch.cuda.empty_cache()
            raise RetryableError(f"CUDA out of memory generating a batch of {len(live)}: {exc}".splitlines()[0]) \
                from None
        new = gen[:, batch["input_ids"].shape[1]:].cpu()
        eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos])
        for row, i in zip(new.tolist(), live):
            n, stopped = 0, False
            for t in row:
                if t in eos_ids:
                    stopped = True
                    break
                n += 1
            text = tok.decode(row[:n], skip_special_tokens=True)
            results[i] = Completion(text=text, output_tokens=n + (1 if stopped else 0),
                                    finish_reason="stop" if stopped else "length")
        return results  # type: ignore[return-value]

    def close(self) -> None:
        with self._lock:
            self._release_model()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "path": self.current_path, "device": self.device,
                "dtype": str(self.torch_dtype).replace("torch.", "")}
