"""Configuration: defaults, file, environment overrides, one-line errors, docs in sync; CLI errors."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from arena_cli.main import main as cli_main
from arena_flywheel.config import ConfigError, load_config, reference_markdown

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_need_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(env={})
    assert cfg.kafka.bootstrap_servers == ""  # embedded broker
    assert cfg.db.url.startswith("sqlite:///")
    assert cfg.ratings.elo_k == 4 and cfg.ratings.scale == 400 and cfg.ratings.base == 10
    assert cfg.topic("verdicts") == "arena.verdicts"


def test_file_then_env_then_overrides(tmp_path):
    f = tmp_path / "arena.toml"
    f.write_text('[kafka]\nbootstrap_servers = "file:9092"\npartitions = 8\n[db]\nurl = "sqlite:///x.db"\n')
    cfg = load_config(f, env={"KAFKA_BOOTSTRAP_SERVERS": "env:9092"})
    assert cfg.kafka.bootstrap_servers == "env:9092" and cfg.kafka.partitions == 8
    cfg = load_config(f, env={"ARENA_DB_URL": "postgresql+psycopg://u@h/db"}, overrides={"kafka.partitions": 2})
    assert cfg.db.url == "postgresql+psycopg://u@h/db" and cfg.kafka.partitions == 2


@pytest.mark.parametrize("text, needle", [
    ("[kafka]\npartitions = 0\n", "kafka.partitions"),
    ("[kafka]\npartitons = 3\n", "unknown key"),
    ("[db]\nurl = \"mysql://x\"\n", "e.g. db.url"),
    ("[judge]\npolicy = \"coin-flip\"\n", "judge.policy"),
    ("[kafka\n", "not valid TOML"),
])
def test_bad_values_get_one_line(tmp_path, text, needle):
    f = tmp_path / "arena.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(f, env={})
    msg = str(err.value)
    assert needle in msg and "\n" not in msg


def test_bad_env_value_names_the_variable():
    with pytest.raises(ConfigError, match=r"\$ARENA_PARTITIONS.*kafka.partitions"):
        load_config(env={"ARENA_PARTITIONS": "many"})


def test_docs_configuration_is_current():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert doc.strip() == reference_markdown().strip(), \
        "docs/configuration.md is stale: python -m arena_flywheel.config > docs/configuration.md"


def test_cli_bad_config_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "arena.toml"
    bad.write_text("[ratings]\nelo_k = -1\n")
    assert cli_main(["--config", str(bad), "topics"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "ratings.elo_k" in err
    # a key that was removed says what replaced it
    bad.write_text("[ratings]\nfailure_margin = 2.0\n")
    assert cli_main(["--config", str(bad), "topics"]) == 2
    assert "min(trainer.threshold_schedule)" in capsys.readouterr().err


def test_cli_unknown_command_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["no-such-command"])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_python_dash_m_runs_the_cli():
    """`python -m arena_cli` is `arena` (the demo starts the stream worker this way)."""
    r = subprocess.run([sys.executable, "-m", "arena_cli", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "consistency" in r.stdout
