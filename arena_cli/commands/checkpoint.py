"""`arena checkpoint add|list`: announce a new checkpoint of a model (its pools hot-plug it), or list them."""
from __future__ import annotations

import sys
from pathlib import Path

from arena_flywheel.config import Config
from arena_flywheel.errors import UsageError, need_broker
from arena_flywheel.events import Checkpoint
from arena_flywheel.kafka import Publisher, read_checkpoints
from consumers.generate import RESERVED_CHECKPOINTS, checkpoint_problem, eval_group



def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    a = sub.add_parser("add", help="announce a checkpoint: the model's pools hot-load it and re-answer eval")
    a.add_argument("--model", required=True, metavar="NAME", help="competitor name the checkpoint belongs to")
    a.add_argument("--path", required=True, metavar="DIR", help="checkpoint directory (full weights or a LoRA "
                   "adapter), as the workers see it; for openai competitors, the served model name")
    a.add_argument("--name", metavar="CKPT", help="checkpoint name (default: the directory's name)")
    a.add_argument("--iteration", type=int, default=0)
    a.add_argument("--stage", default="", help="sft, dpo, reward, rl, ...")
    a.add_argument("--parent", help="checkpoint this one was trained from")
    a.add_argument("--remote", action="store_true", help="do not check that --path exists on this machine")
    sub.add_parser("list", help="list the checkpoints announced so far")


def run(args, cfg: Config) -> int:
    need_broker(cfg, "arena checkpoint")
    if args.action == "list":
        for ev in read_checkpoints(cfg):
            print(f"{ev.model:20s} {ev.checkpoint:16s} iter={ev.iteration:<3d} stage={ev.stage or '-':6s} {ev.path}")
        return 0
    if args.action != "add":
        raise UsageError("use: arena checkpoint add --model NAME --path DIR  (or: arena checkpoint list)")
    path = args.path
    if not args.remote:
        if not Path(path).is_dir():
            raise UsageError(f"--path {path!r} is not a directory here; pass --remote if it exists only on the "
                             f"workers (or is a served model name)")
        path = str(Path(path).resolve())
    name = args.name or Path(args.path.rstrip("/")).name or "ckpt"
    if name in RESERVED_CHECKPOINTS:
        raise UsageError(f"checkpoint name {name!r} is reserved; pass --name, e.g. --name iter{args.iteration or 1}")
    ev = Checkpoint(model=args.model, checkpoint=name, path=path, iteration=args.iteration, stage=args.stage,
                    parent=args.parent)
    with Publisher(cfg) as pub:
        pub.send(ev)
        pub.flush()
    print(f"checkpoint {name} of {args.model} announced ({ev.id}); its pools load {path} and answer the eval "
          f"split under group {eval_group(cfg, args.model, name)}")
    problem = None if args.remote else checkpoint_problem(cfg, ev)
    if problem:  # announced all the same: pools configured elsewhere may have other roots
        print(f"warning: pools with this configuration will refuse it: {problem}; add its directory to "
              f"trainer.checkpoint_roots", file=sys.stderr)
    return 0
