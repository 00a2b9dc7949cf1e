"""Dashboard: DashboardState's dict (the /api/state contract) and the page it is served with."""
from __future__ import annotations

from streams.dashboard import PAGE, DashboardState, _version


def test_state_to_dict_counts_redelivered_verdict_once():
    s = DashboardState()
    v = {"id": "v1", "model_a": "m1", "model_b": "m2", "winner": "m1"}
    s.add_verdict(v)
    s.add_verdict(v)  # at-least-once redelivery
    s.add_verdict({"id": "v2", "model_a": "m2", "model_b": "m1", "winner": None})
    s.set_leaderboard([{"model": "m1", "rating": 1010.0, "lower": 1000.0, "upper": 1020.0, "rank": 1},
                       {"model": "m2", "rating": 990.0, "lower": 980.0, "upper": 1000.0, "rank": 2}], t=5.0)
    s.add_failure({"instruction_id": "i1", "explanation": "wrong sum"})
    s.add_checkpoint("target", "target@1", 1)
    d = s.to_dict()
    assert d["verdicts"] == 2
    assert d["pairs"] == [{"a": "m1", "b": "m2", "a_wins": 1, "ties": 1, "b_wins": 0}]
    assert d["elo"] == {"m1": 1010.0, "m2": 990.0}
    assert d["history"]["m1"] == [[5.0, 1010.0, 1000.0, 1020.0]]
    assert d["failures"][0]["explanation"] == "wrong sum"
    assert d["checkpoints"] == [{"model": "target", "checkpoint": "target@1", "iteration": 1}]
    assert set(d) == {"leaderboard", "elo", "history", "checkpoints", "pairs", "health", "failures",
                      "verdicts", "generated_at"}
    # the version used by /api/events changes with content, not with generated_at
    v1 = _version(d)
    assert _version(s.to_dict()) == v1
    s.add_verdict({"id": "v3", "model_a": "m1", "model_b": "m2", "winner": "m2"})
    assert _version(s.to_dict()) != v1


def test_page_has_no_external_urls():
    # no CDN: the page must work without network
    assert "http://" not in PAGE and "https://" not in PAGE
