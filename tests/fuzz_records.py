"""Random and adversarial Kafka values for the fuzz tests (tests/test_fuzz.py): every kind of record that must
become a dead letter, and good events that carry control characters (cleaned, then accepted)."""
from __future__ import annotations

import json
import random
from typing import Callable

from arena_flywheel.events import Event


def _wire(event: Event) -> dict:
    d = event.to_wire()
    d.pop("id", None)  # the hostile variants change content; a kept id would only add a mismatch reason
    return d


def hostile_values(rng: random.Random, good: Callable[[int], Event], n: int, *, max_record_bytes: int,
                   wrong_type: Event | None = None) -> list[tuple[str, bytes | None]]:
    """n (label, value) records, none of which may be accepted as an event of good()'s type.

    good(i) makes a valid event of the consumer's type; its wire form is mangled here. wrong_type is a valid
    event of another type (for consumers that expect one type only)."""
    def mangled(i: int) -> dict:
        return _wire(good(10_000 + i))

    makers: list[tuple[str, Callable[[int], bytes | None]]] = [
        ("null value", lambda i: None),
        ("json null", lambda i: b"null"),
        ("json list", lambda i: json.dumps([rng.randint(0, 9) for _ in range(rng.randint(0, 5))]).encode()),
        ("nested", lambda i: b"[" * rng.randint(40, 3000) + b"]" * 3),
        ("nested object", lambda i: (b'{"a":' * rng.randint(40, 600)) + b"1" + b"}" * 3),
        ("huge integer", lambda i: json.dumps({**mangled(i)})[:-1].encode() + b', "n": ' + b"9" * rng.randint(70, 6000)
         + b"}"),
        ("oversized", lambda i: b'{"pad": "' + b"x" * (max_record_bytes + rng.randint(1, 4096)) + b'"}'),
        ("invalid utf-8", lambda i: b'{"schema": "\xff\xfe' + bytes(rng.randrange(256) for _ in range(8)) + b'"}'),
        ("random bytes", lambda i: bytes(rng.randrange(256) for _ in range(rng.randint(1, 300)))),
        ("truncated", lambda i: good(20_000 + i).encode()[: rng.randint(1, 40)]),
        ("NaN", lambda i: json.dumps({**mangled(i), "created_at": float("nan")}).encode()),
        ("wrong field type", lambda i: json.dumps({**mangled(i), "created_at": {"not": "a number"}}).encode()),
        ("unknown schema", lambda i: json.dumps({**mangled(i), "schema": "arena.nothing/1"}).encode()),
        ("id mismatch", lambda i: json.dumps({**mangled(i), "id": "xxx-0000000000"}).encode()),
    ]
    if wrong_type is not None:
        makers.append(("wrong type", lambda i: wrong_type.encode()))
    out = []
    for i in range(n):
        label, make = makers[i % len(makers)] if i < len(makers) else rng.choice(makers)
        out.append((label, make(i)))
    return out


def self_battle(event: Event) -> bytes:
    """The wire form of a Battle or Verdict whose two sides are the same competitor."""
    d = _wire(event)
    if "competitor_a" in d:  # a verdict
        d.update(competitor_b=d["competitor_a"], model_b=d["model_a"], checkpoint_b=d["checkpoint_a"])
    else:
        d["b"] = dict(d["a"])
    return json.dumps(d).encode()


def mix(rng: random.Random, good: list[bytes], bad: list[tuple[str, bytes | None]]) -> list[bytes | None]:
    """Good and bad values interleaved at random, good ones keeping their order."""
    slots = [("g", v) for v in good] + [("b", v) for _, v in bad]
    order = sorted(range(len(slots)), key=lambda k: (rng.random(), k))
    goods = iter(good)
    out = []
    for k in order:
        kind, v = slots[k]
        out.append(next(goods) if kind == "g" else v)
    return out
