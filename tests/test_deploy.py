"""compose.yaml agrees with the code: every service command is a real CLI command whose flags argparse
accepts, and every ARENA_/KAFKA_ env var it sets is one the config reads."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from arena_cli.main import COMMANDS, command_module
from arena_flywheel.config import ENV_OVERRIDES

COMPOSE = yaml.safe_load((Path(__file__).resolve().parents[1] / "compose.yaml").read_text())
ARENA = {n: s for n, s in COMPOSE["services"].items() if s.get("command", [None])[0] == "arena"}


def test_compose_has_the_parts():
    assert {"kafka", "postgres"} <= set(COMPOSE["services"])
    assert COMPOSE["services"]["kafka"]["image"].startswith("apache/kafka")
    assert {s["command"][1] for s in ARENA.values()} >= {"ledger", "stream", "generate", "judge", "train"}


def test_the_stream_runs_two_replicas_each_with_a_host_port():
    stream = COMPOSE["services"]["stream"]
    replicas = stream["deploy"]["replicas"]
    host, _, container = stream["ports"][0].rpartition(":")
    lo, _, hi = host.rpartition(":")[2].partition("-")
    assert replicas == 2 and int(hi) - int(lo) + 1 == replicas  # one loopback port per replica
    assert container == stream["command"][stream["command"].index("--web-port") + 1]


def _check_compose_schema(path):
    """check-jsonschema with the Compose specification's schema it ships (vendor.compose-spec): no network."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                           str(path)], capture_output=True, text=True, timeout=120)


def test_compose_file_follows_the_compose_specification(tmp_path):
    pytest.importorskip("check_jsonschema", reason="check-jsonschema is in the dev extra: ./test installs it")
    ok = _check_compose_schema(Path(__file__).resolve().parents[1] / "compose.yaml")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # and the check can fail: a port list given as a number and an unknown service key are refused
    bad = dict(COMPOSE, services={**COMPOSE["services"], "stream": {**COMPOSE["services"]["stream"],
                                                                    "ports": 6066, "replica": 2}})
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    assert _check_compose_schema(tmp_path / "bad.yaml").returncode != 0


@pytest.mark.parametrize("name", sorted(ARENA))
def test_service_command_parses(name):
    import argparse

    argv = ARENA[name]["command"][1:]
    assert argv[0] in COMMANDS, f"{name}: `arena {argv[0]}` is not a CLI command"
    target = command_module(argv[0])
    p = argparse.ArgumentParser(exit_on_error=False)
    target.add_arguments(p)
    p.parse_args(argv[1:])  # raises on an unknown flag


def test_env_vars_are_read_by_the_config():
    for name, svc in ARENA.items():
        env = svc.get("environment") or {}
        for var in env:
            assert var in ENV_OVERRIDES, f"{name}: {var} is not read by arena_flywheel/config.py"
