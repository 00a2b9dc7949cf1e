"""`arena leaderboard` views (issue 20) and rough edges (issue 22): --baseline (arena-hard's show_result: the
predicted win rate against a baseline with a bootstrap CI, the observed win rate and the battle count),
--category and the average answer length, "-" for no CI, the split named when nothing is rated, and a
closed pipe on stdout (`| head -1`) that ends the command quietly."""
from __future__ import annotations

import csv
import io
import os
import json
import random
import subprocess
import sys

import numpy as np
import pytest

from arena_cli.commands.leaderboard import counts_from_file, file_views, read_file, write_out
from arena_cli.main import main
from arena_flywheel.ratings import BradleyTerry, PairCounts

# x vs y: x wins 6, ties 2, loses 2 (score 7 of 10); y vs z: y wins 3, loses 1; z never meets x.
HAND = ([("x", "y", "model_a")] * 6 + [("x", "y", "tie")] * 2 + [("y", "x", "model_a")] * 2
        + [("y", "z", "model_a")] * 3 + [("z", "y", "model_a")])


def _write(path, battles, extra=lambda i: {}):
    path.write_text("".join(json.dumps({"model_a": a, "model_b": b, "winner": w, **extra(i)}) + "\n"
                            for i, (a, b, w) in enumerate(battles)))
    return path


def _run(capsys, *argv):
    assert main(["leaderboard", *argv]) == 0
    out = capsys.readouterr()
    return out.out, out.err


@pytest.fixture(autouse=True)
def _here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_baseline_two_models_by_hand(tmp_path, capsys):
    """Two models: the BT fit reproduces the observed score, so the predicted win rate is 7/10 exactly,
    the observed one too, over 10 battles; the baseline itself is 50% with no direct battles."""
    f = _write(tmp_path / "b.jsonl", HAND[:10])
    out, _ = _run(capsys, "--battles", str(f), "--baseline", "y", "--format", "json", "--rounds", "200")
    rows = {r["model"]: r for r in json.loads(out)}
    x, y = rows["x"], rows["y"]
    assert x["baseline"] == "y" and x["baseline_battles"] == 10
    assert x["baseline_win_rate"] == pytest.approx(0.7, abs=1e-9)
    assert x["baseline_observed"] == pytest.approx(0.7)
    assert x["baseline_lower"] < 0.7 < x["baseline_upper"]
    assert 0.3 < x["baseline_lower"] and x["baseline_upper"] <= 1.0
    assert y["baseline_win_rate"] == 0.5 and y["baseline_observed"] is None and y["baseline_battles"] == 0
    assert y["baseline_lower"] == y["baseline_upper"] == 0.5


def test_baseline_ci_contains_point_and_matches_rating_replicates(tmp_path, capsys):
    """Three models, z never met x: its predicted win rate vs x comes from the ratings (through y), observed
    is empty; every CI contains its point, and the CI is the rating replicates' (same seed, same rounds)."""
    f = _write(tmp_path / "b.jsonl", HAND)
    out, _ = _run(capsys, "--battles", str(f), "--baseline", "x", "--format", "json", "--rounds", "100",
                  "--seed", "3")
    rows = {r["model"]: r for r in json.loads(out)}
    for r in rows.values():
        assert r["baseline_lower"] <= r["baseline_win_rate"] <= r["baseline_upper"]
        expected = 1 / (1 + 10 ** ((rows["x"]["rating"] - r["rating"]) / 400))
        assert r["baseline_win_rate"] == pytest.approx(expected)
    assert rows["z"]["baseline_observed"] is None and rows["z"]["baseline_battles"] == 0
    assert rows["y"]["baseline_observed"] == pytest.approx(0.3) and rows["y"]["baseline_battles"] == 10
    # the engine: the leaderboard keeps its replicates, and their quantiles are lower / upper
    bt = BradleyTerry(rounds=100)
    counts = PairCounts.from_battles(HAND)
    lb = bt.leaderboard(counts, seed=3)
    for row in lb:
        assert row.lower == pytest.approx(np.quantile(lb.replicates[row.model], 0.025))
        assert row.upper == pytest.approx(np.quantile(lb.replicates[row.model], 0.975))
    vs = bt.win_rate_vs_baseline(counts, "x", replicates=lb.replicates)
    assert vs["z"]["lower"] == pytest.approx(rows["z"]["baseline_lower"])
    assert bt.leaderboard(counts, ci="none").replicates is None
    assert "lower" not in bt.win_rate_vs_baseline(counts, "x")["y"]  # unchanged without replicates


def test_baseline_columns_in_csv_and_markdown(tmp_path, capsys):
    f = _write(tmp_path / "b.jsonl", HAND)
    out, _ = _run(capsys, "--battles", str(f), "--baseline", "y", "--format", "csv", "--rounds", "20")
    got = list(csv.DictReader(io.StringIO(out)))
    assert list(got[0])[-6:] == ["baseline", "baseline_win_rate", "baseline_lower", "baseline_upper",
                                 "baseline_observed", "baseline_battles"]
    x = next(r for r in got if r["model"] == "x")
    assert float(x["baseline_win_rate"]) > 0.5 and x["baseline_battles"] == "10"
    out, _ = _run(capsys, "--battles", str(f), "--baseline", "y", "--ci", "none")
    head, _, *body = out.strip().splitlines()
    assert head.split(" | ")[6:] == ["win rate vs y", "95% CI (vs)", "observed vs", "battles vs |"]
    assert all(line.split(" | ")[7] == "-" for line in body)  # no bootstrap: no CI for the win rate
    assert main(["leaderboard", "--battles", str(f), "--baseline", "nobody"]) == 2
    assert "--baseline nobody: that model has no rated battles" in capsys.readouterr().err


def test_category_and_average_length(tmp_path, capsys):
    cats = ["math", "code"]
    f = _write(tmp_path / "b.jsonl", HAND, lambda i: {"category": cats[i % 2], "len_a": 10 * (i + 1),
                                                      "len_b": 5})
    out, _ = _run(capsys, "--battles", str(f), "--category", "math", "--format", "json", "--ci", "none")
    rows = {r["model"]: r for r in json.loads(out)}
    math_rows = [b for i, b in enumerate(HAND) if i % 2 == 0]
    want = PairCounts.from_battles(math_rows)
    assert {m: r["battles"] for m, r in rows.items()} == {m: want.battles(m) for m in want.models}
    # x is model_a in rows 0, 2, 4, 6 (len 10, 30, 50, 70) and model_b in row 8 (len 5)
    assert rows["x"]["avg_len"] == pytest.approx((10 + 30 + 50 + 70 + 5) / 5)
    out, _ = _run(capsys, "--battles", str(f), "--category", "math")
    assert out.splitlines()[0].endswith("| avg len |")
    # no lengths in the rows: no column; and the columnar path and the row path agree on --category
    g = _write(tmp_path / "c.jsonl", HAND, lambda i: {"category": cats[i % 2]})
    out, _ = _run(capsys, "--battles", str(g), "--format", "csv", "--ci", "none")
    assert "avg_len" not in out.splitlines()[0]
    fast = counts_from_file(str(g), category="math")
    slow, lengths = read_file(str(g), category="math")
    assert lengths == {}
    fast, slow = fast.sorted(), slow.sorted()
    assert fast.models == slow.models and np.array_equal(fast.W, slow.W) and np.array_equal(fast.T, slow.T)
    assert file_views(str(g), category="math")[1] == {}


def test_category_fast_and_row_paths_agree_on_random_csv(tmp_path):
    rng = random.Random(5)
    path = tmp_path / "b.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["model_a", "model_b", "winner", "category", "split"])
        for _ in range(400):
            a, b = rng.sample("pqrst", 2)
            w.writerow([a, b, rng.choice(["model_a", "model_b", "tie", "invalid"]),
                        rng.choice(["math", "code", ""]), rng.choice(["eval", "train"])])
    for cat, split in (("math", None), ("code", "eval"), ("none", None)):
        fast = counts_from_file(str(path), split=split, category=cat).sorted()
        slow = read_file(str(path), split=split, category=cat)[0].sorted()
        assert fast.models == slow.models and np.array_equal(fast.W, slow.W) and np.array_equal(fast.T, slow.T)


def test_category_is_refused_with_the_ledger(capsys):
    assert main(["leaderboard", "--from-ledger", "--category", "math"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "arena leaderboard: --category works on --battles files only: the ledger's verdicts carry " \
                  "no category"


def test_empty_ledger_names_the_split_used(tmp_path, monkeypatch, capsys):
    from arena_flywheel.store import LedgerStore

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with LedgerStore(url):
        pass
    monkeypatch.setenv("ARENA_DB_URL", url)
    assert main(["leaderboard", "--from-ledger"]) == 2
    err = capsys.readouterr().err.strip()
    assert "none in split 'eval'" in err and "None" not in err and len(err.splitlines()) == 1


def test_no_ci_prints_a_dash(tmp_path, capsys):
    f = _write(tmp_path / "b.jsonl", HAND)
    for argv in (["--rounds", "0"], ["--ci", "none"]):
        out, _ = _run(capsys, "--battles", str(f), *argv)
        body = out.strip().splitlines()[2:]
        assert body and all(line.split(" | ")[3] == "-" for line in body)
    out, _ = _run(capsys, "--battles", str(f), "--rounds", "10")
    assert all("/" in line.split(" | ")[3] for line in out.strip().splitlines()[2:])


class _ClosedPipe(io.StringIO):
    def write(self, s):
        raise BrokenPipeError(32, "Broken pipe")


def test_write_out_on_a_closed_pipe_is_quiet():
    assert write_out("x", _ClosedPipe()) is False
    buf = io.StringIO()
    assert write_out("x", buf) is True and buf.getvalue() == "x\n"


def test_head_on_a_subprocess_pipe_exits_quietly(tmp_path):
    """`arena leaderboard ... | head -1`: the reader closes the pipe before the table is written."""
    battles = [(f"m{i}", f"m{(i + 1) % 40}", "model_a" if i % 3 else "model_b") for i in range(400)]
    f = _write(tmp_path / "b.jsonl", battles)
    r, w = os.pipe()
    os.close(r)  # nobody reads: every write raises BrokenPipeError (EPIPE)
    proc = subprocess.run([sys.executable, "-m", "arena_cli", "leaderboard", "--battles", str(f), "--ci", "none"],
                          stdout=w, stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(w)
    assert proc.returncode == 0, proc.stderr
    assert "BrokenPipe" not in proc.stderr and "Traceback" not in proc.stderr
