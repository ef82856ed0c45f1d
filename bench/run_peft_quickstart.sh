#!/usr/bin/env bash
# The quickstart task (README "Quickstart") trained with each PEFT method
# after the same number of steps, side by side: trainable parameters,
# training tokens/s, held-out exact match and stop rate, validation loss.
#
#   bench/run_peft_quickstart.sh [BUILD_DIR] [MODEL_DIR]
#
# Needs `llmft` and `quickstart_task` built in BUILD_DIR (default build) and
# SmolLM2-135M-Instruct converted into MODEL_DIR (default models/smollm2; see
# scripts/quickstart step 1). Every run: examples/quickstart/quickstart.pbtxt
# (40 steps of batch 4, padded rows of 96 tokens, cosine schedule) with the
# method and its learning rate overridden; LoRA is scored on its merged
# export, the others (which cannot merge) through `generate --adapter` on the
# base. The machine's load average is recorded beside each run. Outputs under runs/peft/ (git-ignored). LLMFT_PEFT_RUNS="lora
# prefix_tuning" makes only the runs named.
set -euo pipefail
build_dir=${1:-build}
model=${2:-models/smollm2}
llmft="$build_dir/launch/llmft"
task="$build_dir/examples/quickstart_task"
runs=runs/peft
config=examples/quickstart/quickstart.pbtxt
rm -rf "$runs"
mkdir -p "$runs"

"$task" make --out "$runs/task" --train 2000 --heldout 50 --seed 1 >/dev/null
"$llmft" data build --input "$runs/task/train.jsonl" --format messages --tokenizer "$model" \
  --output "$runs/data/train" --shards 1 --val-fraction 0.02 --seq-len 96 >/dev/null
train="$runs/data/train-00000-of-00001.tfrecord"
validation="$runs/data/train-val-00000-of-00001.tfrecord"

# name | learning rate | the method's --set overrides, ';'-separated (the oneof member they name selects it).
# Learning rates: LoRA's and the bottleneck adapters' the quickstart's; the
# prompt-learning methods the larger rates their papers and PEFT's examples
# use (Lester et al.: 0.3 with Adafactor; PEFT's prompt-tuning example 3e-2,
# prefix tuning 1e-2).
runs_to_make=(
  "lora|1e-3|"
  "prompt_tuning|3e-2|peft.prompt_tuning.num_virtual_tokens=20;peft.prompt_tuning.init=TEXT;peft.prompt_tuning.init_text=Extract the record as JSON"
  "p_tuning|3e-3|peft.p_tuning.num_virtual_tokens=20;peft.p_tuning.encoder_hidden_size=128"
  "prefix_tuning|1e-2|peft.prefix_tuning.num_virtual_tokens=20;peft.prefix_tuning.prefix_projection=true;peft.prefix_tuning.encoder_hidden_size=128"
  "bottleneck|1e-3|peft.bottleneck.placement=PFEIFFER;peft.bottleneck.reduction_factor=16"
)
summary="$runs/summary.txt"
printf '%-14s %6s %12s %9s %8s %11s %11s %10s\n' method lr trainable "train s" "tok/s" exact stopped "val loss" \
  >"$summary"
for entry in "${runs_to_make[@]}"; do
  IFS='|' read -r name lr method_sets <<<"$entry"
  if [[ -n "${LLMFT_PEFT_RUNS:-}" && " $LLMFT_PEFT_RUNS " != *" $name "* ]]; then continue; fi
  dir="$runs/$name"
  overrides=(--set data.train_files="$train" --set data.validation_files="$validation"
             --set optimizer.lr="$lr" --set checkpoint.dir="$dir/checkpoints"
             --set logging.jsonl_path="$dir/metrics.jsonl" --set logging.tensorboard_dir=
             --set logging.every_n_steps=40)
  IFS=';' read -r -a assignments <<<"$method_sets"
  for assignment in "${assignments[@]}"; do overrides+=(--set "$assignment"); done
  start=$(date +%s.%N)
  "$llmft" train --config "$config" "${overrides[@]}" | tee "$dir.train.txt"
  end=$(date +%s.%N)
  if [[ "$name" == lora ]]; then
    "$llmft" export --config "$config" "${overrides[@]}" --merged "$dir/merged" >/dev/null
    generate=(--model "$dir/merged")
  else
    "$llmft" export --config "$config" "${overrides[@]}" --adapter "$dir/adapter" >/dev/null
    generate=(--model "$model" --adapter "$dir/adapter")
  fi
  "$llmft" generate "${generate[@]}" --batch "$runs/task/heldout.jsonl" --batch-output "$dir/after.jsonl" \
    --max-new-tokens 32 --show 0 >"$dir.generate.txt"
  "$llmft" eval --config "$config" "${overrides[@]}" >"$dir.eval.txt"
  echo "$name: load average $(cut -d' ' -f1-3 /proc/loadavg) after training" >>"$runs/load.txt"
  line=$(grep '^step 40/40' "$dir.train.txt")
  tokens_per_second=$(sed -n 's/.* | \([0-9,]*\) tok\/s | .*/\1/p' <<<"$line" | tr -d ,)
  trainable=$(sed -n 's/^trainable parameters: \([0-9]*\) of.*/\1/p' "$dir.train.txt")
  printf '%-14s %6s %12s %9.1f %8s %11s %11s %10s\n' "$name" "$lr" "$trainable" \
    "$(awk -v a="$start" -v b="$end" 'BEGIN { print b - a }')" "$tokens_per_second" \
    "$(sed -n 's/^exact_match \([0-9]*\/[0-9]*\).*/\1/p' "$dir.generate.txt")" \
    "$(sed -n 's/^stopped_by_itself \([0-9]*\/[0-9]*\).*/\1/p' "$dir.generate.txt")" \
    "$(sed -n 's/.*loss \([0-9.]*\).*/\1/p' "$dir.eval.txt" | head -1)" >>"$summary"
done
cat "$summary"
