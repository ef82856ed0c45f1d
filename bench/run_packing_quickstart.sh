#!/usr/bin/env bash
# The quickstart task (README "Quickstart") trained in each batch mode, side
# by side: held-out exact match, validation loss, and throughput in row
# positions and in real tokens (positions x packing efficiency).
#
#   bench/run_packing_quickstart.sh [BUILD_DIR] [MODEL_DIR]
#
# Needs `llmft` and `quickstart_task` built in BUILD_DIR (default build) and
# SmolLM2-135M-Instruct converted into MODEL_DIR (default models/smollm2; see
# scripts/quickstart step 1). Every run: examples/quickstart/quickstart.pbtxt
# (LoRA r 8, 40 steps of batch 4, lr 1e-3 cosine) with only the layout
# overridden, the same task data (seed 1), merged export, greedy scoring of
# the 50 held-out conversations, and `llmft eval` of the validation split.
# Outputs under runs/packing/ (git-ignored). LLMFT_PACKING_RUNS="padded-256
# packed-256" makes only the runs named (e.g. to time a pair again).
set -euo pipefail
build_dir=${1:-build}
model=${2:-models/smollm2}
llmft="$build_dir/launch/llmft"
task="$build_dir/examples/quickstart_task"
runs=runs/packing
config=examples/quickstart/quickstart.pbtxt
rm -rf "$runs"
mkdir -p "$runs"

"$task" make --out "$runs/task" --train 2000 --heldout 50 --seed 1 >/dev/null
# Records kept whole (the quickstart cuts them at 96 when building; here the
# loader decides), then the layouts side by side.
"$llmft" data build --input "$runs/task/train.jsonl" --format messages --tokenizer "$model" \
  --output "$runs/data/train" --shards 1 --val-fraction 0.02 >/dev/null
train="$runs/data/train-00000-of-00001.tfrecord"
validation="$runs/data/train-val-00000-of-00001.tfrecord"
for seq_len in 96 256; do "$llmft" data inspect "$train" --seq-len "$seq_len"; done

# name batch_mode seq_len
runs_to_make=(
  "padded-96 PADDED 96"
  "packed-96 PACKED 96"
  "contiguous-96 PACKED_CONTIGUOUS 96"
  "padded-256 PADDED 256"
  "packed-256 PACKED 256"
)
summary="$runs/summary.txt"
printf '%-15s %-18s %7s %9s %8s %8s %14s %11s %12s %10s\n' run batch_mode seq_len "train s" "tok/s" packing \
  "real tok/s" "exact" "stopped" "val loss" >"$summary"
for entry in "${runs_to_make[@]}"; do
  read -r name mode seq_len <<<"$entry"
  if [[ -n "${LLMFT_PACKING_RUNS:-}" && " $LLMFT_PACKING_RUNS " != *" $name "* ]]; then continue; fi
  dir="$runs/$name"
  overrides=(--set data.train_files="$train" --set data.validation_files="$validation"
             --set data.batch_mode="$mode" --set data.seq_len="$seq_len"
             --set checkpoint.dir="$dir/checkpoints" --set logging.jsonl_path="$dir/metrics.jsonl"
             --set logging.tensorboard_dir= --set logging.every_n_steps=40)
  start=$(date +%s.%N)
  "$llmft" train --config "$config" "${overrides[@]}" | tee "$dir.train.txt"
  end=$(date +%s.%N)
  "$llmft" export --config "$config" "${overrides[@]}" --merged "$dir/merged" >/dev/null
  "$llmft" generate --model "$dir/merged" --batch "$runs/task/heldout.jsonl" --batch-output "$dir/after.jsonl" \
    --max-new-tokens 32 --show 0 >"$dir.generate.txt"
  "$llmft" eval --model "$dir/merged" --data "$validation" --seq-len 256 >"$dir.eval.txt"
  # The last progress line covers all 40 steps (logging.every_n_steps=40).
  line=$(grep '^step 40/40' "$dir.train.txt")
  echo "$name: load average $(cut -d' ' -f1-3 /proc/loadavg) after training" >>"$runs/load.txt"
  tokens_per_second=$(sed -n 's/.* | \([0-9,]*\) tok\/s | .*/\1/p' <<<"$line" | tr -d ,)
  packing=$(sed -n 's/.* | packing \([0-9]*\)% .*/\1/p' <<<"$line")
  printf '%-15s %-18s %7s %9.1f %8s %7s%% %14.0f %11s %12s %10s\n' "$name" "$mode" "$seq_len" \
    "$(awk -v a="$start" -v b="$end" 'BEGIN { print b - a }')" "$tokens_per_second" "$packing" \
    "$(awk -v t="$tokens_per_second" -v p="$packing" 'BEGIN { print t * p / 100 }')" \
    "$(sed -n 's/^exact_match \([0-9]*\/[0-9]*\).*/\1/p' "$dir.generate.txt")" \
    "$(sed -n 's/^stopped_by_itself \([0-9]*\/[0-9]*\).*/\1/p' "$dir.generate.txt")" \
    "$(sed -n 's/^loss \([^ ]*\) .*/\1/p' "$dir.eval.txt")" >>"$summary"
done
cat "$summary"
