"""`arena leaderboard` views (issue 20) and rough edges (issue 22): --baseline (arena-hard's show_result: the
predicted win rate against a baseline with a bootstrap CI, the observed win rate and the battle count),
--category and the average answer length, --matrix in every format, --style-control from a file and from
the ledger, "-" for no CI, the split named when nothing is rated, and a
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


def test_matrix_in_every_format(tmp_path, capsys):
    """HAND by hand: x-y 10 battles (x scores 7), y-z 4 (y scores 3), x never met z."""
    f = _write(tmp_path / "b.jsonl", HAND)
    out, _ = _run(capsys, "--battles", str(f), "--matrix", "--format", "json", "--rounds", "0")
    doc = json.loads(out)
    m = doc["matrix"]
    i = {name: k for k, name in enumerate(m["models"])}
    assert [r["model"] for r in doc["leaderboard"]] == m["models"]
    assert m["battles"][i["x"]][i["y"]] == m["battles"][i["y"]][i["x"]] == 10 and m["battles"][i["x"]][i["z"]] == 0
    assert m["win_rate"][i["x"]][i["y"]] == pytest.approx(0.7) and m["win_rate"][i["y"]][i["x"]] == pytest.approx(0.3)
    assert m["win_rate"][i["y"]][i["z"]] == pytest.approx(0.75) and m["win_rate"][i["x"]][i["z"]] is None
    out, _ = _run(capsys, "--battles", str(f), "--matrix", "--format", "csv", "--rounds", "0")
    rows = {(r["model"], r["opponent"]): r for r in csv.DictReader(io.StringIO(out))}
    assert len(rows) == 6 and rows[("z", "y")] == {"model": "z", "opponent": "y", "battles": "4", "win_rate": "0.25"}
    assert rows[("x", "z")]["battles"] == "0" and rows[("x", "z")]["win_rate"] == ""
    out, _ = _run(capsys, "--battles", str(f), "--matrix", "--rounds", "0")
    text = out.split("\n\n")
    assert len(text) == 5 and text[1] == "battles (row model against column model)"
    assert "| y | 10 | - | 4 |" in text[2] and "| x | - | 70.0% | - |" in text[4]


def _style_battles(n=3000, seed=0):
    """Three equally strong models; a judge that prefers the longer answer with log-odds 1.5 per unit of the
    normalised length difference; v is verbose (its answers twice as long)."""
    rng = np.random.default_rng(seed)
    names = np.array(["p", "q", "v"])
    rows = []
    for _ in range(n):
        i, j = rng.choice(3, 2, replace=False)
        la, lb = rng.integers(50, 150) * (2 if names[i] == "v" else 1), rng.integers(50, 150) * (2 if names[j] == "v" else 1)
        p = 1 / (1 + np.exp(-1.5 * (la - lb) / (la + lb)))
        rows.append({"model_a": str(names[i]), "model_b": str(names[j]), "winner": "model_a" if rng.uniform() < p
                     else "model_b", "len_a": int(la), "len_b": int(lb)})
    return rows


def test_style_control_from_a_file(tmp_path, capsys):
    f = tmp_path / "style.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in _style_battles()))
    plain, _ = _run(capsys, "--battles", str(f), "--format", "json", "--rounds", "0")
    styled, err = _run(capsys, "--battles", str(f), "--format", "json", "--rounds", "10", "--style-control")
    plain = {r["model"]: r for r in json.loads(plain)}
    styled = {r["model"]: r for r in json.loads(styled)}
    assert plain["v"]["rating"] - 1000 > 40  # the judge's taste for length shows as strength
    assert abs(styled["v"]["rating"] - 1000) < 25  # style control gives it back to the length coefficient
    assert styled["v"]["battles"] == plain["v"]["battles"] and styled["v"]["lower"] < styled["v"]["rating"]
    assert "note: style coefficients (log-odds per sd of the normalised difference): len +" in err
    # verdicts as exported from the ledger name their answers' lengths length_a / length_b: the same board
    g = tmp_path / "verdicts.jsonl"
    g.write_text("".join(json.dumps({"competitor_a": r["model_a"], "competitor_b": r["model_b"], "winner": r["winner"],
                                     "length_a": r["len_a"], "length_b": r["len_b"]}) + "\n"
                         for r in _style_battles()))
    again, _ = _run(capsys, "--battles", str(g), "--format", "json", "--rounds", "10", "--style-control")
    assert {r["model"]: r["rating"] for r in json.loads(again)} == {m: r["rating"] for m, r in styled.items()}


def test_style_control_without_style_data_is_one_line(tmp_path, capsys):
    f = _write(tmp_path / "b.jsonl", HAND)
    assert main(["leaderboard", "--battles", str(f), "--style-control"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"arena leaderboard: {f}:1: --style-control needs answer lengths: rows with len_a and len_b "
                   "(optionally header_count, list_count, bold_count _a / _b)")


def test_style_control_from_the_ledger(tmp_path, monkeypatch, capsys):
    """Verdicts in the ledger with their battles: the answers' style counts are the covariates."""
    from arena_flywheel.events import Battle, Contestant, Instruction, JudgeInfo, Verdict
    from arena_flywheel.store import LedgerStore

    events = []
    judge = JudgeInfo(backend="reference", template_id="ref-1")
    for k, r in enumerate(_style_battles(600, seed=1)):
        ins = Instruction(messages=[{"role": "user", "content": f"q{k}"}], split="eval", source="test")
        sides = [Contestant(response_id=f"r{k}{s}", model=r[f"model_{s}"], answers=["w " * r[f"len_{s}"]])
                 for s in "ab"]
        bat = Battle(instruction_id=ins.id, split="eval", messages=ins.messages, a=sides[0], b=sides[1])
        events += [bat, Verdict(battle_id=bat.id, instruction_id=ins.id, split="eval", competitor_a=r["model_a"],
                                competitor_b=r["model_b"], model_a=r["model_a"], model_b=r["model_b"],
                                winner=r["winner"], judge=judge)]
    # a verdict whose battle never reached the ledger: left out of the style-controlled board, with a note
    events.append(Verdict(battle_id="bat-missing", instruction_id="ins-missing", split="eval", competitor_a="p",
                          competitor_b="q", model_a="p", model_b="q", winner="model_a", judge=judge))
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with LedgerStore(url) as store:
        store.write(events)
    monkeypatch.setenv("ARENA_DB_URL", url)
    out, err = _run(capsys, "--from-ledger", "--style-control", "--format", "json", "--rounds", "0")
    rows = {r["model"]: r for r in json.loads(out)}
    assert set(rows) == {"p", "q", "v"} and sum(r["battles"] for r in rows.values()) == 1200
    assert "style coefficients" in err and "len +" in err
    assert "note: 1 rated verdict(s) without their battle in the ledger left out" in err
