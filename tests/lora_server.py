"""An OpenAI-compatible server process with vLLM's runtime LoRA endpoints, as vLLM documents them, for the tests.

    python tests/lora_server.py PORT_FILE BASE_MODEL

- POST /v1/load_lora_adapter {"lora_name", "lora_path"}: only when VLLM_ALLOW_RUNTIME_LORA_UPDATING is true
  (otherwise the route does not exist: 404). 200 with "Success: LoRA adapter '<name>' added successfully."; 400
  with vLLM's error object when the name is loaded already or the path has no adapter_config.json.
- POST /v1/unload_lora_adapter {"lora_name"}: 200 "Success: LoRA adapter '<name>' removed successfully.", or 404.
- GET /v1/models: the base model and the loaded adapters.
- POST /v1/chat/completions: the answer names the model (or adapter) that answered and the adapter's path, so a
  test sees which weights served it; an unknown model is vLLM's 404 "The model `x` does not exist.".
It writes its port to PORT_FILE once it listens. Not vLLM: no weights are loaded.
"""
from __future__ import annotations

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ADAPTERS: dict[str, str] = {}
RUNTIME_LORA = os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "").lower() in ("1", "true")


def error(message: str, code: int) -> dict:
    kind = {400: "BadRequestError", 404: "NotFoundError"}.get(code, "Error")
    return {"object": "error", "message": message, "type": kind, "param": None, "code": code}


class Handler(BaseHTTPRequestHandler):
    base = ""

    def log_message(self, *a):
        pass

    def _send(self, code: int, body) -> None:
        data = (json.dumps(body) if not isinstance(body, str) else body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json" if not isinstance(body, str) else "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        if self.path != "/v1/models":
            return self._send(404, error("Not Found", 404))
        names = [self.base, *ADAPTERS]
        self._send(200, {"object": "list", "data": [{"id": n, "object": "model"} for n in names]})

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if self.path == "/v1/load_lora_adapter" and RUNTIME_LORA:
            name, path = body.get("lora_name"), body.get("lora_path")
            if not name or not path:
                return self._send(400, error("Both 'lora_name' and 'lora_path' must be provided.", 400))
            if name in ADAPTERS:
                return self._send(400, error(f"The lora adapter '{name}' has already been loaded.", 400))
            if not (Path(path) / "adapter_config.json").is_file():
                return self._send(400, error(f"Loading lora {name} failed: No adapter found for {path}", 400))
            ADAPTERS[name] = path
            return self._send(200, f"Success: LoRA adapter '{name}' added successfully.")
        if self.path == "/v1/unload_lora_adapter" and RUNTIME_LORA:
            name = body.get("lora_name")
            if name not in ADAPTERS:
                return self._send(404, error(f"The lora adapter '{name}' cannot be found.", 404))
            del ADAPTERS[name]
            return self._send(200, f"Success: LoRA adapter '{name}' removed successfully.")
        if self.path == "/v1/chat/completions":
            model = body.get("model")
            if model != self.base and model not in ADAPTERS:
                return self._send(404, error(f"The model `{model}` does not exist.", 404))
            text = f"{model} ({ADAPTERS.get(model, 'base weights')}) says: {body['messages'][-1]['content']}"
            return self._send(200, {"id": "cmpl-1", "object": "chat.completion", "model": model, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": len(text.split())}})
        self._send(404, error("Not Found", 404))


def main() -> None:
    port_file, Handler.base = sys.argv[1], sys.argv[2]
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    tmp = port_file + ".tmp"
    Path(tmp).write_text(str(httpd.server_address[1]))
    os.replace(tmp, port_file)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
