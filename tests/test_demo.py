"""`arena demo --fast`: the whole flywheel end to end, judged from the demo's own outputs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _env():
    env = dict(os.environ)
    for k in ("KAFKA_BOOTSTRAP_SERVERS", "ARENA_DB_URL", "ARENA_TOPIC_PREFIX"):
        env.pop(k, None)
    return env


@pytest.mark.timeout(1500)
def test_demo_fast_improves_the_target(tmp_path):
    summary_path = tmp_path / "summary.json"
    data_dir = tmp_path / "data"
    proc = subprocess.run(
        [sys.executable, "-m", "arena_flywheel.cli", "demo", "--fast", "--no-live", "--data-dir", str(data_dir),
         "--summary", str(summary_path)],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=1400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    s = json.loads(summary_path.read_text())
    its = s["iterations"]
    assert [r["iteration"] for r in its] == [0, 1, 2, 3]
    first, last = its[0], its[-1]
    assert first["checkpoint"] == "base" and last["checkpoint"] != "base"
    # The flywheel worked: the last checkpoint is rated above the base with non-overlapping 95% CIs.
    assert last["rating"] > first["rating"], its
    assert last["lower"] > first["upper"], its
    for r in its:
        assert r["lower"] <= r["rating"] <= r["upper"] and r["battles"] > 0
    # Every stage produced events.
    for kind in ("instruction", "response", "battle", "verdict", "failure", "checkpoint"):
        assert s["events"].get(kind, 0) > 0, (kind, s["events"])
    assert all(s["failures_used"][str(i)] > 0 for i in (1, 2, 3)), s["failures_used"]
    # The report the demo points to exists.
    if s.get("report"):
        assert (Path(s["report"]) / "leaderboard.md").is_file()
    # The table was printed for a human too.
    assert "rating per iteration" in proc.stdout


def test_demo_refuses_bad_arguments(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "arena_flywheel.cli", "demo", "--iterations", "0"],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "--iterations" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "arena_flywheel.cli", "demo", "--stages", "sft,ppo"],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "ppo" in proc.stderr and "Traceback" not in proc.stderr
