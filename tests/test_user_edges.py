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


# --- defect 8: --db on the read-only commands; defect 9: anchored iteration tables -------------------
def _arena_ledger(path, with_it2: bool = False):
    """A demo-shaped ledger: target and its checkpoints battle three fixed opponents (target-vs-all)."""
    import random

    from arena_flywheel.events import Checkpoint
    from tests.test_stream import verdict

    rng = random.Random(7)
    strength = {"target": 0.30, "target@it1-sft": 0.55, "target@it2-sft": 0.85}
    edge = {"ace": 0.0, "bob": 0.15, "cid": -0.15}  # ace is the middle opponent
    comps = ["target", "target@it1-sft"] + (["target@it2-sft"] if with_it2 else [])
    events = [Checkpoint(model="target", checkpoint="it1-sft", path="/ck/1", iteration=1, stage="sft",
                         parent="base")]
    if with_it2:
        events.append(Checkpoint(model="target", checkpoint="it2-sft", path="/ck/2", iteration=2, stage="sft",
                                 parent="it1-sft"))
    for c in comps:
        for o, e in edge.items():
            for i in range(60):
                p = strength[c] - e
                events.append(verdict(f"ins-{c}-{o}-{i}", c, o, "model_a" if rng.random() < p else "model_b"))
    url = f"sqlite:///{path}"
    with LedgerStore(url) as store:
        store.write(events)
    return url


def test_read_only_commands_open_the_ledger_given_by_db(env, monkeypatch, capsys):
    import json

    monkeypatch.delenv("ARENA_DB_URL", raising=False)
    (env / "elsewhere").mkdir()
    url = _arena_ledger(env / "elsewhere" / "demo-ledger.db")
    assert main(["watch", "--once", "--json", "--db", url]) == 0
    snap = json.loads(capsys.readouterr().out)
    assert {r["model"] for r in snap["rows"]} == {"target", "target@it1-sft", "ace", "bob", "cid"}
    assert main(["iterations", "--json", "--db", url]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["checkpoint"] for r in rows] == ["it1-sft"] and rows[0]["rating"] is not None
    assert main(["report", "--db", url, "--out", "rep"]) == 0
    assert main(["leaderboard", "--from-ledger", "--db", url, "--format", "json"]) == 0
    assert "target@it1-sft" in capsys.readouterr().out
    err = _one_line_error(capsys, ["leaderboard", "--battles", "b.jsonl", "--db", url], "leaderboard")
    assert "--from-ledger" in err
    assert "target@it1-sft" in (env / "rep" / "leaderboard.md").read_text()
    assert not (env / "arena-data").exists()  # the default ledger was never touched


def test_iteration_table_pins_a_fixed_opponent_so_old_checkpoints_keep_their_rating(env):
    from arena_cli.iterations import iteration_rows, ledger_checkpoints
    from arena_flywheel.config import load_config

    cfg = load_config(None)
    cfg.ratings.bootstrap_rounds = 20

    def it1(path, with_it2):
        cfg.db.url = _arena_ledger(path, with_it2)
        rows, note = iteration_rows(cfg, ledger_checkpoints(cfg.db.url))
        return next(r for r in rows if r["checkpoint"] == "it1-sft"), note

    before, note = it1(env / "a.db", False)
    after, _ = it1(env / "b.db", True)  # a much stronger checkpoint joins
    # the fixed opponents' mean is pinned (pinning one of them, or centring, moves it1 by 15 or more here)
    assert "anchored: mean of ace, bob, cid = 1000" in note
    assert abs(after["rating"] - before["rating"]) < 3, (before, after)
    assert after["vs_parent"] == pytest.approx(before["vs_parent"], abs=3)


# --- defect 11: the services join the machine's `arena broker` without configuration -------------------
@pytest.mark.slow
def test_services_find_the_broker_arena_broker_runs_here(env, monkeypatch, capsys):
    import json
    import subprocess
    import sys
    import time

    from arena_flywheel.registration import local_broker

    # no broker yet: a service says how to get one, in one line
    err = _one_line_error(capsys, ["checkpoint", "list"], "checkpoint")
    assert "arena broker" in err
    proc = subprocess.Popen([sys.executable, "-m", "arena_cli", "broker", "--port", "0"], cwd=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        reg = env / "arena-data" / "broker.json"
        deadline = time.monotonic() + 60
        while local_broker(env / "arena-data") is None:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else "slow"
            time.sleep(0.2)
        bootstrap = json.loads(reg.read_text())["bootstrap"]
        (env / "ck").mkdir()
        assert main(["checkpoint", "add", "--model", "target", "--path", str(env / "ck"), "--name", "it1-sft"]) == 0
        capsys.readouterr()
        assert main(["checkpoint", "list"]) == 0  # a second process-level command: same broker, same topic
        assert "it1-sft" in capsys.readouterr().out
        assert bootstrap.startswith("127.0.0.1:")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert not reg.exists()  # unregistered on exit
    # a registration left by a killed broker is stale: ignored
    reg.write_text(json.dumps({"bootstrap": bootstrap, "pid": proc.pid}))
    assert local_broker(env / "arena-data") is None
    _one_line_error(capsys, ["checkpoint", "list"], "checkpoint")


# --- defect 10: --split takes the same values everywhere ------------------------------------------------
@pytest.mark.parametrize("command", ["watch", "report", "iterations", "export", "dashboard", "feed"])
def test_every_split_flag_takes_eval_or_train(command):
    from arena_cli.main import build_parser

    parser = build_parser(command)
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    split = next(a for a in sub._actions if "--split" in a.option_strings)
    assert set(split.choices) == {"eval", "train"}, command
