"""`arena broker`: the embedded Tansu broker in the foreground."""
from __future__ import annotations

from arena_flywheel.broker import EmbeddedBroker, kafka_for
from arena_flywheel.registration import registered

from ..stopping import stop_on_signals



def add_arguments(p):
    p.add_argument("--port", type=int, default=9092, help="loopback port (default 9092; 0 picks a free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--no-topics", action="store_true", help="do not create the arena topics")


def run(args, cfg):
    with EmbeddedBroker(port=args.port, host=args.host, quiet=False) as broker:
        if not args.no_topics:
            cfg = cfg.model_copy(deep=True)
            cfg.kafka.bootstrap_servers = broker.bootstrap
            with kafka_for(cfg):
                pass
        with registered(cfg.data_dir, broker.bootstrap) as reg:
            print(f"Tansu broker listening on {broker.bootstrap}. `arena` commands run from this directory use "
                  f"it (registered in {reg}); elsewhere: export KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap}   "
                  f"(Ctrl-C stops; topics live in memory)", flush=True)
            try:
                with stop_on_signals() as stop:
                    while not stop.wait(1) and broker.proc and broker.proc.poll() is None:
                        pass
            except KeyboardInterrupt:
                pass
    return 0
