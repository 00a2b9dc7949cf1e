"""Progress of a long-running service in the foreground: a rich status line with counters and rates when
stderr is a terminal, a log line every `every_s` seconds when it is piped (a log file gets no control codes).

The service exposes counters (a dict read from another thread, as the pools' `stats()` allow); `describe`
turns them, and the per-second rates since the last refresh, into one line.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

log = logging.getLogger("arena.progress")


class ServiceProgress:
    def __init__(self, read: Callable[[], dict], describe: Callable[[dict, dict], str], *, every_s: float = 30.0,
                 console: Console | None = None, refresh_s: float = 0.5):
        self.read, self.describe = read, describe
        self.console = console or Console(stderr=True)
        self.every_s, self.refresh_s = every_s, refresh_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: tuple[float, dict] | None = None
        self.lines = 0  # log lines written (piped mode)

    @property
    def live(self) -> bool:
        return self.console.is_terminal

    def line(self) -> str:
        """One description of the counters now, with per-second rates of the numeric ones since the last call."""
        now, counts = time.monotonic(), self.read()
        rates = {}
        if self._last is not None:
            t0, before = self._last
            dt = max(now - t0, 1e-6)
            rates = {k: (v - before.get(k, 0)) / dt for k, v in counts.items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self._last = (now, counts)
        return self.describe(counts, rates)

    def _run(self) -> None:
        if self.live:
            with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                          console=self.console, transient=False) as bar:
                task = bar.add_task(self.line())
                while not self._stop.wait(self.refresh_s):
                    bar.update(task, description=self.line())
                bar.update(task, description=self.line())
        else:
            self.line()  # starts the rate window
            while not self._stop.wait(self.every_s):
                log.info("%s", self.line())
                self.lines += 1

    def __enter__(self) -> "ServiceProgress":
        if log.getEffectiveLevel() > logging.INFO:
            log.setLevel(logging.INFO)  # a foreground service's progress is its output, shown without -v
        if self.every_s > 0 or self.live:
            self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def judge_line(c: dict, rate: dict) -> str:
    judged = c.get("battles", 0)
    invalid = c.get("invalid", 0) / judged if judged else None
    return (f"judge: {judged:,} battles judged ({rate.get('battles', 0.0):.1f}/s), invalid "
            f"{'n/a' if invalid is None else f'{invalid:.1%}'}, dead letters {c.get('dead_letters', 0)}")


def generate_line(c: dict, rate: dict) -> str:
    return (f"generate {c.get('model')}@{c.get('checkpoint')}: {c.get('instructions', 0):,} answers "
            f"({rate.get('instructions', 0.0):.1f}/s), {c.get('output_tokens', 0):,} tokens "
            f"({rate.get('output_tokens', 0.0):.1f} tok/s now, {c.get('tokens_per_s', 0.0):.1f} overall), "
            f"errors {c.get('errors', 0)}, dead letters {c.get('dead_letters', 0)}")
