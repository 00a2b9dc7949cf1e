# Sourced by ./arena and ./test: create or reuse .venv and install what the project needs.
# Reinstalls only when pyproject.toml or this file changed (a stamp holds their hash).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ARENA_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
extras="${1:-}"
TORCH_VERSION="${ARENA_TORCH_VERSION:-2.13.0}"
TORCH_CPU_INDEX="${ARENA_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "arena: creating virtualenv $VENV" >&2
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.arena-installed${extras:+-${extras//,/-}}"  # one per extras set: ./arena and ./test do not undo each other
want="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/bootstrap.sh" | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
  # Torch first, chosen by the hardware: a bare `torch` from PyPI is a multi-GB CUDA build.
  # ARENA_TORCH overrides the requirement (e.g. "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu").
  if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
    if [ -n "${ARENA_TORCH:-}" ]; then
      echo "arena: installing $ARENA_TORCH (first run only)" >&2
      # shellcheck disable=SC2086
      pip install $ARENA_TORCH
    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
      echo "arena: installing torch with CUDA (first run only)" >&2
      pip install torch
    else
      # No NVIDIA GPU: PyTorch's CPU-only index (about 200 MB, not the multi-GB CUDA build). Where that index
      # cannot be reached (an offline mirror, a proxy), fall back to the plain requirement.
      echo "arena: installing torch==$TORCH_VERSION for CPU (first run only)" >&2
      if ! pip install --retries 0 --timeout 20 "torch==$TORCH_VERSION" --index-url "$TORCH_CPU_INDEX" 2>/dev/null; then
        echo "arena: $TORCH_CPU_INDEX not reachable; installing torch==$TORCH_VERSION from the configured index" >&2
        pip install "torch==$TORCH_VERSION"
      fi
    fi
  fi
  echo "arena: installing arena-flywheel${extras:+[$extras]} into $VENV" >&2
  pip install -e "$ROOT${extras:+[$extras]}"
  echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
