"""arena feed on a real broker into the real ledger: every format and shape, dedup, dead letters, the CLI."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from arena_flywheel.kafka import Publisher
from arena_flywheel.store import LedgerStore
from consumers.ledger import Ledger
from producers.feed import feed_records, iter_records, to_instruction
from tests.conftest import ROOT, shared_data

SHAPES = [
    {"conversations": [{"from": "human", "value": "ShareGPT q"}, {"from": "gpt", "value": "ShareGPT a"}]},
    {"instruction": "Alpaca q", "input": "ctx", "output": "Alpaca a"},
    {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "OpenAI q"}]},
    {"question_id": 7, "category": "math", "turns": ["MT q1", "MT q2"], "reference": ["r1", "r2"]},
    {"uid": "abc", "prompt": "arena-hard q"},
    {"uid": "def", "turns": [{"content": "arena-hard v2 q"}]},
    {"question": "plain q"},
]


def feed_and_store(cfg, path, **kw):
    with Publisher(cfg) as pub:
        stats = feed_records(cfg, iter_records(str(path)), pub, **kw)
    with Ledger(cfg) as ledger:
        ledger.drain(idle_s=1.0)
    return stats, LedgerStore(cfg.db.url)


def test_shapes_map_to_instructions():
    got = [to_instruction(d, split="train", source="t", max_chars=1000) for d in SHAPES]
    assert got[0].user_turns == ["ShareGPT q"] and got[0].reference == "ShareGPT a"
    assert got[1].user_turns == ["Alpaca q\n\nctx"] and got[1].reference == "Alpaca a"
    assert [m.role for m in got[2].messages] == ["system", "user"]
    assert got[3].user_turns == ["MT q1", "MT q2"] and got[3].references == ["r1", "r2"]
    assert got[3].source_id == "7" and got[3].category == "math"
    assert got[4].source_id == "abc" and got[5].user_turns == ["arena-hard v2 q"]
    assert got[6].user_turns == ["plain q"]


@pytest.mark.slow
def test_every_format(cfg, tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": f"format q{i}", "category": "c"} for i in range(3)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in SHAPES))
    (tmp_path / "b.json").write_text(json.dumps({"data": rows}))
    (tmp_path / "c.csv").write_text('prompt,category\n"csv q, with comma",x\ncsv q2,y\n')
    pq.write_table(pa.Table.from_pylist([{"turns": ["pq q1", "pq q2"], "question_id": 1}]), tmp_path / "d.parquet")
    datasets.Dataset.from_list([{"conversations": [{"from": "human", "value": "hf q"}]}]).save_to_disk(
        str(tmp_path / "hf"))
    with Publisher(cfg) as pub:
        total = 0
        for name in ("a.jsonl", "b.json", "c.csv", "d.parquet", "hf"):
            st = feed_records(cfg, iter_records(str(tmp_path / name)), pub, split="eval")
            assert st.rejected == 0, name
            total += st.sent
    assert total == 7 + 3 + 2 + 1 + 1
    with Ledger(cfg) as ledger:
        ledger.drain(idle_s=1.0)
    store = LedgerStore(cfg.db.url)
    ins = store.events("instruction", split="eval")
    assert len(ins) == total
    by_source = {i.source for i in ins}
    assert by_source == {"a.jsonl", "b.json", "c.csv", "d.parquet", "hf"}
    assert any(i.user_turns == ["pq q1", "pq q2"] for i in ins)
    assert any(i.user_turns == ["csv q, with comma"] for i in ins)
    store.close()


@pytest.mark.slow
def test_mt_bench_gives_80_two_turn_instructions(cfg):
    path = shared_data("mt_bench/question.jsonl")
    stats, store = feed_and_store(cfg, path, split="eval")
    assert (stats.sent, stats.duplicates, stats.rejected) == (80, 0, 0)
    ins = store.events("instruction", split="eval")
    assert len(ins) == 80 and all(len(i.user_turns) == 2 for i in ins)
    assert {i.category for i in ins} >= {"writing", "math", "coding"}
    store.close()


@pytest.mark.slow
def test_vicuna_eval_questions_keep_their_ids(cfg):
    path = shared_data("vicuna_eval_2023/question.jsonl")  # {"question_id", "text", "category"}
    stats, store = feed_and_store(cfg, path, split="eval")
    assert (stats.sent, stats.duplicates, stats.rejected) == (80, 0, 0)
    ins = store.events("instruction", split="eval")
    assert sorted(int(i.source_id) for i in ins) == list(range(1, 81))
    assert {i.category for i in ins} >= {"generic", "math", "coding"}
    store.close()


@pytest.mark.slow
def test_thousand_lines_one_broken_and_bad_inputs(cfg, tmp_path):
    lines = [json.dumps({"prompt": f"question number {i}"}).encode() for i in range(1000)]
    lines[500] = b'{"prompt": "unterminated'
    lines += [json.dumps({"prompt": "question number 3"}).encode(),      # a duplicate
              b"\xff\xfe{}",                                              # invalid UTF-8
              json.dumps({"prompt": 42}).encode(),                       # mistyped
              json.dumps({"text": "hi"}).encode(),                       # missing field
              json.dumps({"prompt": "x" * (cfg.feed.max_prompt_chars + 1)}).encode()]  # too long
    path = tmp_path / "big.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    stats, store = feed_and_store(cfg, path)
    assert (stats.sent, stats.duplicates, stats.rejected) == (999, 1, 5)
    assert store.count("instruction") == 999
    dls = {d.source: d for d in store.events("deadletter")}
    assert set(dls) == {"big.jsonl:501", "big.jsonl:1002", "big.jsonl:1003", "big.jsonl:1004", "big.jsonl:1005"}
    assert dls["big.jsonl:501"].reason.startswith("invalid JSON") and dls["big.jsonl:501"].raw == lines[500].decode()
    assert dls["big.jsonl:1002"].reason.startswith("invalid UTF-8") and dls["big.jsonl:1002"].raw == "\\xff\\xfe{}"
    assert "expected a string" in dls["big.jsonl:1003"].reason
    assert "no prompt found" in dls["big.jsonl:1004"].reason
    assert "too long" in dls["big.jsonl:1005"].reason
    store.close()


def _cli_env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "ARENA_CONFIG")}
    env["ARENA_DB_URL"] = f"sqlite:///{tmp_path / 'cli.db'}"
    return env


@pytest.mark.slow
def test_cli_feed_then_export(tmp_path):
    arena = str(ROOT / ".venv" / "bin" / "arena")
    src = tmp_path / "p.jsonl"
    src.write_text(json.dumps({"prompt": "one"}) + "\n" + json.dumps({"prompt": "two"}) + "\nnot json\n")
    env = _cli_env(tmp_path)
    r = subprocess.run([arena, "feed", str(src), "--split", "eval"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert "sent 2, duplicates 0, rejected 1" in r.stdout and "cli.db" in r.stdout
    r = subprocess.run([arena, "export", "--what", "instructions"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    got = [json.loads(line) for line in r.stdout.splitlines()]
    assert sorted(g["messages"][0]["content"] for g in got) == ["one", "two"]
    assert all(g["split"] == "eval" for g in got)
    r = subprocess.run([arena, "export", "--what", "deadletters", "--format", "csv"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert "p.jsonl:3" in r.stdout and "invalid JSON" in r.stdout
    # a missing file is one line, no traceback, and no broker started
    r = subprocess.run([arena, "feed", str(tmp_path / "absent.jsonl")], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "no such file" in r.stderr and "Traceback" not in r.stderr


def _follow(grow, env, sigint, stored: int):
    """`arena feed GROW --follow` started with SIGINT set to `sigint`, once the ledger holds `stored` rows."""
    import signal
    import time

    p = subprocess.Popen([str(ROOT / ".venv" / "bin" / "arena"), "feed", str(grow), "--follow"], cwd=grow.parent,
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))
    store = LedgerStore(env["ARENA_DB_URL"])
    deadline = time.monotonic() + 60
    while store.count("instruction") < stored and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.1)  # the follower has read and stored the file's lines so far
    if store.count("instruction") != stored:
        p.kill()
        raise AssertionError(f"the follower stored {store.count('instruction')} rows, not {stored}: "
                             f"{p.communicate()[1]}")
    return p, store


@pytest.mark.slow
def test_cli_stdin_and_follow(tmp_path):
    import signal
    import time

    arena = str(ROOT / ".venv" / "bin" / "arena")
    env = _cli_env(tmp_path)
    r = subprocess.run([arena, "feed", "-", "--source", "pipe"], input='{"prompt": "from stdin"}\n', cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0 and "sent 1," in r.stdout, r.stderr
    grow = tmp_path / "grow.jsonl"
    grow.write_text(json.dumps({"prompt": "first"}) + "\n")
    # Ctrl-C at a terminal: SIGINT with its default disposition (this test may itself run as a background job
    # of a script, which ignores SIGINT, and a child inherits that)
    p, store = _follow(grow, env, signal.SIG_DFL, stored=2)
    try:
        with grow.open("a") as f:  # a line written in two parts: only the complete line is read
            f.write('{"prompt": "sec')
            f.flush()
            time.sleep(1)
            f.write('ond"}\n' + json.dumps({"prompt": "third"}) + "\n")
        deadline = time.monotonic() + 60
        while store.count("instruction") < 4 and time.monotonic() < deadline:
            time.sleep(0.2)  # the follower's ledger stores lines as they arrive
        assert store.count("instruction") == 4
    finally:
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)  # the follower drains as the member it is: no group rejoin
    assert p.returncode == 0, err
    assert "sent 3, duplicates 0, rejected 0" in out
    assert {i.user_turns[0] for i in store.events("instruction")} == {"from stdin", "first", "second", "third"}
    assert store.events("instruction", source="pipe")[0].user_turns == ["from stdin"]
    store.close()


@pytest.mark.slow
def test_follow_in_the_background_stops_on_sigterm_and_stores_everything(tmp_path):
    """Started by a script in the background (SIGINT ignored, as for `cmd &` without job control) or by a
    supervisor, --follow is stopped with SIGTERM: what it read is sent and stored, exit 0. Before, SIGTERM
    killed it (-15), and the lines not yet drained from the embedded broker were lost with it."""
    import signal
    import time

    env = _cli_env(tmp_path)
    grow = tmp_path / "grow.jsonl"
    grow.write_text(json.dumps({"prompt": "first"}) + "\n")
    p, store = _follow(grow, env, signal.SIG_IGN, stored=1)
    try:
        p.send_signal(signal.SIGINT)  # ignored, as the shell asked
        with grow.open("a") as f:
            f.write(json.dumps({"prompt": "second"}) + "\n")
        time.sleep(0.5)
        assert p.poll() is None
    finally:
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "sent 2, duplicates 0, rejected 0" in out
    assert {i.user_turns[0] for i in store.events("instruction")} == {"first", "second"}
    store.close()
