"""Issue 22: a user's mistakes give one line on stderr and exit code 2, never a traceback or a new empty
ledger. In-process through arena_cli.main.main (no broker: none of these commands needs one)."""
from __future__ import annotations

import pytest

from arena_cli.main import main
from arena_flywheel.errors import ArenaError
from arena_flywheel.store import LedgerStore


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("ARENA_CONFIG", raising=False)
    return tmp_path


def _one_line_error(capsys, argv, command):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"arena {command}: "), err
    return err


def _ledger(env, monkeypatch):
    url = f"sqlite:///{env / 'ledger.db'}"
    LedgerStore(url).close()  # an existing, empty ledger
    monkeypatch.setenv("ARENA_DB_URL", url)
    return url


# --- defect 6: tracebacks -------------------------------------------------------------------------
def test_export_to_a_missing_directory_is_one_line(env, monkeypatch, capsys):
    _ledger(env, monkeypatch)
    err = _one_line_error(capsys, ["export", "--what", "verdicts", "--out", "/nonexistent-dir/x.jsonl"], "export")
    assert "/nonexistent-dir/x.jsonl" in err


def test_report_to_an_unwritable_directory_is_one_line(env, monkeypatch, capsys):
    _ledger(env, monkeypatch)
    err = _one_line_error(capsys, ["report", "--out", "/proc/x"], "report")
    assert "/proc/x" in err


@pytest.mark.parametrize("value", ["2", "-3", "0", "nan"])
def test_demo_refuses_a_too_small_timeout(env, capsys, value):
    err = _one_line_error(capsys, ["demo", "--fast", "--timeout", value], "demo")
    assert "--timeout" in err
    assert not (env / "arena-data").exists()  # refused before anything started


def test_demo_phase_timeout_is_an_arena_error(tmp_path):
    """A phase that waits past --timeout raises an ArenaError (main prints it as one line)."""
    from arena_cli.demo import Demo, DemoTimeout, Services
    from arena_cli.commands.demo import _plan
    from arena_flywheel.config import load_config

    class Args:
        fast, iterations, stages, timeout = True, None, None, 30.0

    demo = Demo(load_config(None), _plan(Args), tmp_path, live=False, timeout=0.05)
    demo.services = Services()
    with pytest.raises(DemoTimeout) as exc:
        demo.wait_for("the judge", lambda: (False, "0/10 verdicts"), view=None, interval=0.01)
    assert isinstance(exc.value, ArenaError) and "\n" not in str(exc.value)
    assert "the judge" in str(exc.value) and "--timeout" in str(exc.value)


# --- defect 7: a mistyped ledger URL -----------------------------------------------------------------
@pytest.mark.parametrize("argv", [["report", "--out", "rep"], ["watch", "--once"], ["watch", "--once", "--json"],
                                  ["export", "--what", "verdicts"]])
def test_read_only_commands_refuse_a_missing_ledger(env, monkeypatch, capsys, argv):
    monkeypatch.setenv("ARENA_DB_URL", "sqlite:///no-such.db")
    err = _one_line_error(capsys, argv, argv[0])
    assert "no such ledger" in err
    assert not (env / "no-such.db").exists()  # not created
    assert not (env / "rep").exists()  # no report directory either


def test_watch_without_once_refuses_a_missing_ledger(env, monkeypatch, capsys):
    monkeypatch.setenv("ARENA_DB_URL", "sqlite:///no-such.db")
    err = _one_line_error(capsys, ["watch", "--interval", "0.1"], "watch")
    assert "no such ledger" in err and not (env / "no-such.db").exists()


def test_report_on_an_existing_ledger_still_works(env, monkeypatch, capsys):
    _ledger(env, monkeypatch)
    assert main(["report", "--out", "rep"]) == 0
    assert (env / "rep" / "leaderboard.md").exists()
