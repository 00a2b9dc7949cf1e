"""Where the machine's own broker is: `arena broker` registers its address in <data_dir>/broker.json while it
runs, so that the services started from the same directory (generate, judge, stream, ledger, train, feed, ...)
join it without exporting KAFKA_BOOTSTRAP_SERVERS. A registration whose process is gone, or whose port does not
answer, is stale. Standard library only: every command looks here first, and a command that needs no broker
(`arena leaderboard` on a file) must not pay for importing a Kafka client."""
from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path

REGISTRATION = "broker.json"


@contextlib.contextmanager
def registered(data_dir: str | os.PathLike, bootstrap: str):
    """Advertise the broker at `bootstrap` (this process's) in data_dir while the block runs."""
    path = Path(data_dir) / REGISTRATION
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"bootstrap": bootstrap, "pid": os.getpid()}))
    tmp.replace(path)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()


def local_broker(data_dir: str | os.PathLike) -> str | None:
    """The bootstrap address `arena broker` registered in data_dir, if that broker is alive; else None."""
    path = Path(data_dir) / REGISTRATION
    try:
        reg = json.loads(path.read_text())
        bootstrap, pid = str(reg["bootstrap"]), int(reg["pid"])
        host, port = bootstrap.rsplit(":", 1)
        os.kill(pid, 0)  # the registering process is alive (raises otherwise)
        with socket.create_connection((host, int(port)), timeout=1.0):
            return bootstrap
    except (OSError, ValueError, KeyError, TypeError):
        return None
