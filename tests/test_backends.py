"""Backends on real parts: a tiny real Llama (transformers), recorded answers from ../shared/data (replay),
a real HTTP server on loopback (openai), and the clear error of vLLM where it is not installed."""
from __future__ import annotations

import json
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from consumers.backends import BackendError, GenerationRequest, create_backend
from tests.conftest import shared_data

PROMPTS = ["What is 12 + 30?", "Reverse the words: red green blue", "Sort", "Count the letters in banana, "
           "then explain why the sky is blue in one sentence.", "hello"]


def peaky_model(src: Path, dst: Path, seed: int) -> Path:
    """Copy the tiny model with large random weights, so greedy outputs are varied and seed-dependent
    (the default init of a random tiny model answers nearly the same token everywhere)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    model.save_pretrained(dst)
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, dst / f.name)
    return dst


@pytest.fixture(scope="module")
def peaky(tiny_model, tmp_path_factory):
    base = tmp_path_factory.mktemp("peaky")
    return peaky_model(tiny_model, base / "a", 1), peaky_model(tiny_model, base / "b", 2)


def req(text, **kw):
    return GenerationRequest(messages=[{"role": "user", "content": text}], **kw)


# ---------------------------------------------------------------------------------------- transformers
def test_transformers_batched_equals_one_at_a_time(peaky):
    b = create_backend({"backend": "transformers", "model": str(peaky[0]), "device": "cpu", "batch_size": 8})
    try:
        assert b.device == "cpu" and str(b.torch_dtype) == "torch.float32"
        reqs = [req(p, max_new_tokens=10) for p in PROMPTS]
        batched = b.generate(reqs)
        single = [b.generate([r])[0] for r in reqs]
        assert [c.text for c in batched] == [c.text for c in single]
        assert len({c.text for c in batched}) > 1, "the peaky model should answer differently per prompt"
        for c in batched:
            assert c.error is None and 1 <= c.output_tokens <= 10 and c.finish_reason in ("stop", "length")
        # the chat template is what the model sees
        assert b.render([{"role": "user", "content": "hi"}]).endswith("<|im_start|>assistant\n")
    finally:
        b.close()


def test_transformers_load_swaps_weights_in_place(peaky):
    a, bdir = peaky
    b = create_backend({"backend": "transformers", "model": str(a), "device": "cpu"})
    try:
        reqs = [req(p, max_new_tokens=8) for p in PROMPTS]
        first = [c.text for c in b.generate(reqs)]
        param = next(b.model.parameters())
        ptr = param.data_ptr()
        b.load(str(bdir))
        assert next(b.model.parameters()).data_ptr() == ptr, "same-shape checkpoints are copied in place"
        second = [c.text for c in b.generate(reqs)]
        assert second != first
        b.load(str(a))
        assert [c.text for c in b.generate(reqs)] == first
        with pytest.raises(BackendError, match="not a directory"):
            b.load(str(a / "nope"))
    finally:
        b.close()


def test_transformers_context_too_long_fails_only_that_request(tiny_model):
    b = create_backend({"backend": "transformers", "model": str(tiny_model), "device": "cpu"})
    try:
        long = " ".join(f"w{i}x" for i in range(700))  # far beyond the 512 positions of the tiny model
        out = b.generate([req("hello", max_new_tokens=4), req(long, max_new_tokens=4)])
        assert out[0].error is None
        assert "context too long" in out[1].error and out[1].retryable is False
    finally:
        b.close()


def test_transformers_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(BackendError, match="cannot load"):
        create_backend({"backend": "transformers", "model": str(tmp_path / "missing"), "device": "cpu"})


# ---------------------------------------------------------------------------------------- replay
def test_replay_fastchat_vicuna_answers():
    answers = shared_data("vicuna_eval_2023/answer/answer_bard.jsonl")
    questions = [json.loads(line) for line in (answers.parent.parent / "question.jsonl").open()]
    b = create_backend({"backend": "replay", "model": str(answers)})
    recorded = {json.loads(line)["question_id"]: json.loads(line)["text"] for line in answers.open()}
    q = questions[4]
    by_id = b.generate([req("anything", request_id="inst-1", metadata={"source_id": str(q["question_id"])})])[0]
    by_text = b.generate([req("  " + q["text"].replace(" ", "  ") + "\n")])[0]  # whitespace-insensitive
    assert by_id.text == by_text.text == recorded[q["question_id"]]
    missing = b.generate([req("a question nobody answered")])[0]
    assert missing.error and "no recorded answer" in missing.error and missing.retryable is False


def test_replay_multi_turn_picks_the_turn():
    ref = shared_data("mt_bench/reference_answer/gpt-4.jsonl")
    rec = json.loads(ref.open().readline())
    b = create_backend({"backend": "replay", "model": str(ref)})
    turn1 = [{"role": "user", "content": "q1"}]
    turn2 = turn1 + [{"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]
    meta = {"source_id": str(rec["question_id"])}
    out = b.generate([GenerationRequest(messages=turn1, metadata=meta), GenerationRequest(messages=turn2,
                                                                                         metadata=meta)])
    assert [c.text for c in out] == rec["choices"][0]["turns"][:2]
    turn3 = turn2 + [{"role": "assistant", "content": "a2"}, {"role": "user", "content": "q3"}]
    assert "turn 3" in b.generate([GenerationRequest(messages=turn3, metadata=meta)])[0].error


def test_replay_arena_hard_answers():
    path = shared_data("arena_hard_v0.1/model_answer/gpt-4-0314.jsonl")
    q = json.loads((path.parent.parent / "question.jsonl").open().readline())
    rec = next(json.loads(line) for line in path.open() if json.loads(line)["uid"] == q["uid"])
    expected = rec["messages"][-1]["content"]["answer"]
    b = create_backend({"backend": "replay", "model": str(path)})
    assert b.generate([req(q["prompt"])])[0].text == expected
    assert b.generate([req("x", metadata={"source_id": q["uid"]})])[0].text == expected


def test_replay_alpaca_eval_and_old_arena_hard_layout(tmp_path):
    alpaca = tmp_path / "model_outputs.json"
    alpaca.write_text(json.dumps([{"instruction": "Say hi.", "output": "Hi!", "generator": "m"},
                                  {"instruction": "Count to 3.", "output": "1 2 3", "generator": "m"}]))
    b = create_backend({"backend": "replay", "model": str(alpaca)})
    assert [c.text for c in b.generate([req("Count to 3."), req("Say hi.")])] == ["1 2 3", "Hi!"]
    old = tmp_path / "old.jsonl"
    old.write_text(json.dumps({"question_id": "abc", "model_id": "m", "choices": [
        {"index": 0, "turns": [{"content": "answer one", "token_len": 3}]}]}) + "\n")
    b.load(str(old))  # hot-plug: another answers file
    c = b.generate([req("?", metadata={"source_id": "abc"})])[0]
    assert (c.text, c.output_tokens) == ("answer one", 3)
    with pytest.raises(BackendError, match="not found"):
        create_backend({"backend": "replay", "model": str(tmp_path / "nope.jsonl")})


# ---------------------------------------------------------------------------------------- openai
class ChatServer:
    """A small OpenAI-compatible chat-completions server on loopback, with scripted misbehaviour:
    model "flaky" answers 500 the first time it sees a prompt, "busy" answers 429 once, "slow" sleeps,
    "bad" answers 400. Records the Authorization header and the peak number of requests in flight."""

    def __init__(self):
        self.seen: dict[str, int] = {}
        self.lock = threading.Lock()
        self.in_flight = 0
        self.peak = 0
        self.auth: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code, body, headers=None):
                data = json.dumps(body).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.in_flight += 1
                    server.peak = max(server.peak, server.in_flight)
                    server.auth.append(self.headers.get("Authorization"))
                    last = body["messages"][-1]["content"]
                    key = f"{body['model']}|{last}"
                    server.seen[key] = n = server.seen.get(key, 0) + 1
                try:
                    if self.path != "/v1/chat/completions":
                        return self._send(404, {"error": "no such route"})
                    model = body["model"]
                    if model == "flaky" and n == 1:
                        return self._send(500, {"error": "upstream hiccup"})
                    if model == "busy" and n == 1:
                        return self._send(429, {"error": "slow down"}, {"Retry-After": "0"})
                    if model == "bad":
                        return self._send(400, {"error": "context length exceeded"})
                    time.sleep(1.0 if model == "slow" else 0.05)
                    text = f"echo({model}): {last}"
                    self._send(200, {"id": "x", "object": "chat.completion", "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 3, "completion_tokens": len(text.split())}})
                finally:
                    with server.lock:
                        server.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def chat_server():
    s = ChatServer()
    yield s
    s.stop()


def openai(server, model, **kw):
    cfg = {"backend": "openai", "model": model, "base_url": server.base_url, "api_key_env": "ARENA_TEST_KEY",
           "options": {"backoff_s": 0.01}}
    cfg.update(kw)
    return create_backend(cfg)


def test_openai_batch_concurrency_and_auth(chat_server, monkeypatch):
    monkeypatch.setenv("ARENA_TEST_KEY", "sk-test")
    b = openai(chat_server, "echo", concurrency=3)
    try:
        out = b.generate([req(f"q{i}", max_new_tokens=5) for i in range(7)])
        assert [c.text for c in out] == [f"echo(echo): q{i}" for i in range(7)]
        assert all(c.finish_reason == "stop" and c.output_tokens == 2 for c in out)
        assert 1 < chat_server.peak <= 3
        assert set(chat_server.auth) == {"Bearer sk-test"}
        b.load("echo-ckpt2")  # hot-plug: the served model name
        assert b.generate([req("z")])[0].text == "echo(echo-ckpt2): z"
    finally:
        b.close()


def test_openai_retries_500_and_429_then_succeeds(chat_server):
    b = openai(chat_server, "flaky")
    try:
        c = b.generate([req("hello")])[0]
        assert c.error is None and c.text == "echo(flaky): hello"
        assert b.retries == 1 and chat_server.seen["flaky|hello"] == 2
        assert chat_server.auth == [None, None]  # no key in the environment: no header
    finally:
        b.close()
    b = openai(chat_server, "busy")
    try:
        assert b.generate([req("x")])[0].text == "echo(busy): x"
    finally:
        b.close()


def test_openai_timeout_and_client_error(chat_server):
    b = openai(chat_server, "slow", timeout_s=0.2, max_retries=1)
    try:
        t = time.monotonic()
        c = b.generate([req("wait")])[0]
        assert "timeout" in c.error and "2 attempts" in c.error and c.retryable is False
        assert time.monotonic() - t < 2.0
    finally:
        b.close()
    b = openai(chat_server, "bad")
    try:
        c = b.generate([req("too long")])[0]
        assert "HTTP 400" in c.error and "context length" in c.error and c.retryable is False
        assert chat_server.seen["bad|too long"] == 1  # a 4xx is not retried
    finally:
        b.close()


def test_openai_needs_key_for_the_hosted_api(monkeypatch):
    monkeypatch.delenv("ARENA_TEST_KEY", raising=False)
    with pytest.raises(BackendError, match="ARENA_TEST_KEY"):
        create_backend({"backend": "openai", "model": "gpt-4o-mini", "api_key_env": "ARENA_TEST_KEY"})


# ---------------------------------------------------------------------------------------- vllm, factory
def test_vllm_without_vllm_is_a_clear_error():
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here; the clear-error path is for machines without it")
    with pytest.raises(BackendError, match=r"pip install 'arena-flywheel\[vllm\]'"):
        create_backend({"backend": "vllm", "model": "some/model"})


def test_factory_rejects_unknown_backend():
    with pytest.raises(BackendError, match="unknown backend 'reference'"):
        create_backend({"backend": "reference"})


def test_transformers_hot_plugs_a_lora_adapter(peaky, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    a, _ = peaky
    torch.manual_seed(3)
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(a),
                          LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    b = create_backend({"backend": "transformers", "model": str(a), "device": "cpu"})
    try:
        reqs = [req(p, max_new_tokens=8) for p in PROMPTS]
        base = [c.text for c in b.generate(reqs)]
        b.load(str(tmp_path / "adapter"))
        assert [c.text for c in b.generate(reqs)] != base
        b.load(str(a))  # back to the base weights, in place
        assert [c.text for c in b.generate(reqs)] == base
    finally:
        b.close()
