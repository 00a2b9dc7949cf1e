"""`arena topics`: create the arena's topics (idempotent) and list them."""
from __future__ import annotations

from arena_flywheel.broker import kafka_for
from arena_flywheel.kafka import TOPICS



def add_arguments(p):
    pass


def run(args, cfg):
    with kafka_for(cfg) as (cfg, embedded):
        for s in TOPICS:
            parts = 1 if s.single_partition else cfg.kafka.partitions
            policy = "compact" if s.compacted else "delete"
            print(f"{cfg.topic(s.name):28s} key={s.key:16s} partitions={parts:<3d} cleanup={policy}")
        if embedded:
            print("(embedded broker: these topics vanish when this command exits; set KAFKA_BOOTSTRAP_SERVERS)")
    return 0
