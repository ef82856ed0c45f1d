#!/bin/sh
# e2e: `llmft train --check` prints the resolved config of each example (with
# --set applied and defaults written out) and turns each mistake into one
# error line and exit code 2.
# usage: train_check_e2e.sh LLMFT_BINARY SOURCE_DIR
set -u
llmft="$1"
examples="$2/examples"
fail() { echo "FAIL: $*"; exit 1; }

out=$("$llmft" train --config "$examples/lora_smollm2.pbtxt" --set optimizer.lr=5e-5 --set peft.lora.r=4 \
      --set schedule.kind=linear --check) || fail "train --check lora exited $?"
# Written in the file, overridden, and defaulted (labels_feature is not in the example).
for expected in "hf_dir: \"models/SmolLM2-135M-Instruct\"" "lr: 5e-05" "r: 4" "kind: LINEAR" \
                "labels_feature: \"labels\"" "total_steps: 300" "target_modules: \"o_proj\""; do
  case "$out" in *"$expected"*) ;; *) fail "train --check output lacks '$expected':
$out" ;; esac
done

"$llmft" train --config "$examples/full_finetune_small.pbtxt" --check >/dev/null || fail "full_finetune_small: exit $?"
for method in prompt_tuning p_tuning prefix_tuning bottleneck; do
  out=$("$llmft" train --config "$examples/${method}_smollm2.pbtxt" --check) || fail "${method}_smollm2: exit $?"
  case "$out" in *"$method {"*) ;; *) fail "${method}_smollm2: --check output lacks '$method {':
$out" ;; esac
done

# expect_error NAME EXPECTED_SUBSTRING ARGS...: exit 2, exactly one stderr line containing the text.
expect_error() {
  name="$1"; expected="$2"; shift 2
  err=$("$llmft" train "$@" 2>&1 >/dev/null)
  code=$?
  [ "$code" -eq 2 ] || fail "$name: exit $code, expected 2 ($err)"
  [ "$(printf '%s\n' "$err" | wc -l)" -eq 1 ] || fail "$name: expected one error line, got: $err"
  case "$err" in *"$expected"*) ;; *) fail "$name: message '$err' lacks '$expected'" ;; esac
}
expect_error "bad --set value" "--set optimizer.lr=abc: field 'optimizer.lr' expects a number" \
  --config "$examples/lora_smollm2.pbtxt" --set optimizer.lr=abc --check
expect_error "bad --set path" "unknown field 'optimiser' in llmft.TrainConfig (did you mean 'optimizer'?)" \
  --config "$examples/lora_smollm2.pbtxt" --set optimiser.lr=1 --check
expect_error "out of range" "field 'peft.lora.dropout': 1.5 out of range [0, 1)" \
  --config "$examples/lora_smollm2.pbtxt" --set peft.lora.dropout=1.5 --check
expect_error "missing file" "no_such_run.pbtxt: cannot open: No such file or directory" \
  --config "$examples/no_such_run.pbtxt" --check
expect_error "no model without --check" \
  "models/SmolLM2-135M-Instruct: not a model directory (expected config.json and model.safetensors)" \
  --config "$examples/lora_smollm2.pbtxt" --set checkpoint.dir=/nonexistent/checkpoints
expect_error "no --config" "train: --config is required" --check
echo "PASS"
