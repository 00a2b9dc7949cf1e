import json

from arena_flywheel.testset import decontaminate, load_pool, ngrams


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
