"""scripts/bootstrap.sh picks the torch build by the hardware (issue 22, item 12).

The script is run for real against a virtualenv whose `python` is a recording shell script, so the test
sees exactly which pip commands a fresh machine would run, without downloading anything.
"""
import os
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "{log}"
case "$*" in
  "-c import torch") exit 1 ;;                      # torch not installed yet
  *download.pytorch.org*) exit {cpu_index_rc} ;;   # the CPU index reachable or not
  *) exit 0 ;;
esac
"""


def _run(tmp_path: Path, cpu_index_rc: int) -> list[str]:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "calls.log"
    py = venv / "bin" / "python"
    py.write_text(FAKE_PYTHON.format(log=log, cpu_index_rc=cpu_index_rc))
    py.chmod(py.stat().st_mode | stat.S_IEXEC)
    bindir = tmp_path / "bin"  # a PATH without nvidia-smi: a laptop without an NVIDIA GPU
    bindir.mkdir()
    for tool in ("bash", "cat", "sha256sum", "cut", "dirname"):
        src = subprocess.run(["bash", "-c", f"command -v {tool}"], capture_output=True, text=True).stdout.strip()
        (bindir / tool).symlink_to(src)
    env = {"PATH": str(bindir), "ARENA_VENV": str(venv), "HOME": str(tmp_path)}
    r = subprocess.run(["bash", "-c", f'source "{ROOT}/scripts/bootstrap.sh" ""'], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return log.read_text().splitlines()


def test_without_a_gpu_torch_comes_from_the_cpu_index(tmp_path):
    calls = [c for c in _run(tmp_path, cpu_index_rc=0) if "install" in c]
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in calls[0]
    assert not any(c.endswith("install torch==2.13.0") for c in calls)  # no plain (CUDA) fallback needed
    assert "install -e" in calls[-1]


def test_unreachable_cpu_index_falls_back_to_the_plain_requirement(tmp_path):
    calls = [c for c in _run(tmp_path, cpu_index_rc=1) if "install" in c]
    assert "--index-url https://download.pytorch.org/whl/cpu" in calls[0]
    assert calls[1].endswith("install torch==2.13.0")
    assert "install -e" in calls[-1]
