"""A family of verifiable tasks the project generates: every instruction carries its reference answer,
so the reference judge grades answers honestly and the embedded demo needs no external model.

Tasks are small on purpose (a tiny model can learn them on a laptop CPU in seconds), deterministic
given a seed, and varied enough that competitors trained for different lengths differ in strength.
"""
from __future__ import annotations

import random
from collections.abc import Iterator

from arena_flywheel.events import Instruction, Message

WORDS = (
    "apple river stone cloud tiger lemon piano rocket garden silver window forest candle "
    "planet dragon coffee mirror orange pencil violin castle spider rabbit bottle"
).split()

FAMILIES = ("reverse", "sort", "upper", "count", "first", "last", "add")


def _task(rng: random.Random, family: str) -> tuple[str, str]:
    n = rng.randint(2, 4)
    words = rng.sample(WORDS, n)
    text = " ".join(words)
    if family == "reverse":
        return f"Reverse the words: {text}", " ".join(reversed(words))
    if family == "sort":
        return f"Sort the words: {text}", " ".join(sorted(words))
    if family == "upper":
        return f"Upper case: {text}", text.upper()
    if family == "count":
        return f"Count the words: {text}", str(n)
    if family == "first":
        return f"First word: {text}", words[0]
    if family == "last":
        return f"Last word: {text}", words[-1]
    if family == "add":
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        return f"Add: {a} + {b}", str(a + b)
    raise ValueError(f"unknown task family {family!r}; known: {', '.join(FAMILIES)}")


def generate(count: int, *, seed: int = 0, split: str = "train", families: tuple[str, ...] = FAMILIES,
             source: str = "arena-tasks", exclude: set[str] | None = None) -> Iterator[Instruction]:
    """Yield `count` distinct verifiable instructions (deterministic for a seed and split).

    `exclude`: prompts never to produce (e.g. the eval split's, so train and eval are disjoint).
    """
    rng = random.Random(f"{seed}:{split}")
    seen: set[str] = set()
    exclude = exclude or set()
    attempts = 0
    while len(seen) < count:
        attempts += 1
        if attempts > count * 50:
            raise ValueError(f"cannot make {count} distinct tasks from families {families}")
        family = families[rng.randrange(len(families))]
        prompt, answer = _task(rng, family)
        if prompt in seen or prompt in exclude:
            continue
        seen.add(prompt)
        yield Instruction(messages=[Message(role="user", content=prompt)], split=split, source=source,
                          category=family, tags=[family], reference=answer, references=[answer])


def corpus(n: int = 400, seed: int = 99) -> list[str]:
    """Text for training the zoo's shared tokenizer: prompts and answers of every family."""
    out = []
    for ins in generate(n, seed=seed, split="train"):
        out += [ins.messages[0].content, ins.reference or ""]
    out += WORDS + [w.upper() for w in WORDS]
    return out
