"""Judge tests. So far: the score parser on the 1,040 real GPT-4 reviews and on hand cases."""
import glob
import json

import pytest

from consumers.judging.parse import parse_scores
from tests.conftest import shared_data

# In these two reviews the text says "Assistant 2: 4" but the dataset's score field says 2; we parse what
# the text states.
_FIELD_DISAGREES_WITH_TEXT = {"57H8uDw5kYEX2wFgvY8BN8": (10.0, 4.0), "ZgNXGB9wziYPnGFjqLzqVH": (10.0, 4.0)}


def test_parses_every_real_gpt4_review():
    root = shared_data("vicuna_eval_2023/review")
    n = 0
    for path in sorted(glob.glob(f"{root}/**/*.jsonl", recursive=True)):
        for line in open(path):
            d = json.loads(line)
            n += 1
            want = _FIELD_DISAGREES_WITH_TEXT.get(d["review_id"], tuple(float(x) for x in d["score"]))
            assert parse_scores(d["text"]) == want, d["review_id"]
    assert n == 1040


@pytest.mark.parametrize("text,want", [
    ("8 9\nBoth fine.", (8.0, 9.0)),
    ("8.5 9\nexplanation", (8.5, 9.0)),
    ("8, 7\n", (8.0, 7.0)),
    ("Solving...\nAssistant 1: 8/10\nAssistant 2: 3\nDone", (8.0, 3.0)),
    ("The scores are (1, 5) for Assistant 1 and Assistant 2.", (1.0, 5.0)),
    ("I cannot decide.", None),
    ("", None),
    ("42 7\nout of range", None),
])
def test_hand_cases(text, want):
    assert parse_scores(text) == want
