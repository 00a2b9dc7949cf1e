"""The documented recipes, run as a user runs them: separate `arena` processes on one broker."""
import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import shared_data

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_replay_vicuna_eval_recipe(tmp_path):
    """docs/recipes/replay-vicuna-eval.sh: feed, seven replay pools, the Faust worker, the replayed GPT-4
    judge and the ledger as processes, then the leaderboard and its agreement with the human arena."""
    data = shared_data("vicuna_eval_2023")
    human = shared_data("reference_leaderboards/lmsys_arena_elo_results_20240329_leaderboard.csv")
    out = subprocess.run([str(REPO / "docs/recipes/replay-vicuna-eval.sh"), str(data), str(human), str(tmp_path)],
                         capture_output=True, text=True, timeout=540)
    assert out.returncode == 0, out.stderr[-3000:]
    judge = json.loads(out.stdout.split("judge: ", 1)[1].splitlines()[0])
    # 21 pairs x 80 questions; the reviews cover 13 pairs, the other 8 pairs are invalid, not guessed
    assert (judge["battles"], judge["invalid"], judge["dead_letters"]) == (1680, 640, 0)
    assert judge["health"]["single_game_rate"] == 1.0
    board = [line.split("|")[2].strip() for line in out.stdout.splitlines() if line.startswith("| ") and
             line.split("|")[1].strip().isdigit()]
    assert board[0] == "gpt35" and board[-2:] == ["alpaca-13b", "llama-13b"] and len(board) == 7
    metrics = {ln.split("│")[1].strip(): ln.split("│")[2].strip() for ln in out.stdout.splitlines()
               if ln.count("│") == 3}
    assert float(metrics["spearman"]) == 1.0 and float(metrics["agreement_with_confidence"]) == 1.0
    assert (tmp_path / "arena.db").exists() and (tmp_path / "leaderboard.csv").exists()
