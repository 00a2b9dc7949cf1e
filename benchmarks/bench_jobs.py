"""A round as a launched job against the same round inline: what launching costs per round.

    python benchmarks/bench_jobs.py [--train 64] [--repeats 2] [--launchers accelerate,python]

One sft round of --train failures on a tiny Llama (arena_flywheel.tinymodel): `train_stage` in this process
(the peer), then the same round through `trainer.job` (datasets written, a process launched with
`accelerate launch --cpu` or plain `python -m trainer.job`, the result read back). Wall seconds per round
(best of --repeats) and the ratio to inline. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from arena_flywheel.config import load_config  # noqa: E402
from arena_flywheel.tinymodel import build_tiny_model  # noqa: E402
from bench_trainer import make_failures  # noqa: E402
from trainer.batches import sft_rows  # noqa: E402
from trainer.job import JobRunner, prepare  # noqa: E402
from trainer.train import train_stage  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--launchers", default="accelerate,python")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-jobs-"))
    model = str(build_tiny_model(tmp / "model"))
    rows = sft_rows(make_failures(a.train), 1)
    out: dict = {"examples": a.train, "repeats": a.repeats}
    for launcher in ["inline", *a.launchers.split(",")]:
        cfg = load_config(env={}, overrides={"trainer.output_dir": str(tmp / launcher), "trainer.launcher": launcher})
        best = float("inf")
        for k in range(a.repeats):
            kw = dict(stage="sft", model_path=model, iteration=k + 1, target="target", parent="base", rows=rows)
            t = time.perf_counter()
            if launcher == "inline":
                res = train_stage(cfg, **kw)
            else:
                res = JobRunner(cfg).run(prepare(cfg, **kw))
            best = min(best, time.perf_counter() - t)
            assert res.checkpoint is not None
        out[f"{launcher}_s"] = round(best, 2)
    for launcher in a.launchers.split(","):
        out[f"{launcher}_vs_inline"] = round(out[f"{launcher}_s"] / out["inline_s"], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
