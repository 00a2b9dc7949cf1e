"""Hostile and malformed input files (issue 17): `arena feed`, `arena leaderboard` and `arena consistency`
give a one-line error (exit 2, no traceback) or, for the feed, a dead letter per bad record while the good
records before and after it are still sent.

The fast tests read through the real readers and the real CLI entry point; the feed's end-to-end test runs
`arena feed` in-process against the test session's broker and reads what reached the ledger.
"""
from __future__ import annotations

import json

import pytest

from arena_cli.main import main
from arena_flywheel.config import LimitsConfig
from arena_flywheel.errors import InputError
from consumers.backends import BackendError
from consumers.backends.replay_backend import read_records as replay_records
from producers.feed import iter_records

DEEP = b"[" * 100_000 + b"]" * 100_000          # far past any nesting limit (and Python's recursion limit)
HUGE_INT = b"9" * 5_000                          # past Python's own int-digits guard (4,300)
BIG = 20 * 1024 * 1024                           # a 20 MB line


def _jsonl(*lines: bytes) -> bytes:
    return b"\n".join(lines) + b"\n"


def _p(prompt: str) -> bytes:
    return json.dumps({"prompt": prompt}).encode()


# name -> (file name, content, location of the bad record, words in its reason)
FEED_INPUTS = {
    "20 MB line": ("big.jsonl", _jsonl(_p("big before"), b'{"prompt": "' + b"x" * BIG + b'"}', _p("big after")),
                   "big.jsonl:2", "bytes"),
    "nested jsonl": ("deep.jsonl", _jsonl(_p("deep before"), b'{"prompt": "d", "x": ' + DEEP + b"}",
                                          _p("deep after")), "deep.jsonl:2", "nested deeper"),
    "nested json": ("deep.json", b"[" + _p("json before") + b", " + DEEP + b", " + _p("json after") + b"]",
                    "deep.json[1]", "nested deeper"),
    "huge int": ("int.jsonl", _jsonl(_p("int before"), b'{"prompt": "i", "n": ' + HUGE_INT + b"}",
                                     _p("int after")), "int.jsonl:2", "digits"),
    "huge int json": ("int.json", b"[" + _p("jint before") + b', {"prompt": "i", "n": -' + HUGE_INT + b"}, "
                      + _p("jint after") + b"]", "int.json[1]", "digits"),
    "csv bad utf-8": ("bad.csv", b"prompt,category\ncsv before,a\nbad \xff\xfe row,b\ncsv after,c\n",
                      "bad.csv:3", "invalid UTF-8"),
    "jsonl bad utf-8": ("utf.jsonl", _jsonl(_p("utf before"), b'{"prompt": "\xff\xfe"}', _p("utf after")),
                        "utf.jsonl:2", "invalid UTF-8"),
}


@pytest.mark.parametrize("case", list(FEED_INPUTS))
def test_feed_reader_turns_a_hostile_record_into_one_error_and_goes_on(tmp_path, case):
    name, content, where, reason = FEED_INPUTS[case]
    path = tmp_path / name
    path.write_bytes(content)
    recs = list(iter_records(str(path), LimitsConfig()))
    bad = [r for r in recs if r.error]
    assert [r.source for r in bad] == [where] and reason in bad[0].error
    assert len(bad[0].raw) <= LimitsConfig().max_record_bytes  # a 20 MB line is never held whole
    assert len(recs) == 3 and recs[1] is bad[0]  # good records before and after it are read
    assert all(isinstance(r.data, dict) and r.data["prompt"].endswith(("before", "after")) for r in (recs[0], recs[2]))


def test_feed_csv_with_a_wrong_header_is_one_input_error(tmp_path):
    path = tmp_path / "wrong.csv"
    path.write_bytes(b"foo,bar\n1,2\n3,4\n")
    with pytest.raises(InputError, match="no CSV header") as exc:
        list(iter_records(str(path)))
    assert "\n" not in str(exc.value)


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err[:2000]
    for n in needles:
        assert n in err, err
    return err


@pytest.mark.slow
def test_cli_feed_dead_letters_each_hostile_record_and_sends_the_rest(cfg, tmp_path, monkeypatch, capsys):
    from arena_flywheel.store import LedgerStore
    from consumers.ledger import Ledger

    monkeypatch.delenv("ARENA_CONFIG", raising=False)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", cfg.kafka.bootstrap_servers)
    monkeypatch.setenv("ARENA_TOPIC_PREFIX", cfg.kafka.topic_prefix)
    monkeypatch.setenv("ARENA_DB_URL", cfg.db.url)
    expect_dead = {}
    for name, content, where, reason in FEED_INPUTS.values():
        path = tmp_path / name
        path.write_bytes(content)
        assert main(["feed", str(path), "--split", "eval"]) == 0
        out = capsys.readouterr().out
        assert "sent 2, duplicates 0, rejected 1" in out, out
        expect_dead[where] = reason
    # the wrong CSV header: one line, nothing sent
    (tmp_path / "wrong.csv").write_bytes(b"foo,bar\n1,2\n")
    assert main(["feed", str(tmp_path / "wrong.csv")]) == 2
    _one_line_error(capsys, "wrong.csv", "no CSV header")
    with Ledger(cfg) as ledger:
        ledger.drain(idle_s=1.0, timeout_s=120)
    store = LedgerStore(cfg.db.url)
    try:
        dead = {d.source: d for d in store.events("deadletter")}
        assert set(dead) == set(expect_dead)
        for where, reason in expect_dead.items():
            assert reason in dead[where].reason, (where, dead[where].reason)
        assert len(dead["big.jsonl:2"].raw) <= 64 * 1024  # an excerpt of the 20 MB line, not all of it
        prompts = {i.user_turns[0] for i in store.events("instruction")}
        assert len(prompts) == 2 * len(FEED_INPUTS)
        assert all(any(p.endswith(g) for g in ("before", "after")) for p in prompts)
    finally:
        store.close()


# ------------------------------------------------------------------------------------- arena leaderboard
BATTLE = json.dumps({"model_a": "x", "model_b": "y", "winner": "model_a"}).encode()
LEADERBOARD_INPUTS = {
    "nested jsonl": ("b.jsonl", _jsonl(BATTLE, b'{"model_a": "x", "model_b": "y", "w": ' + DEEP + b"}"),
                     ":2:", "nested deeper"),
    "nested json": ("b.json", b"[" + BATTLE + b", " + DEEP + b"]", "[1]", "nested deeper"),
    "huge int jsonl": ("b.jsonl", _jsonl(BATTLE, b'{"model_a": "x", "model_b": "y", "score_a": ' + HUGE_INT
                                         + b', "score_b": 1}'), ":2:", "digits"),
    "huge int json": ("b.json", b'[{"model_a": "x", "model_b": "y", "score_a": ' + HUGE_INT + b', "score_b": 1}]',
                      "[0]", "digits"),
    "infinite score": ("b.jsonl", _jsonl(b'{"model_a": "x", "model_b": "y", "score_a": 1e999, "score_b": 1}'),
                       ":1:", "out of range"),
    "invalid utf-8": ("b.jsonl", _jsonl(BATTLE, b'{"model_a": "\xff", "model_b": "y", "winner": "tie"}'),
                      ":2:", "invalid UTF-8"),
    "csv invalid utf-8": ("b.csv", b"model_a,model_b,winner\nx,y,tie\n\xff,y,tie\n", ":3:", "invalid UTF-8"),
    "20 MB line": ("b.jsonl", _jsonl(BATTLE, b'{"model_a": "' + b"x" * BIG + b'"}'), ":2:", "bytes"),
}


@pytest.mark.parametrize("case", list(LEADERBOARD_INPUTS))
def test_leaderboard_hostile_file_is_one_line(tmp_path, monkeypatch, capsys, case):
    monkeypatch.chdir(tmp_path)
    name, content, where, reason = LEADERBOARD_INPUTS[case]
    (tmp_path / name).write_bytes(content)
    assert main(["leaderboard", "--battles", str(tmp_path / name), "--ci", "none"]) == 2
    _one_line_error(capsys, "arena leaderboard:", name + where, reason)


# ------------------------------------------------------------------------------------- arena consistency
REFERENCE = b"model,rating\nA,1100\nB,1000\n"
CONSISTENCY_INPUTS = {
    "non-numeric score": ("bench.csv", b"model,score\na,abc\nb,1\n", "bench.csv:2", "not a number"),
    "bad json": ("bench.jsonl", _jsonl(b'{"model": "a", "score": 2}', b'{"model": "b", "score": '),
                 "bench.jsonl:2", "invalid JSON"),
    "list of ints": ("bench.json", b"[1, 2, 3]", "bench.json[0]", "expected a JSON object"),
    "invalid utf-8": ("bench.csv", b"model,score\na,2\n\xff,1\n", "bench.csv:3", "invalid UTF-8"),
    "nested json": ("bench.jsonl", _jsonl(b'{"model": "a", "score": 2}', b'{"model": "b", "score": ' + DEEP + b"}"),
                    "bench.jsonl:2", "nested deeper"),
    "huge int": ("bench.json", b'[{"model": "a", "score": 2}, {"model": "b", "score": ' + HUGE_INT + b"}]",
                 "bench.json[1]", "digits"),
    "infinite score": ("bench.csv", b"model,score\na,inf\nb,1\n", "bench.csv:2", "finite"),
    "bad samples": ("bench.csv", b'model,score,results\na,2,"[1, 2,"\nb,1,\n', "bench.csv:2", "results"),
    "not json at all": ("bench.json", b"this is not json\n", "bench.json", "JSON"),
}


@pytest.mark.parametrize("case", list(CONSISTENCY_INPUTS))
def test_consistency_hostile_file_is_one_line(tmp_path, monkeypatch, capsys, case):
    monkeypatch.chdir(tmp_path)
    name, content, where, reason = CONSISTENCY_INPUTS[case]
    (tmp_path / name).write_bytes(content)
    (tmp_path / "ref.csv").write_bytes(REFERENCE)
    (tmp_path / "map.json").write_text(json.dumps({"a": "A", "b": "B"}))
    assert main(["consistency", "--benchmark", str(tmp_path / name), "--reference", str(tmp_path / "ref.csv"),
                 "--name-map", str(tmp_path / "map.json")]) == 2
    _one_line_error(capsys, "arena consistency:", where, reason)


# ------------------------------------------------------------------------------------- replay answers
def test_replay_answers_keep_backend_errors(tmp_path):
    deep = tmp_path / "answers.jsonl"
    deep.write_bytes(_jsonl(b'{"question_id": 1, "text": "a"}', b'{"question_id": 2, "text": ' + DEEP + b"}"))
    with pytest.raises(BackendError, match=r"answers\.jsonl:2: .*nested deeper"):
        list(replay_records(deep))
    doc = tmp_path / "outputs.json"  # a .json document that does not parse: one BackendError
    doc.write_bytes(b'[{"instruction": "q", "output": "a"}')
    with pytest.raises(BackendError, match="outputs.json"):
        list(replay_records(doc))
    ok = tmp_path / "ok.json"  # AlpacaEval outputs: a list; its non-objects are skipped as before
    ok.write_bytes(b'[{"instruction": "q", "output": "a"}, 7, {"instruction": "r", "output": "b"}]')
    assert [(i, r["instruction"]) for i, r in replay_records(ok)] == [(1, "q"), (3, "r")]
