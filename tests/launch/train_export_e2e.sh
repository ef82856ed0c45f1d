#!/bin/sh
# e2e: `llmft train` on a tiny random model, then `llmft export` (merged, GGUF,
# sharded, adapter, adapter GGUF) and `llmft eval`, through the binary; SIGTERM during
# training writes a checkpoint that `--set checkpoint.resume=latest` continues.
# usage: train_export_e2e.sh LLMFT_BINARY MAKE_TINY_RUN_BINARY SOURCE_DIR
set -u
llmft="$1"
make_tiny_run="$2"
examples="$3/examples"
work=$(mktemp -d "${TMPDIR:-/tmp}/llmft-train-e2e.XXXXXX")
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

"$make_tiny_run" "$work" || fail "fixture writer exited $?"
cat > "$work/run.pbtxt" <<PBTXT
model { hf_dir: "$work/model" }
peft { lora { r: 4 alpha: 8 dropout: 0.05 target_modules: "all-linear" } }
data {
  train_files: "$work/data/train-*-of-00002.tfrecord"
  validation_files: "$work/data/valid.tfrecord"
  seq_len: 16 batch_size: 2 grad_accumulation_steps: 2 shuffle_buffer: 8
}
optimizer { lr: 1e-2 }
schedule { kind: COSINE warmup_steps: 2 total_steps: 12 }
checkpoint { dir: "$work/run/checkpoints" every_n_steps: 5 keep_last: 2 }
logging { every_n_steps: 4 jsonl_path: "$work/run/metrics.jsonl" tensorboard_dir: "$work/run/tb" eval_every_n_steps: 6 }
PBTXT

out=$("$llmft" train --config "$work/run.pbtxt" 2>&1) || fail "train exited $?: $out"
for expected in "step 4/12 | loss " "eval step 6: loss " "finished at step 12/12; checkpoint $work/run/checkpoints/step-12"; do
  case "$out" in *"$expected"*) ;; *) fail "train output lacks '$expected':
$out" ;; esac
done
[ "$(ls "$work/run/checkpoints")" = "step-10
step-12" ] || fail "expected checkpoints step-10 and step-12, found: $(ls "$work/run/checkpoints")"
[ "$(wc -l < "$work/run/metrics.jsonl")" -eq 5 ] || fail "metrics.jsonl: expected 5 records (steps 4, 8, 12; evals 6, 12)"
ls "$work/run/tb" | grep -q tfevents || fail "no TensorBoard event file"

"$llmft" export --config "$work/run.pbtxt" --merged "$work/merged" --adapter "$work/adapter" >/dev/null ||
  fail "export exited $?"
for file in merged/config.json merged/model.safetensors merged/tokenizer_config.json adapter/adapter_config.json \
            adapter/adapter_model.safetensors; do
  [ -f "$work/$file" ] || fail "export did not write $file"
done
"$llmft" export --config "$work/run.pbtxt" --checkpoint "$work/run/checkpoints/step-10" --merged "$work/sharded" \
  --max-shard-size 20KB --dtype bf16 >/dev/null || fail "sharded export exited $?"
[ -f "$work/sharded/model.safetensors.index.json" ] || fail "no index for a sharded export"
[ "$(ls "$work/sharded" | grep -c '^model-0000.-of-0000.\.safetensors$')" -gt 1 ] || fail "expected several shards"

# The merged model scores the validation data like base + LoRA from the checkpoint.
trained=$("$llmft" eval --config "$work/run.pbtxt" | grep '^loss') || fail "eval --config exited $?"
merged=$("$llmft" eval --model "$work/merged" --data "$work/data/valid.tfrecord" --seq-len 16 | grep '^loss') ||
  fail "eval --model exited $?"
echo "$trained" "$merged" | awk '{ d = $2 - $12; if (d < 0) d = -d; if (d > 1e-4 || $2 <= 0) exit 1 }' ||
  fail "eval of the checkpoint ($trained) and of the merged export ($merged) differ"
# Evaluation counts every token: the records (3..22 tokens) fit rows of 32 and
# longer, so the loss, tokens and records are the same at any of them,
# best-fit packed or one per row (--padded).
wide=$("$llmft" eval --model "$work/merged" --data "$work/data/valid.tfrecord" --seq-len 32 | grep '^loss') ||
  fail "eval --seq-len 32 exited $?"
for args in "--seq-len 512" "--seq-len 2048" "--seq-len 32 --padded"; do
  other=$("$llmft" eval --model "$work/merged" --data "$work/data/valid.tfrecord" $args | grep '^loss') ||
    fail "eval $args exited $?"
  echo "$wide" "$other" | awk '{ d = $2 - $12; if (d < 0) d = -d; if (d > 1e-5 * $2 || $6 != $16 || $8 != $18) exit 1 }' ||
    fail "eval $args ($other) differs from --seq-len 32 ($wide)"
done
case "$wide" in *" records 8 rows "*) ;; *) fail "eval line lacks the 8 records: $wide" ;; esac
long=$("$llmft" eval --model "$work/merged" --data "$work/data/valid.tfrecord" --seq-len 8 --long-documents drop) ||
  fail "eval --long-documents drop exited $?"
case "$long" in *"records are longer than seq_len 8"*": dropped"*) ;; *) fail "no long-document report: $long" ;; esac
case "$out" in *" tok/s | packing "*"%"*) ;; *) fail "the progress line lacks the packing efficiency: $out" ;; esac
inspect=$("$llmft" data inspect "$work/data/train-*-of-00002.tfrecord" --seq-len 16) || fail "data inspect --seq-len exited $?"
for expected in "48 records" "PACKED " "PACKED_CONTIGUOUS " "PADDED " "records cut across rows" "packing "; do
  case "$inspect" in *"$expected"*) ;; *) fail "data inspect --seq-len lacks '$expected': $inspect" ;; esac
done
# Records of 3..22 tokens in rows of 16: the contiguous layout cuts some.
echo "$inspect" | grep -q "PACKED_CONTIGUOUS .* [1-9][0-9]* records cut across rows" ||
  fail "data inspect counts no record cut by the contiguous layout: $inspect"
"$llmft" eval --model "$work/sharded" --data "$work/data/valid.tfrecord" --seq-len 16 >/dev/null ||
  fail "the sharded export does not load"

# expect_error NAME EXPECTED_SUBSTRING ARGS...: exit 2, exactly one stderr line containing the text.
expect_error() {
  name="$1"; expected="$2"; shift 2
  err=$("$llmft" "$@" 2>&1 >/dev/null)
  code=$?
  [ "$code" -eq 2 ] || fail "$name: exit $code, expected 2 ($err)"
  [ "$(printf '%s\n' "$err" | wc -l)" -eq 1 ] || fail "$name: expected one error line, got: $err"
  case "$err" in *"$expected"*) ;; *) fail "$name: message '$err' lacks '$expected'" ;; esac
}
expect_error "adapter of a full fine-tuning run" "full fine-tuning run (peft none), which has no adapter" \
  export --config "$work/run.pbtxt" --set peft.none= --adapter "$work/none"
expect_error "other PEFT config" "checkpoint was written for a different model/PEFT config" \
  export --config "$work/run.pbtxt" --set peft.lora.r=2 --merged "$work/none"
expect_error "bad shard size" "--max-shard-size 'lots' is not a size" \
  export --config "$work/run.pbtxt" --merged "$work/none" --max-shard-size lots
expect_error "no checkpoint" "no checkpoint (step-<N> directory) to export" \
  export --config "$work/run.pbtxt" --set checkpoint.dir="$work/empty" --merged "$work/none"
expect_error "GGUF without a tokenizer" "tokenizer.json: missing: the GGUF export needs the Hugging Face tokenizer.json" \
  export --config "$work/run.pbtxt" --gguf "$work/none.gguf"
expect_error "GGUF k-quant" "--type: 'q4_k' is not supported" \
  export --config "$work/run.pbtxt" --gguf "$work/none.gguf" --type q4_k
expect_error "GGUF adapter of a full fine-tuning run" "--gguf-adapter: $work/run.pbtxt is a full fine-tuning run" \
  export --config "$work/run.pbtxt" --set peft.none= --gguf-adapter "$work/none.gguf"
expect_error "GGUF adapter type" "--type: 'q4_0' is not supported for --gguf-adapter" \
  export --config "$work/run.pbtxt" --gguf-adapter "$work/none.gguf" --type q4_0
[ -z "$(ls "$work" | grep gguf)" ] || fail "a failed GGUF export left a file: $(ls "$work" | grep gguf)"
# The adapter GGUF needs no tokenizer (llama.cpp takes the vocabulary from the base GGUF).
out=$("$llmft" export --config "$work/run.pbtxt" --gguf-adapter "$work/adapter.gguf") ||
  fail "export --gguf-adapter exited $?: $out"
case "$out" in *"LoRA adapter GGUF (F32) of "*"--lora $work/adapter.gguf"*) ;; *) fail "export --gguf-adapter said: $out" ;; esac
[ "$(head -c 4 "$work/adapter.gguf")" = GGUF ] || fail "export --gguf-adapter wrote no GGUF file"
rm "$work/adapter.gguf"

# With a byte-level BPE tokenizer (64 plain tokens, no merges) the merged model
# exports to GGUF, and `convert --gguf` of that file scores like the merged export.
vocab=$(awk 'BEGIN { for (i = 0; i < 64; i++) printf "%s\"t%d\": %d", (i ? ", " : ""), i, i }')
cat > "$work/model/tokenizer.json" <<JSON
{"version": "1.0", "added_tokens": [], "normalizer": null,
 "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
 "post_processor": null, "decoder": {"type": "ByteLevel"},
 "model": {"type": "BPE", "byte_fallback": false, "vocab": {$vocab}, "merges": []}}
JSON
"$llmft" export --config "$work/run.pbtxt" --gguf "$work/model.gguf" --type f32 >/dev/null || fail "export --gguf exited $?"
"$llmft" convert --gguf "$work/model.gguf" --out "$work/from-gguf" >/dev/null || fail "convert --gguf exited $?"
from_gguf=$("$llmft" eval --model "$work/from-gguf" --data "$work/data/valid.tfrecord" --seq-len 16 | grep '^loss') ||
  fail "eval of the GGUF round trip exited $?"
# "loss L perplexity P tokens T ...": compare the two losses L.
echo "$(echo "$merged" | awk '{ print $2 }') $(echo "$from_gguf" | awk '{ print $2 }')" |
  awk '{ d = $1 - $2; if (d < 0) d = -d; if (d > 1e-5) exit 1 }' ||
  fail "the merged export ($merged) and its GGUF round trip ($from_gguf) score differently"
expect_error "bad model dir" "not a model directory" train --config "$work/run.pbtxt" --set model.hf_dir="$work/nothing"
expect_error "bad long_documents" "field 'data.long_documents' expects one of TRUNCATE, SPLIT, DROP" \
  train --config "$work/run.pbtxt" --set data.long_documents=chop
expect_error "bad --long-documents" "eval: --long-documents 'chop', expected truncate, split or drop" \
  eval --model "$work/merged" --data "$work/data/valid.tfrecord" --long-documents chop
expect_error "bad inspect --seq-len" "data inspect: --seq-len 0, expected in [1, 2^31)" \
  data inspect "$work/data/valid.tfrecord" --seq-len 0

# The commented examples train as written, with only paths and lengths overridden.
for example in lora_smollm2 full_finetune_small; do
  out=$("$llmft" train --config "$examples/$example.pbtxt" --set model.hf_dir="$work/model" \
    --set data.train_files="$work/data/train-*-of-00002.tfrecord" --set data.validation_files="$work/data/valid.tfrecord" \
    --set data.seq_len=16 --set data.batch_size=2 --set schedule.warmup_steps=1 --set schedule.total_steps=3 \
    --set checkpoint.dir="$work/$example" --set logging.every_n_steps=1 --set logging.eval_every_n_steps=3 \
    --set logging.jsonl_path="$work/$example.jsonl" --set logging.tensorboard_dir= 2>&1) ||
    fail "examples/$example.pbtxt exited $?: $out"
  case "$out" in *"eval step 3: loss "*"finished at step 3/3"*) ;; *) fail "examples/$example.pbtxt: $out" ;; esac
done

# Prefix tuning through the binary: trains the prefix only, exports its PEFT
# adapter, and --merged (which it cannot do) is one error line, exit 2, no output.
prefix_sets="--set peft.prefix_tuning.num_virtual_tokens=3 --set checkpoint.dir=$work/prefix --set logging.jsonl_path=
  --set logging.tensorboard_dir= --set logging.eval_every_n_steps=0 --set schedule.total_steps=4"
# shellcheck disable=SC2086  # $prefix_sets is a list of arguments
out=$("$llmft" train --config "$work/run.pbtxt" $prefix_sets 2>&1) || fail "prefix tuning train exited $?: $out"
case "$out" in *"trainable parameters: "*" peft prefix_tuning"*"finished at step 4/4"*) ;;
  *) fail "prefix tuning train output: $out" ;; esac
# shellcheck disable=SC2086
err=$("$llmft" export --config "$work/run.pbtxt" $prefix_sets --merged "$work/prefix-merged" 2>&1 >/dev/null)
code=$?
[ "$code" -eq 2 ] || fail "export --merged of prefix tuning: exit $code, expected 2: $err"
[ "$(printf '%s\n' "$err" | wc -l)" -eq 1 ] || fail "export --merged of prefix tuning: more than one line: $err"
case "$err" in *"trains peft.prefix_tuning, which cannot be merged"*"use --adapter OUT"*) ;;
  *) fail "export --merged of prefix tuning: $err" ;; esac
[ ! -e "$work/prefix-merged" ] || fail "a refused export left $work/prefix-merged"
# shellcheck disable=SC2086
"$llmft" export --config "$work/run.pbtxt" $prefix_sets --adapter "$work/prefix-adapter" >/dev/null ||
  fail "export --adapter of prefix tuning exited $?"
grep -q '"peft_type": "PREFIX_TUNING"' "$work/prefix-adapter/adapter_config.json" ||
  fail "prefix adapter config: $(cat "$work/prefix-adapter/adapter_config.json")"

# SIGTERM: the step in flight finishes, a checkpoint is written, exit 128 + 15.
"$llmft" train --config "$work/run.pbtxt" --set schedule.kind=constant --set schedule.total_steps=100000000 \
  --set checkpoint.dir="$work/long" --set checkpoint.every_n_steps=0 --set logging.every_n_steps=1 \
  --set logging.eval_every_n_steps=0 --set logging.jsonl_path="$work/long.jsonl" > /dev/null 2> "$work/long.err" &
pid=$!
tries=0
until [ -s "$work/long.jsonl" ]; do
  tries=$((tries + 1)); [ "$tries" -lt 200 ] || { kill -9 "$pid"; fail "training never logged a step"; }
  sleep 0.05
done
kill -TERM "$pid"
wait "$pid"
code=$?
[ "$code" -eq 143 ] || fail "SIGTERM: exit $code, expected 143: $(cat "$work/long.err")"
grep -q "stopped by signal 15 at step [0-9]*/100000000; checkpoint $work/long/step-[0-9]* is complete" "$work/long.err" ||
  fail "SIGTERM message: $(cat "$work/long.err")"
stopped=$(ls "$work/long" | sed -n 's/^step-//p')
[ -n "$stopped" ] || fail "no checkpoint after SIGTERM"
out=$("$llmft" train --config "$work/run.pbtxt" --set schedule.kind=constant --set schedule.total_steps=$((stopped + 2)) \
  --set checkpoint.dir="$work/long" --set checkpoint.resume=latest --set logging.eval_every_n_steps=0 \
  --set logging.jsonl_path= 2>&1) || fail "resume exited $?: $out"
case "$out" in *"resumed from $work/long/step-$stopped at step $stopped"*"finished at step $((stopped + 2))"*) ;;
  *) fail "resume output: $out" ;; esac
echo "PASS"
