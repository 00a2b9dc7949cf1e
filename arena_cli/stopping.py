"""How a long-running command stops: Ctrl-C and SIGTERM (docker stop, systemd, kill) alike set one event;
the service finishes its batch, commits and the command exits 0 with its summary."""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGTERM, and by SIGINT unless SIGINT is ignored (a job started in the background of a
    script ignores it on purpose, and keeps ignoring it); a second signal raises KeyboardInterrupt. Handlers
    are restored on exit. Off the main thread (tests calling `main()` from a thread) no handler can be
    installed: the event is only set by the caller."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(*_):
        if stop.is_set():  # asked twice: do not wait for the batch in flight
            raise KeyboardInterrupt
        stop.set()

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(sig) is signal.SIG_IGN:
            continue
        previous[sig] = signal.signal(sig, handler)
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
