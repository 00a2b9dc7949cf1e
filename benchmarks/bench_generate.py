"""Batched vs one-at-a-time generation with the transformers backend on a tiny real model.

    python benchmarks/bench_generate.py [--prompts 32] [--batch-size 16] [--max-new-tokens 32]
                                        [--hidden 128] [--layers 4] [--device cpu] [--threads N]

Builds a randomly initialised tiny Llama (arena_flywheel.tinymodel) in a temporary directory, then
answers the same prompts greedily twice: one request per generate() call, and in batches of
--batch-size (left padding, one model.generate per batch). Prints tokens/s of both and the ratio;
the goal on CPU is batched >= 3x. Also checks that both ways produce the same answers.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from arena_flywheel.tinymodel import build_tiny_model  # noqa: E402
from consumers.backends import GenerationRequest, create_backend  # noqa: E402

TOPICS = ["the moon", "prime numbers", "a red bicycle", "tea", "sorting words", "rain in spring", "the number 42",
          "upper case letters", "a lazy dog", "blue skies", "bananas", "reversing a list", "counting letters",
          "a quick fox", "green fields", "small models"]


def prompts(n: int) -> list[str]:
    out = []
    for i in range(n):
        t = TOPICS[i % len(TOPICS)]
        out.append(f"Question {i}: write one sentence about {t}." + (" Keep it short." * (i % 3)))
    return out


def timed(backend, reqs, batch_size):
    t = time.perf_counter()
    outs = []
    for s in range(0, len(reqs), batch_size):
        outs += backend.generate(reqs[s:s + batch_size])
    return outs, time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--json", action="store_true", help="print one JSON line instead of text")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_model(Path(tmp) / "bench-model", hidden_size=args.hidden, layers=args.layers,
                                heads=4, seed=0)
        backend = create_backend({"backend": "transformers", "model": str(path), "device": args.device,
                                  "batch_size": args.batch_size})
        reqs = [GenerationRequest(messages=[{"role": "user", "content": p}], max_new_tokens=args.max_new_tokens)
                for p in prompts(args.prompts)]
        timed(backend, reqs[: args.batch_size], args.batch_size)  # warm-up (first-call overheads)
        timed(backend, reqs[:2], 1)
        single, t_single = timed(backend, reqs, 1)
        batched, t_batched = timed(backend, reqs, args.batch_size)
        backend.close()
    tok_single = sum(c.output_tokens for c in single)
    tok_batched = sum(c.output_tokens for c in batched)
    same = [a.text for a in single] == [b.text for b in batched]
    r = {
        "device": args.device, "torch_threads": torch.get_num_threads(), "prompts": args.prompts,
        "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
        "model": f"llama hidden={args.hidden} layers={args.layers}",
        "one_at_a_time_tok_s": round(tok_single / t_single, 1), "batched_tok_s": round(tok_batched / t_batched, 1),
        "one_at_a_time_s": round(t_single, 3), "batched_s": round(t_batched, 3),
        "tokens": [tok_single, tok_batched], "same_answers": same,
    }
    r["speedup"] = round(r["batched_tok_s"] / r["one_at_a_time_tok_s"], 2)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"transformers backend, {r['model']}, {args.device} ({r['torch_threads']} threads), "
              f"{args.prompts} prompts x {args.max_new_tokens} new tokens, greedy")
        print(f"  one at a time : {r['one_at_a_time_tok_s']:8.1f} tok/s  ({t_single:.2f}s, {tok_single} tokens)")
        print(f"  batched ({args.batch_size:>3d}) : {r['batched_tok_s']:8.1f} tok/s  ({t_batched:.2f}s, "
              f"{tok_batched} tokens)")
        print(f"  speedup       : {r['speedup']:.2f}x   (goal >= 3x)   same answers: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
