"""Pure state logic of the stream agents (no Faust here, so it is testable and reusable).

- pairing: which battles an instruction's responses make under a battle plan;
- ratings: partition records, pairwise counts, loss records and failures (streams/reducer.py applies
  a batch of verdicts with them).

All state is plain JSON-able dicts: they are Faust table values, written to the changelog as one record
each (a record is the unit that survives a crash, see docs/streams.md).
"""
from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from typing import Any, Iterable

from arena_flywheel.events import Battle, Contestant, Failure, Instruction, JudgeInfo, Message, Response, Verdict

PLANS = ("target-vs-all", "round-robin", "sampled")
# Winners that count in PairCounts; "invalid" verdicts are counted apart and never change ratings.
RATED = ("model_a", "model_b", "tie", "tie (bothbad)")


# ---------------------------------------------------------------------------------------------- pairing

def instruction_record(ins: Instruction) -> dict[str, Any]:
    return {"split": ins.split, "messages": [m.model_dump() for m in ins.messages], "reference": ins.reference,
            "references": ins.references, "category": ins.category}


def response_record(r: Response) -> dict[str, Any]:
    return {"response_id": r.id, "model": r.model, "checkpoint": r.checkpoint, "answers": list(r.answers),
            "sample": r.sample, "split": r.split}


def pairing_split(key: str, rec: dict[str, Any] | None) -> str | None:
    """The split of a pairing record (`i:` instruction, `r:` responses), None when it cannot tell."""
    if not isinstance(rec, dict):
        return None
    if key.startswith("i:"):
        return rec.get("split")
    if key.startswith("r:"):
        return next((r.get("split") for r in rec.get("responses", {}).values()), None)
    return None


def add_response(rec: dict[str, Any], r: Response) -> bool:
    """Keep one response per competitor (the lowest sample); True when the record changed."""
    responses = rec.setdefault("responses", {})
    old = responses.get(r.competitor)
    if old is not None and (old["sample"], old["response_id"]) <= (r.sample, r.id):
        return False
    responses[r.competitor] = response_record(r)
    return True


def _rank(seed: int, instruction_id: str, a: str, b: str) -> str:
    """A seeded pseudo-random key of an unordered pair; the k smallest are the sampled opponents.
    Ranking pairs (instead of drawing from a list) makes the choice independent of arrival order."""
    lo, hi = sorted((a, b))
    return hashlib.sha256(f"{seed}\x00{instruction_id}\x00{lo}\x00{hi}".encode()).hexdigest()


def plan_pairs(plan: str, competitors: dict[str, str], targets: Iterable[str], *, k: int = 2, seed: int = 0,
               instruction_id: str = "") -> set[tuple[str, str]]:
    """Unordered competitor pairs (sorted tuples) to battle. `competitors`: competitor name -> model name.

    target-vs-all: every competitor of a target model against every non-target competitor;
    round-robin: all pairs of distinct competitors;
    sampled: each target competitor (every competitor when there are no targets) against its k
    opponents of smallest seeded rank (seed, instruction id, pair).
    A competitor never meets itself; checkpoints of one model are distinct competitors.
    """
    names = sorted(competitors)
    tset = set(targets)
    is_target = {n: competitors[n] in tset for n in names}
    pairs: set[tuple[str, str]] = set()
    if plan == "target-vs-all":
        for t in (n for n in names if is_target[n]):
            pairs.update(tuple(sorted((t, o))) for o in names if not is_target[o])
    elif plan == "round-robin":
        pairs.update((a, b) for i, a in enumerate(names) for b in names[i + 1:])
    elif plan == "sampled":
        players = [n for n in names if is_target[n]] or names
        for p in players:
            pool = [o for o in names if o != p and not (is_target[o] and tset and is_target[p])]
            pool.sort(key=lambda o: _rank(seed, instruction_id, p, o))
            pairs.update(tuple(sorted((p, o))) for o in pool[:k])
    else:
        raise ValueError(f"unknown battle plan {plan!r} (one of {', '.join(PLANS)})")
    return pairs


def new_battles(ins: dict[str, Any], rec: dict[str, Any], instruction_id: str, plan: str,
                competitors_targets: Iterable[str], k: int, seed: int) -> list[Battle]:
    """Battles of this instruction not emitted yet; marks them emitted in `rec`."""
    responses = rec.get("responses", {})
    emitted = set(rec.setdefault("emitted", []))
    comps = {name: r["model"] for name, r in responses.items()}
    out = []
    for a_name, b_name in sorted(plan_pairs(plan, comps, competitors_targets, k=k, seed=seed,
                                            instruction_id=instruction_id)):
        ra, rb = sorted((responses[a_name], responses[b_name]), key=lambda r: r["response_id"])
        battle = Battle(
            instruction_id=instruction_id, split=ins["split"],
            messages=[Message(**m) for m in ins["messages"]], reference=ins.get("reference"),
            references=ins.get("references"), category=ins.get("category"), plan=plan,
            a=Contestant(response_id=ra["response_id"], model=ra["model"], checkpoint=ra["checkpoint"],
                         answers=ra["answers"]),
            b=Contestant(response_id=rb["response_id"], model=rb["model"], checkpoint=rb["checkpoint"],
                         answers=rb["answers"]))
        if battle.id not in emitted:
            emitted.add(battle.id)
            out.append(battle)
    rec["emitted"] = sorted(emitted)
    return out


# ---------------------------------------------------------------------------------------------- ratings

def empty_partition_state() -> dict[str, Any]:
    return {"offset": -1, "recent": [], "applied": 0, "duplicates": 0, "invalid": 0,
            "counts": {"eval": {}, "train": {}}}


class Retention:
    """Keys of one partition in write order, each with a size (ids in an id record, 1 for a loss record).
    `add` returns the oldest keys to delete so that the rest still holds at least `limit` (the newest key
    is always kept). Re-adding a key moves it to the newest end."""

    def __init__(self, limit: int):
        self.limit = limit
        self.keys: OrderedDict[str, int] = OrderedDict()
        self.total = 0

    def add(self, key: str, size: int = 1) -> list[str]:
        self.total -= self.keys.pop(key, 0)
        self.keys[key] = size
        self.total += size
        expired = []
        while len(self.keys) > 1:
            first, n = next(iter(self.keys.items()))
            if self.total - n < self.limit:
                break
            del self.keys[first]
            self.total -= n
            expired.append(first)
        return expired

    def __len__(self) -> int:
        return len(self.keys)


class LossHomes:
    """Which changelog record holds the latest copy of each loss record of one partition. A batch writes
    the loss records it changed as one record (`L:<p>:<offset>`, a dict of them) instead of one record each
    (docs/streams.md, "Retention"); a loss record that a later batch rewrites, or that retention drops,
    leaves its older home, and a home that holds no latest copy any more is deleted from the changelog.
    A loss record written by an older version is its own home (`l:<p>:<instruction>`)."""

    def __init__(self) -> None:
        self.home: dict[str, str] = {}
        self.held: dict[str, set[str]] = {}

    def place(self, lkey: str, home: str) -> list[str]:
        """lkey's latest copy is now in `home`; returns the homes that hold nothing current any more."""
        old = self.home.get(lkey)
        self.home[lkey] = home
        self.held.setdefault(home, set()).add(lkey)
        return self._release(old, lkey) if old is not None and old != home else []

    def drop(self, lkey: str) -> list[str]:
        """lkey is gone (retention); returns the homes that hold nothing current any more."""
        old = self.home.pop(lkey, None)
        return self._release(old, lkey) if old is not None else []

    def _release(self, home: str, lkey: str) -> list[str]:
        held = self.held.get(home)
        if held is None:
            return []
        held.discard(lkey)
        if held:
            return []
        del self.held[home]
        return [home]


# A batch's loss records go out as changelog records of at most about this much JSON: the producer refuses a
# record over its max_request_size (1 MB by default), and a batch's records grow with the losses each
# instruction already holds. One loss record larger than this still goes alone in one record.
LOSS_BATCH_BYTES = 256 * 1024


def loss_batches(partition: int, offset: int, records: dict[str, dict[str, Any]]
                 ) -> list[tuple[str, dict[str, str], bytes]]:
    """The changelog records that hold a batch's loss records: (home key, {loss key: the record's JSON text},
    the home's JSON). The first is `L:<p>:<offset>`, any further ones `L:<p>:<offset>+<k>` (see home_order)."""
    out: list[tuple[str, dict[str, str], bytes]] = []
    chunk: dict[str, str] = {}
    parts: list[str] = []
    size = 0

    def close() -> None:
        home = f"L:{partition}:{offset}" + (f"+{len(out)}" if out else "")
        out.append((home, chunk, ("{" + ",".join(parts) + "}").encode()))

    for lkey, rec in records.items():
        text = loss_text(rec)
        part = f"{json.dumps(lkey)}:{text}"
        if parts and size + len(part) > LOSS_BATCH_BYTES:
            close()
            chunk, parts, size = {}, [], 0
        chunk[lkey] = text
        parts.append(part)
        size += len(part) + 1
    if parts:
        close()
    return out


def loss_text(rec: dict[str, Any]) -> str:
    """A loss record as the stream holds it in memory: its JSON text. A string is not a container, so the
    cyclic garbage collector never scans it: held as dicts, the kept loss records were most of what its
    full collections walked (the produce -> table-update p99), and the text is smaller too."""
    return json.dumps(rec, separators=(",", ":"))


def loss_record(value: str | dict[str, Any] | None) -> dict[str, Any]:
    """A held loss record as a new dict to change: from its text, or from a dict (recovered from a changelog
    record, or given by a test); {} for none."""
    if value is None:
        return {}
    return json.loads(value) if isinstance(value, str) else dict(value)


def home_order(home: str) -> tuple[int, int]:
    """Write order of the loss-record batch records of one partition: (batch offset, k)."""
    offset, _, k = home.split(":", 2)[2].partition("+")
    return int(offset), int(k or 0)


def count(counts: dict[str, dict[str, int]], a: str, b: str, winner: str) -> None:
    cell = counts.setdefault(f"{a}\t{b}", {})
    cell[winner] = cell.get(winner, 0) + 1


def add_counts(counts: dict[str, dict[str, int]], added: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """`counts` plus `added` as a new dict; the cells that change are new dicts too, so `counts` (a table
    value) stays as it was. Pairs and winners keep their first-seen order."""
    out = dict(counts)
    for pair, cell in added.items():
        merged = dict(out.get(pair) or {})
        for winner, n in cell.items():
            merged[winner] = merged.get(winner, 0) + n
        out[pair] = merged
    return out


def iter_counts(counts: dict[str, dict[str, int]]):
    """(a, b, winner, n) rows of a counts dict, rated winners only."""
    for pair, cell in counts.items():
        a, _, b = pair.partition("\t")
        for winner, n in cell.items():
            if winner in RATED and n:
                yield a, b, winner, n


def merge_counts(states: Iterable[dict[str, Any]], split: str) -> dict[str, dict[str, int]]:
    total: dict[str, dict[str, int]] = {}
    for st in states:
        for pair, cell in st["counts"].get(split, {}).items():
            t = total.setdefault(pair, {})
            for w, n in cell.items():
                t[w] = t.get(w, 0) + n
    return total


def target_losses(v: Verdict, targets: set[str], margin: float) -> list[dict[str, Any]]:
    """Loss entries of each target side of `v` that lost a train battle by at least `margin`: the losses
    a Failure is made of. Other losses are not kept (they are in the ledger; the stream's state stays
    small)."""
    if v.split != "train" or v.margin < margin:
        return []
    out = []
    for side, other in (("a", "b"), ("b", "a")):
        model = getattr(v, f"model_{side}")
        if model not in targets or v.winner != f"model_{other}":
            continue
        out.append({"verdict_id": v.id, "battle_id": v.battle_id, "split": v.split,
                    "target": model, "target_checkpoint": getattr(v, f"checkpoint_{side}"),
                    "target_competitor": getattr(v, f"competitor_{side}"), "side": side,
                    "opponent": getattr(v, f"competitor_{other}"),
                    "score_target": getattr(v, f"score_{side}"), "score_opponent": getattr(v, f"score_{other}"),
                    "margin": float(v.margin), "selected": v.split == "train" and v.margin >= margin,
                    "judge": v.judge.model_dump()})
    return out


def failure_for(instruction_id: str, losses: dict[str, dict[str, Any]], target_competitor: str,
                pairing: dict[str, Any] | None, ins: dict[str, Any] | None) -> Failure | None:
    """The Failure record of one target competitor on one instruction, from its selected losses:
    the winning answer is the one of the highest-margin loss seen so far. None without the answers."""
    mine = [e for e in losses.values() if e["selected"] and e["target_competitor"] == target_competitor]
    if not mine or not pairing or not ins:
        return None
    responses = pairing.get("responses", {})
    best = max(mine, key=lambda e: (e["margin"], e["verdict_id"]))
    t_resp, w_resp = responses.get(target_competitor), responses.get(best["opponent"])
    if t_resp is None or w_resp is None:
        return None
    return Failure(
        instruction_id=instruction_id, split="train", target=best["target"],
        target_checkpoint=best["target_checkpoint"], messages=[Message(**m) for m in ins["messages"]],
        reference=ins.get("reference"), target_answers=t_resp["answers"], winner_model=best["opponent"],
        winner_answers=w_resp["answers"], margin=best["margin"], score_target=best["score_target"],
        score_winner=best["score_opponent"], battle_ids=sorted({e["battle_id"] for e in mine}),
        verdict_ids=sorted(e["verdict_id"] for e in mine), losses=len(mine), judge=JudgeInfo(**best["judge"]))
