"""The arena over all partitions, on every ratings worker.

Each worker publishes the counts of the verdict partitions it owns to the compacted single-partition
`snapshots` topic (key = partition), reads every snapshot back (no consumer group: every worker reads all)
and serves, per partition, the snapshot with the highest applied offset: its own table when it owns the
partition, else the latest one another worker published. A partition's counts are a function of its
record prefix (the reducer is deterministic), so any snapshot is the exact count of the verdicts up to its
offset; taking one snapshot per partition never counts a verdict twice, whoever published it and
whatever order the snapshots arrive in (a stale snapshot from a worker that lost the partition has a lower
offset and loses). docs/streams.md, "Scale-out".
"""
from __future__ import annotations

import json
from typing import Any, Mapping

from arena_flywheel.events import BadEvent
from arena_flywheel.kafka import TopicSpec
from arena_flywheel.safejson import JSONLimitError, loads

SCHEMA = "arena.ratings-snapshot/1"
# Not in kafka.TOPICS: those carry events (the ledger reads them all); this is the stream's own state.
TOPIC = TopicSpec("stream.snapshots", "verdict partition", compacted=True, single_partition=True,
                  doc="the stream workers' per-partition rating counts; the latest per partition wins")
_INTS = ("partition", "offset", "applied", "invalid", "duplicates")


def snapshot_of(partition: int, state: Mapping[str, Any], worker: str, at: float) -> dict[str, Any]:
    """The published form of a partition record: counts and counters, no ids (small: pairs x outcomes)."""
    return {"schema": SCHEMA, "partition": partition, "offset": state["offset"], "applied": state["applied"],
            "invalid": state["invalid"], "duplicates": state["duplicates"], "counts": state["counts"],
            "worker": worker, "at": at}


def encode(snapshot: Mapping[str, Any]) -> bytes:
    return json.dumps(snapshot, separators=(",", ":")).encode()


def parse(raw: bytes | None, limits: Any) -> dict[str, Any]:
    """A snapshot record, checked; BadEvent with a one-line reason otherwise (it is then dead-lettered)."""
    try:
        d = loads(raw, max_bytes=limits.max_record_bytes, max_depth=limits.max_depth,
                  max_int_digits=limits.max_int_digits)
    except JSONLimitError as exc:
        raise BadEvent(str(exc)) from None
    if not isinstance(d, dict) or d.get("schema") != SCHEMA:
        raise BadEvent(f"expected a {SCHEMA} object")
    for k in _INTS:
        if not isinstance(d.get(k), int) or isinstance(d.get(k), bool) or d[k] < (-1 if k == "offset" else 0):
            raise BadEvent(f"{SCHEMA}: {k!r} must be a non-negative integer")
    if not isinstance(d.get("worker"), str) or not isinstance(d.get("at"), (int, float)):
        raise BadEvent(f"{SCHEMA}: 'worker' must be a string and 'at' a number")
    counts = d.get("counts")
    if not isinstance(counts, dict) or not all(
            isinstance(cells, dict) and all(
                isinstance(pair, str) and "\t" in pair and isinstance(cell, dict)
                and all(isinstance(w, str) and isinstance(n, int) and not isinstance(n, bool) and n >= 0
                        for w, n in cell.items())
                for pair, cell in cells.items())
            for cells in counts.values()):
        raise BadEvent(f"{SCHEMA}: 'counts' must map split -> 'a<TAB>b' -> winner -> count")
    return d


class GlobalView:
    """The latest snapshot of every partition (highest offset wins; the same offset from a later
    publication only refreshes its age)."""

    def __init__(self) -> None:
        self.remote: dict[int, dict[str, Any]] = {}

    def add(self, snap: dict[str, Any]) -> bool:
        old = self.remote.get(snap["partition"])
        if old is not None and (old["offset"], old["at"]) >= (snap["offset"], snap["at"]):
            return False
        self.remote[snap["partition"]] = snap
        return True

    def merged(self, local: Mapping[int, Mapping[str, Any]], worker: str,
               now: float) -> tuple[dict[int, Mapping[str, Any]], dict[str, dict[str, Any]]]:
        """(partition -> chosen state, freshness per partition). `local`: this worker's own partition
        records, which win ties (they are at least as new as what it published)."""
        chosen: dict[int, Mapping[str, Any]] = {}
        fresh: dict[str, dict[str, Any]] = {}
        for p in sorted(set(local) | set(self.remote)):
            mine, theirs = local.get(p), self.remote.get(p)
            if mine is not None and (theirs is None or mine["offset"] >= theirs["offset"]):
                chosen[p] = mine
                fresh[str(p)] = {"offset": mine["offset"], "applied": mine["applied"], "source": worker,
                                 "local": True, "age_s": 0.0}
            else:
                chosen[p] = theirs
                fresh[str(p)] = {"offset": theirs["offset"], "applied": theirs["applied"],
                                 "source": theirs["worker"], "local": False,
                                 "age_s": round(max(0.0, now - theirs["at"]), 3)}
        return chosen, fresh
