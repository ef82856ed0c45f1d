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
echo "PASS"
