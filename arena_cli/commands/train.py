"""`arena train`: run the trainer service (failures in, checkpoints out), or close one iteration now. Each
round trains as a launched job (`trainer.launcher`, `trainer.accelerate_config`; docs/trainer.md)."""
from __future__ import annotations

import logging

from arena_flywheel.config import Config
from arena_flywheel.errors import UsageError, need_broker
from trainer.job import JobRunner
from trainer.service import TrainerService, group_id

from ..stopping import stop_on_signals



def add_arguments(p) -> None:
    p.add_argument("--iteration", type=int, metavar="N", help="close the next round of iteration N now (its next "
                   "stage, on whatever its slice holds), train it and exit (default: run the service)")
    p.add_argument("--target", help="the target model (default: the only one in arena.targets / failures)")
    p.add_argument("--max-idle", type=float, default=None, metavar="S", help="stop after S seconds without failures")


def run(args, cfg: Config) -> int:
    need_broker(cfg, "arena train")
    if args.iteration is not None:
        if args.iteration < 1:
            raise UsageError("--iteration must be at least 1, e.g. --iteration 1")
        svc = TrainerService(cfg)
        try:
            rnd = svc.close_now(args.target, iteration=args.iteration)
        finally:
            svc.close()
        ck = rnd.checkpoint
        if ck is None:
            print(f"{rnd.target} iteration {rnd.iteration} {rnd.stage}: skipped ({rnd.result.skipped})")
        else:
            print(f"{ck.model}@{ck.checkpoint} {ck.path} train_loss={ck.metrics.get('train_loss')} "
                  f"examples={rnd.used}")
        return 0
    # a closed round and its training job (started, where its log is) are the foreground command's output
    for name in (TrainerService.__module__, JobRunner.__module__):
        logging.getLogger(name).setLevel(min(logging.getLogger().getEffectiveLevel(), logging.INFO))
    print(f"trainer on {cfg.kafka.bootstrap_servers}: group {group_id(cfg)}, rounds of {cfg.trainer.batch_size}, "
          f"stages {' -> '.join(cfg.trainer.stages)}", flush=True)
    try:
        with stop_on_signals() as stop:
            rounds = TrainerService(cfg).run(stop, max_idle_s=args.max_idle)
    except KeyboardInterrupt:  # asked twice: the round in flight is not committed and is read again
        rounds = []
    print(f"trained {sum(r.checkpoint is not None for r in rounds)} round(s)")
    return 0
