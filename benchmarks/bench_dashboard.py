"""How long the ledger dashboard (`arena dashboard`) takes to build its state, against `arena watch --once`
on the same ledger in the same run (the peer: it fits the same split and measures the same judge health).

    python benchmarks/bench_dashboard.py [--verdicts 20000] [--models 10] [--db URL]

Writes a SQLite ledger of --verdicts battles and their verdicts (half eval, half train; a quarter each
model_a / model_b / tie / invalid; answers of 100-800 characters) in a temporary directory (or uses --db),
then times streams.ledger_view.ledger_state(eval) and arena_cli.watch.from_ledger(eval), three times each
(alternating), and prints the best of each, their ratio and the page's size.
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from arena_cli.watch import from_ledger  # noqa: E402
from arena_flywheel.config import load_config  # noqa: E402
from arena_flywheel.events import Battle, Contestant, Game, JudgeInfo, Message, Verdict  # noqa: E402
from arena_flywheel.ratings import BradleyTerry  # noqa: E402
from arena_flywheel.store import LedgerStore, open_ledger  # noqa: E402
from streams.dashboard import page_body  # noqa: E402
from streams.ledger_view import ledger_state  # noqa: E402


def fill(url: str, n: int, models: int) -> None:
    rng = random.Random(0)
    names = [f"m{i}" for i in range(models - 2)] + ["target@it1-sft", "target@it2-sft"]
    judge = JudgeInfo(backend="reference", model="j", template_id="t")
    games = [Game(order="ab", score_a=5, score_b=4), Game(order="ba", score_a=4, score_b=5)]

    def side(name: str, rid: str) -> Contestant:
        model, _, ckpt = name.partition("@")
        return Contestant(response_id=rid, model=model, checkpoint=ckpt or "base",
                          answers=["x" * rng.randint(100, 800)])

    with LedgerStore(url) as store:
        batch = []
        for i in range(n):
            a, b = rng.sample(names, 2)
            bat = Battle(instruction_id=f"i{i}", split="eval" if i % 2 else "train",
                         messages=[Message(role="user", content=f"question {i}")], a=side(a, f"r{i}a"),
                         b=side(b, f"r{i}b"), created_at=1e9 + i)
            batch += [bat, Verdict(battle_id=bat.id, instruction_id=bat.instruction_id, split=bat.split,
                                   competitor_a=a, competitor_b=b, model_a=bat.a.model, model_b=bat.b.model,
                                   checkpoint_a=bat.a.checkpoint, checkpoint_b=bat.b.checkpoint,
                                   games=games,
                                   winner=("model_a", "model_b", "tie", "invalid")[i // 2 % 4], judge=judge,
                                   created_at=1e9 + i)]
            if len(batch) >= 5000:
                store.write(batch)
                batch = []
        store.write(batch)


def timed(f) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--verdicts", type=int, default=20000)
    ap.add_argument("--models", type=int, default=10)
    ap.add_argument("--db", help="an existing ledger to read instead of a generated one")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.db or f"sqlite:///{tmp}/ledger.db"
        if not args.db:
            fill(url, args.verdicts, args.models)
        cfg = load_config(env={}, overrides={"db.url": url})
        bt = BradleyTerry.from_config(cfg.ratings)
        ours, peer = [], []
        with open_ledger(url) as store:
            n = store.count("verdict")
            for _ in range(3):  # alternating, so a busy moment of the machine hits both
                ours.append(timed(lambda: ledger_state(store, bt, "eval")))
                peer.append(timed(lambda: from_ledger(cfg, "eval")))
    raw, packed, _ = page_body()
    print(f"ledger of {n} verdicts ({url if args.db else 'generated, SQLite'}):")
    print(f"  dashboard state (eval)   {min(ours):.2f} s (best of 3)")
    print(f"  arena watch (eval)       {min(peer):.2f} s (best of 3)")
    print(f"  ratio watch / dashboard  {min(peer) / min(ours):.2f}")
    print(f"  page: {len(raw) / 1e6:.1f} MB, {len(packed) / 1e6:.1f} MB gzipped (plotly.js inlined)")


if __name__ == "__main__":
    main()
