"""`arena generate`: run one competitor's generation pool (instructions in, responses out)."""
from __future__ import annotations

import json
import logging

from pydantic import ValidationError

from arena_flywheel.config import CompetitorConfig, Config
from arena_flywheel.errors import UsageError, need_broker
from consumers.backends import BackendError, create_backend
from consumers.generate import GenerationPool, eval_group, train_group

from ..progress import ServiceProgress, generate_line
from ..stopping import stop_on_signals



def add_arguments(p) -> None:
    p.add_argument("--model", metavar="NAME", help="competitor name from [[competitors]] in arena.toml")
    p.add_argument("--name", metavar="NAME", help="ad-hoc competitor name (with --backend and --model-path)")
    p.add_argument("--backend", choices=["transformers", "vllm", "openai", "replay"], help="ad-hoc backend")
    p.add_argument("--model-path", metavar="PATH", help="ad-hoc model: directory/hub id, served model name, or "
                   "answers file (replay)")
    p.add_argument("--base-url", help="OpenAI-compatible server, e.g. http://localhost:8000/v1")
    p.add_argument("--splits", help="comma list of splits to answer: train,eval")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1")
    p.add_argument("--dtype", help="auto, float32, bfloat16, float16")
    p.add_argument("--max-idle", type=float, metavar="S", help="exit after S seconds with nothing to do "
                   "(default: run until Ctrl-C / SIGTERM)")
    p.add_argument("--stats-every", type=float, default=30.0, metavar="S", help="log a stats line every S seconds")


def competitor_from_args(args, cfg: Config) -> CompetitorConfig:
    if args.model:
        found = [c for c in cfg.competitors if c.name == args.model]
        if not found:
            known = ", ".join(c.name for c in cfg.competitors) or "none configured"
            raise UsageError(f"no competitor named {args.model!r} in [[competitors]] (known: {known}); "
                             f"or run an ad-hoc one: --name X --backend transformers --model-path DIR")
        data = found[0].model_dump()
    elif args.name:
        if not args.backend or not args.model_path:
            raise UsageError("an ad-hoc competitor needs --name, --backend and --model-path "
                             "(e.g. --name tiny --backend transformers --model-path ./ckpt)")
        data = {"name": args.name, "backend": args.backend, "model": args.model_path}
    else:
        raise UsageError("say which competitor: --model NAME (from arena.toml) or "
                         "--name X --backend transformers --model-path DIR")
    if args.model and args.backend:
        data["backend"] = args.backend
    if args.model and args.model_path:
        data["model"] = args.model_path
    for key, val in (("base_url", args.base_url), ("batch_size", args.batch_size),
                     ("max_new_tokens", args.max_new_tokens), ("temperature", args.temperature),
                     ("device", args.device), ("dtype", args.dtype)):
        if val is not None:
            data[key] = val
    if args.splits:
        data["splits"] = [s.strip() for s in args.splits.split(",") if s.strip()]
    try:
        return CompetitorConfig.model_validate(data)
    except ValidationError as exc:
        e = exc.errors()[0]
        raise UsageError(f"competitor {data.get('name')!r}: {'.'.join(map(str, e['loc']))}: {e['msg']}") from None


def run(args, cfg: Config) -> int:
    comp = competitor_from_args(args, cfg)
    need_broker(cfg, "arena generate")
    try:
        backend = create_backend(comp)
    except BackendError as exc:
        raise UsageError(f"competitor {comp.name!r}: {exc}") from None
    # the stats line is the foreground command's output: show it without -v
    logging.getLogger(GenerationPool.__module__).setLevel(min(logging.getLogger().getEffectiveLevel(), logging.INFO))
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    progress = ServiceProgress(lambda: pool.stats(), generate_line, every_s=0)  # a live line on a terminal
    # piped: the pool's own stats line every --stats-every seconds; on a terminal the live line replaces it
    pool = GenerationPool(cfg, comp, backend, log_every_s=0 if progress.live else args.stats_every)
    print(f"generation pool {comp.name} ({comp.backend}: {comp.model}) on {cfg.kafka.bootstrap_servers}; "
          f"groups {train_group(cfg, comp.name)} / {eval_group(cfg, comp.name, '<checkpoint>')}", flush=True)
    try:
        with stop_on_signals() as stop, progress:
            pool.run(stop, max_idle_s=args.max_idle)
    except KeyboardInterrupt:  # asked twice: the batch in flight is redelivered (at-least-once)
        pass
    except BackendError as exc:
        raise UsageError(f"competitor {comp.name!r}: {exc}") from None
    finally:
        backend.close()
    print(json.dumps(pool.stats(), sort_keys=True), flush=True)
    return 0
