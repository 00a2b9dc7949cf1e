"""Publishing helper shared by the broker tests."""
from __future__ import annotations

from typing import Iterable

from arena_flywheel.events import Event
from arena_flywheel.kafka import Publisher


def publish(cfg, events: Iterable[Event]) -> None:
    """Send events to their topics in order and wait until the broker has them all."""
    with Publisher(cfg) as pub:
        for ev in events:
            pub.send(ev)
        pub.flush()
