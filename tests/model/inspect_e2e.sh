#!/bin/sh
# e2e: `llmft inspect` on the golden tiny checkpoint, and on a missing directory.
# usage: inspect_e2e.sh LLMFT_BINARY TESTDATA_MODEL_DIR
set -u
llmft="$1"
testdata="$2"
fail() { echo "FAIL: $*"; exit 1; }

out=$("$llmft" inspect "$testdata/tiny_llama" --seq-len 128) || fail "inspect tiny_llama exited $?"
# 74560 = embed 100*64 + lm_head 100*64 + 2 layers * (q 64*64 + k,v 2*32*64 + o 64*64 + 3*64*96 + 2*64) + norm 64
for expected in "architecture LlamaForCausalLM" "4 heads, 2 kv heads (GQA), head_dim 16" "(74560) in 21 tensors" \
                "F32               74560" "attention         24576" "mlp               36864" "lm_head            6400" \
                "seq 128 x batch 1" "LoRA r=8 all linear layers (14.85K trainable"; do
  case "$out" in *"$expected"*) ;; *) fail "inspect output lacks '$expected':
$out" ;; esac
done

err=$("$llmft" inspect "$testdata/does_not_exist" 2>&1 >/dev/null)
code=$?
[ "$code" -eq 2 ] || fail "missing dir: exit $code, expected 2"
[ "$(printf '%s\n' "$err" | wc -l)" -eq 1 ] || fail "missing dir: expected one error line, got: $err"
case "$err" in *"does_not_exist: not a model directory"*) ;; *) fail "missing dir message: $err" ;; esac

"$llmft" inspect "$testdata/tiny_llama" --batch-size 0 >/dev/null 2>&1
code=$?
[ "$code" -eq 2 ] || fail "bad --batch-size: exit $code, expected 2"
# --config: the run's memory per rank by category (74560 f32 weights frozen under LoRA: 291.2 KiB).
work=$(mktemp -d "${TMPDIR:-/tmp}/llmft-inspect.XXXXXX")
trap 'rm -rf "$work"' EXIT
cat > "$work/run.pbtxt" <<PBTXT
model { hf_dir: "$testdata/tiny_llama" }
peft { lora { r: 4 alpha: 8 target_modules: "all-linear" } }
data { train_files: "$work/train-*.tfrecord" seq_len: 32 batch_size: 2 }
schedule { total_steps: 10 }
memory { activation_checkpointing: FULL }
PBTXT
out=$("$llmft" inspect --config "$work/run.pbtxt") || fail "inspect --config exited $?"
for expected in "LoRA r=4, f32, batch 2 x seq 32, activation checkpointing full, dp 1 x tp 1" \
                "frozen_weights        291.2 KiB" "activations" "optimizer_state"; do
  case "$out" in *"$expected"*) ;; *) fail "inspect --config output lacks '$expected':
$out" ;; esac
done
# --threads: the packed GEMM's panels are per CPU thread, so bf16 runs'
# workspace grows with the rank's threads (as `llmft train --threads`) once
# the GEMMs are large enough to be split across them (the packed GEMM forced:
# AVX-512 CPUs default to widened copies, which are not per thread).
workspace_with() {  # workspace_with THREADS: inspect's workspace line for a bf16 run
  LLMFT_CPU_HALF_GEMM=packed "$llmft" inspect --config "$work/run.pbtxt" --set precision.compute_dtype=BFLOAT16 \
    --set data.batch_size=64 \
    --threads "$1" | grep workspace
}
one=$(workspace_with 1) || fail "inspect --threads 1 exited $?"
two=$(workspace_with 2) || fail "inspect --threads 2 exited $?"
[ "$one" != "$two" ] || fail "inspect --threads: the same workspace for 1 and 2 threads: $one"
"$llmft" inspect --config "$work/run.pbtxt" --threads 0 >/dev/null 2>&1
code=$?
[ "$code" -eq 2 ] || fail "inspect --threads 0: exit $code, expected 2"
err=$("$llmft" inspect --config "$work/missing.pbtxt" 2>&1 >/dev/null)
code=$?
[ "$code" -eq 2 ] || fail "missing config: exit $code, expected 2"
[ "$(printf '%s\n' "$err" | wc -l)" -eq 1 ] || fail "missing config: expected one error line, got: $err"
echo "PASS"
