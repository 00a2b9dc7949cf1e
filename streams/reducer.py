"""The ratings agent's work on one partition's batch, as a pure function (no Faust, no I/O, no asyncio).

`apply_verdicts` takes the partition record, the processed ids, read access to the loss records and the
pairing table, and the batch's (offset, raw bytes) records; it returns the new partition record and
everything the agent must write or send, in the order of docs/streams.md ("Exactly-once effect"):

1. `loss_records` (table writes) and `failures` (sends): idempotent, keyed by verdict id inside;
2. `restore` (the previous batch's id record, if the table lost it), then `state`, the partition record;
3. `ids_record`: this batch's processed ids.

Inputs are never modified (they are the table's values), so a batch that raises half-way leaves the
table as it was rather than half-applied in memory.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Container, Iterable, Mapping

from arena_flywheel.config import Config, LimitsConfig
from arena_flywheel.events import BadEvent, Failure, Verdict, decode

from . import state as S


@dataclass(frozen=True)
class RatingsRules:
    """The config values the ratings agent applies."""
    targets: frozenset[str]
    failure_margin: float  # a target's train loss by at least this is a Failure
    limits: LimitsConfig | None = field(default=None, hash=False)  # what a verdict may hold (None: defaults)

    @classmethod
    def from_config(cls, cfg: Config) -> "RatingsRules":
        return cls(targets=frozenset(cfg.arena.targets), failure_margin=cfg.failure_margin, limits=cfg.limits)


def loss_key(partition: int, instruction_id: str) -> str:
    """The loss record of an instruction; the partition is in the key so that retention can be rebuilt
    per partition from the table's keys."""
    return f"l:{partition}:{instruction_id}"


@dataclass
class Reduction:
    """What one batch of one partition produces."""
    state: dict[str, Any]                      # the new partition record p:<p>
    loss_records: dict[str, dict[str, Any]] = field(default_factory=dict)  # l:<p>:<instruction id> -> record
    failures: list[Failure] = field(default_factory=list)
    missing_answers: int = 0                   # targets with selected losses but no answers in the pairing table
    dead: list[tuple[int, str]] = field(default_factory=list)  # (offset, reason) of records that did not decode
    accepted: list[Verdict] = field(default_factory=list)      # applied verdicts, in offset order
    restore: tuple[str, list[str]] | None = None  # previous batch's id record, to rewrite before `state`
    ids: list[str] = field(default_factory=list)  # this batch's processed verdict ids

    @property
    def ids_record(self) -> tuple[str, list[str]] | None:
        """(b:<p>:<offset>, ids) to write after `state`; None when the batch applied nothing."""
        return (self.state["recent_key"], self.ids) if self.ids else None


def apply_verdicts(partition: int, state: Mapping[str, Any] | None, seen: Container[str],
                   records: Mapping[str, Any], pairing: Mapping[str, Any], batch: Iterable[tuple[int, bytes]],
                   rules: RatingsRules) -> Reduction:
    """Apply one partition's verdict records (offset, raw value), in offset order.

    state: the partition record (None before the first batch); seen: verdict ids this partition already
    applied (the b: id records and state["recent"]); records: the ratings table (l: loss records, as their
    JSON text or a dict; b: id records); pairing: the pairing table (r: responses, i: instructions) for the
    failures' answers.
    A record at or below the state's offset is a redelivery and a known id is a re-sent verdict: both
    count as duplicates and change nothing else."""
    st = _copy_state(state)
    out = Reduction(state=st)
    batch_set: set[str] = set()
    added: dict[str, dict[str, dict[str, int]]] = {}  # split -> this batch's counts
    for off, raw in batch:
        if off <= st["offset"]:
            st["duplicates"] += 1
            continue
        st["offset"] = off  # also past a record that does not decode: it is dead-lettered once
        try:
            v = decode(raw, expect=Verdict, limits=rules.limits)
        except BadEvent as exc:
            out.dead.append((off, exc.reason))
            continue
        if v.id in seen or v.id in batch_set:
            st["duplicates"] += 1
            continue
        out.ids.append(v.id)
        batch_set.add(v.id)
        out.accepted.append(v)
        st["applied"] += 1
        S.count(added.setdefault(v.split, {}), v.competitor_a, v.competitor_b, v.winner)
        if v.winner == "invalid":
            st["invalid"] += 1
        losses = S.target_losses(v, rules.targets, rules.failure_margin) if rules.targets else ()
        if losses:
            lkey = loss_key(partition, v.instruction_id)
            rec = out.loss_records.get(lkey) or S.loss_record(records.get(lkey))
            for e in losses:
                e["offset"] = off  # the record's age, for retention
                rec[e["verdict_id"] + ":" + e["side"]] = e
            out.loss_records[lkey] = rec
    for split, counts in added.items():
        st["counts"][split] = S.add_counts(st["counts"].get(split, {}), counts)
    for lkey, rec in out.loss_records.items():
        iid = lkey.split(":", 2)[2]
        for comp in sorted({e["target_competitor"] for e in rec.values() if e["selected"]}):
            f = S.failure_for(iid, rec, comp, pairing.get(f"r:{iid}"), pairing.get(f"i:{iid}"))
            if f is None:
                out.missing_answers += 1
            else:
                out.failures.append(f)
    # The previous batch's id record may have been lost in a crash right after the partition record
    # landed (that record names it in "recent"): restore it before "recent" is replaced. Then only this
    # batch's ids need to be in the record: earlier id records precede it in the changelog.
    prev = st.get("recent_key")
    if prev and prev not in records:
        out.restore = (prev, list(st["recent"]))
    if out.ids:
        st["recent"], st["recent_key"] = list(out.ids), f"b:{partition}:{st['offset']}"
    return out


def _copy_state(state: Mapping[str, Any] | None) -> dict[str, Any]:
    """A partition record to change: the containers this batch replaces are copied, the rest is shared
    (a deep copy per batch would cost O(pairs) dicts; add_counts copies only the cells it changes)."""
    if not state:
        return S.empty_partition_state()
    st = dict(state)
    st["counts"] = dict(st["counts"])
    st.pop("elo", None)  # records written before the online Elo was dropped (docs/streams.md)
    return st
