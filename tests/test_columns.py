"""Battles read as columns (arena_flywheel/columns.py) give exactly the counts the row reader gives, for CSV,
JSONL and Parquet, winners or scores, splits, ties and invalid verdicts; an unclean file falls back to the row
reader, which names the bad row; the ledger's counts come from the database (GROUP BY)."""
from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from arena_cli.commands.leaderboard import battle_of, counts_from_file, ledger_counts, read_rows
from arena_flywheel.columns import _jsonl_within_limits, battle_counts
from arena_flywheel.config import LimitsConfig
from arena_flywheel.errors import UsageError
from arena_flywheel.events import JudgeInfo, Verdict
from arena_flywheel.ratings import PairCounts
from arena_flywheel.store import LedgerStore

MODELS = ["gpt-4-0613", "claude-2.1", "vicuna-13b@it2-sft", "llama-2-70b-chat", "mixtral-8x7b"]


def rows(n: int = 600, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.sample(MODELS, 2)
        row = {"model_a": a, "model_b": b, "split": rng.choice(["eval", "train"])}
        if i % 5 == 0:  # a verdict with scores and no winner: the higher wins, |diff| <= tie_margin ties
            row.update(score_a=float(rng.randint(1, 10)), score_b=float(rng.randint(1, 10)))
        else:
            row["winner"] = rng.choice(["model_a", "model_b", "tie", "tie (bothbad)", "invalid"])
        out.append(row)
    return out


def row_counts(path, tie_margin=0.0, split=None) -> PairCounts:
    c = PairCounts()
    for where, row in read_rows(str(path)):
        a, b, w, s = battle_of(row, tie_margin, where)
        if split is None or s == split:
            c.add(a, b, w)
    return c


def same(x: PairCounts, y: PairCounts) -> bool:
    x, y = x.sorted(), y.sorted()
    return x.models == y.models and np.array_equal(x.W, y.W) and np.array_equal(x.T, y.T)


def write(tmp_path, fmt: str, data: list[dict]):
    path = tmp_path / f"battles.{fmt}"
    if fmt == "csv":
        cols = ["model_a", "model_b", "winner", "score_a", "score_b", "split"]
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            for r in data:
                w.writerow({k: r.get(k, "") for k in cols})
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in data))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols = ["model_a", "model_b", "winner", "score_a", "score_b", "split"]
        pq.write_table(pa.table({k: [r.get(k) for r in data] for k in cols}), path)
    return path


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
@pytest.mark.parametrize("split,tie_margin", [(None, 0.0), ("eval", 1.0)])
def test_columns_equal_rows(tmp_path, fmt, split, tie_margin):
    data = rows()
    path = write(tmp_path, fmt, data)
    fast = battle_counts(str(path), tie_margin=tie_margin, split=split)
    assert fast is not None  # a clean file takes the columnar path
    if fmt == "parquet":  # the row reader does not read Parquet: compare with the rows we wrote
        slow = PairCounts()
        for i, r in enumerate(data):
            a, b, w, s = battle_of(r, tie_margin, f"row {i}")
            if split is None or s == split:
                slow.add(a, b, w)
    else:
        slow = row_counts(path, tie_margin, split)
    assert same(fast, slow)
    assert same(counts_from_file(str(path), tie_margin, split), slow)


def test_an_unclean_file_falls_back_to_the_row_reader_which_names_the_row(tmp_path):
    data = rows(50)
    data[17] = {"model_a": "claude-2.1", "model_b": "claude-2.1", "winner": "model_a"}
    path = write(tmp_path, "jsonl", data)
    assert battle_counts(str(path)) is None
    with pytest.raises(UsageError, match=r"battles.jsonl:18: a model cannot battle itself"):
        counts_from_file(str(path))
    data[17] = {"model_a": "claude-2.1", "model_b": "mixtral-8x7b", "winner": "model_c"}
    path = write(tmp_path, "csv", data)
    assert battle_counts(str(path)) is None
    with pytest.raises(UsageError, match=r"battles.csv:19: winner 'model_c'"):
        counts_from_file(str(path))


def test_ledger_counts_come_from_the_database(tmp_path):
    judge = JudgeInfo(backend="reference", template_id="reference-v1")
    rng = random.Random(3)
    verdicts = []
    for i in range(300):
        a, b = rng.sample(MODELS, 2)
        verdicts.append(Verdict(battle_id=f"bat-{i}", instruction_id=f"ins-{i}", split=rng.choice(["eval", "train"]),
                                competitor_a=a, competitor_b=b, model_a=a, model_b=b,
                                winner=rng.choice(["model_a", "model_b", "tie", "invalid"]), judge=judge))
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with LedgerStore(url) as store:
        store.write(verdicts)
    want = PairCounts.from_battles((v.competitor_a, v.competitor_b, v.winner) for v in verdicts if v.split == "eval")
    assert same(ledger_counts(url, "eval"), want)


@pytest.mark.parametrize("block", [1 << 23, 7, 4096])
def test_jsonl_limit_check_matches_the_line_rule(tmp_path, block):
    """The block-wise check says what a loop over the lines says: a line (with its end) longer than
    max_record_bytes, or with more than max_depth brackets, sends the file to the row reader."""
    lim = LimitsConfig(max_record_bytes=1024, max_depth=8)

    def by_lines(p):
        with open(p, "rb") as f:
            return all(len(line) <= lim.max_record_bytes and line.count(b"[") + line.count(b"{") <= lim.max_depth
                       for line in f)

    cases = [b"", b"{}", b'{"a": 1}\n' * 5, b"[" * 8 + b"\n", b"[" * 9 + b"\n", b"{}\n" + b"[" * 9,
             b"{}\n" + b"[" * 8, b"x" * 1023 + b"\n", b"x" * 1024 + b"\n", b"x" * 1024, b"x" * 1025, b"\n\n",
             b"\r\n".join([b"[{" * 4] * 3), b"{}\n" * 300 + b"{" * 9 + b"\n" + b"{}\n" * 300]
    for k, data in enumerate(cases):
        p = tmp_path / f"c{k}.jsonl"
        p.write_bytes(data)
        assert _jsonl_within_limits(Path(p), lim, block) == by_lines(p), (k, data[:40])


@pytest.mark.slow
def test_the_columnar_path_does_not_import_pandas(tmp_path):
    """pyarrow's to_numpy(), pa.array() and pq.read_table() import pandas (0.18 s of a one-second
    `arena leaderboard`); the columnar reader goes around them, for every format."""
    paths = [write(tmp_path, fmt, rows(200)) for fmt in ("csv", "jsonl", "parquet")]
    code = ("import sys; from arena_flywheel.columns import battle_counts; "
            f"cs = [battle_counts(p, split='eval', tie_margin=1.0) for p in {[str(p) for p in paths]!r}]; "
            "print(all(c is not None for c in cs), 'pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]
