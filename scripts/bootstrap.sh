# Sourced by ./arena and ./test: create or reuse .venv and install what the project needs.
# Reinstalls only when pyproject.toml or this file changed (a stamp holds their hash).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ARENA_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
extras="${1:-}"

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
    if [ -n "${ARENA_TORCH:-}" ]; then torch_req="$ARENA_TORCH"
    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then torch_req="torch"
    else torch_req="torch==2.13.0"; fi
    echo "arena: installing $torch_req (first run only)" >&2
    # shellcheck disable=SC2086
    pip install $torch_req
  fi
  echo "arena: installing arena-flywheel${extras:+[$extras]} into $VENV" >&2
  pip install -e "$ROOT${extras:+[$extras]}"
  echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
