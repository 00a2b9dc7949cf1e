#!/usr/bin/env bash
# Replays the 2023 Vicuna eval through the whole arena, as separate processes on one broker: the seven
# models' recorded answers (replay generation pools), round-robin pairing in the Faust worker, the
# recorded GPT-4 reviews as the judge (one game per battle: they exist in one order only), the SQL
# ledger, then the leaderboard and its agreement with the human Chatbot Arena.
#
#   docs/recipes/replay-vicuna-eval.sh [VICUNA_DIR] [HUMAN_LEADERBOARD_CSV] [WORK_DIR]
#
# VICUNA_DIR is FastChat's fastchat/eval/table folder (question.jsonl, answer/, review/); the defaults
# are the copies in ../shared/data beside a development checkout. Uses ./arena (the repo's virtualenv).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
data="$(realpath "${1:-$repo/../shared/data/vicuna_eval_2023}")"
human="$(realpath "${2:-$repo/../shared/data/reference_leaderboards/lmsys_arena_elo_results_20240329_leaderboard.csv}")"
work="${3:-$(mktemp -d)}"
mkdir -p "$work" && cd "$work"
[ -f "$data/question.jsonl" ] || { echo "no $data/question.jsonl: pass FastChat's fastchat/eval/table folder" >&2; exit 2; }

declare -A answers=([gpt35]=answer_gpt35.jsonl [bard]=answer_bard.jsonl [vicuna-13b]=answer_vicuna-13b.jsonl
  [vicuna-13b-new-hp]=answer_vicuna-13b-20230322-new-hp-fp16.jsonl [vicuna-7b]=answer_vicuna-7b-20230322-fp16.jsonl
  [alpaca-13b]=answer_alpaca-13b.jsonl [llama-13b]=answer_llama-13b.jsonl)
{
  printf '[arena]\nbattle_plan = "round-robin"\n\n[judge]\nbackend = "replay"\nmodel = "%s/review"\n' "$data"
  printf 'games = 1\npolicy = "score-sum"\n\n[db]\nurl = "sqlite:///%s/arena.db"\n' "$work"
  for m in "${!answers[@]}"; do
    printf '\n[[competitors]]\nname = "%s"\nbackend = "replay"\nmodel = "%s/answer/%s"\nsplits = ["eval"]\n' \
      "$m" "$data" "${answers[$m]}"
  done
} > arena.toml
"$repo/arena" --help > /dev/null  # creates the virtualenv on first use
arena=("$repo/.venv/bin/arena" --config "$work/arena.toml")  # not a function: $! must be the process itself

"${arena[@]}" broker --port 0 > broker.log 2>&1 &
pids=($!)
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
for _ in $(seq 120); do grep -q "export KAFKA_BOOTSTRAP_SERVERS=" broker.log && break; sleep 0.5; done
export KAFKA_BOOTSTRAP_SERVERS="$(sed -n 's/.*export KAFKA_BOOTSTRAP_SERVERS=\([^ ]*\).*/\1/p' broker.log | head -1)"
[ -n "$KAFKA_BOOTSTRAP_SERVERS" ] || { echo "the broker did not start; see $work/broker.log" >&2; exit 1; }

"${arena[@]}" stream --without-web > stream.log 2>&1 & pids+=($!)  # no fixed port to collide on
"${arena[@]}" ledger --max-idle 20 > ledger.log 2>&1 & ledger=$!
"${arena[@]}" judge --max-idle 20 > judge.log 2>&1 & judge=$!
for m in "${!answers[@]}"; do "${arena[@]}" generate --model "$m" --max-idle 20 > "gen-$m.log" 2>&1 & pids+=($!); done
"${arena[@]}" feed --split eval "$data/question.jsonl"
wait "$judge" "$ledger"

echo "judge: $(tail -n 1 judge.log)"
"${arena[@]}" leaderboard --from-ledger --format markdown
"${arena[@]}" leaderboard --from-ledger --format csv > leaderboard.csv
cat > names.json <<'JSON'
{"gpt35": "gpt-3.5-turbo-0314", "vicuna-13b": "vicuna-13b", "vicuna-7b": "vicuna-7b",
 "alpaca-13b": "alpaca-13b", "llama-13b": "llama-13b"}
JSON
"${arena[@]}" consistency --benchmark leaderboard.csv --reference "$human" --name-map names.json
echo "files in $work"
