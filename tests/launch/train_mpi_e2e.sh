#!/usr/bin/env bash
# e2e under mpirun, as users launch jobs: `mpirun -np 2 llmft train` trains
# data-parallel (job tokens/s on the progress line, rank 0 alone writes
# metrics and checkpoints); a SIGTERM sent to rank 1 only stops both ranks at
# the same step with one complete checkpoint and exit 143; the resumed run
# repeats the uninterrupted run's per-step losses bit for bit (the JSONL
# losses, printed with 17 significant digits); evaluation split over the two
# ranks counts the same tokens and gives the loss of a one-process `llmft
# eval` of the same checkpoint; a config whose parallel.dp disagrees with the
# launch, and more ranks on a node than GPUs, are one error line before any
# work; `parallel.tp: 2` (tensor parallelism, dp 1) gives the one-process
# run's losses, and one process exports its checkpoint (full tensors); a
# SIGKILL of one rank ends the job within the collective timeout with every
# checkpoint complete, and the resumed job repeats the uninterrupted losses.
# usage: train_mpi_e2e.sh MPIEXEC LLMFT_BINARY MAKE_TINY_RUN_BINARY
set -u
mpiexec=$1 llmft=$2 make_tiny_run=$3
work=$(mktemp -d "${TMPDIR:-/tmp}/llmft-mpi-e2e.XXXXXX")
trap 'pkill -KILL -f "$work/" 2>/dev/null; rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
. "$(dirname "$0")/e2e_lib.sh"
launch=("$mpiexec" --oversubscribe --allow-run-as-root --bind-to none -x OMP_NUM_THREADS=1 -np 2)

"$make_tiny_run" "$work" || fail "fixture writer exited $?"
write_config() {  # NAME TOTAL_STEPS [EVAL_EVERY]
  cat > "$work/$1.pbtxt" <<PBTXT
model { hf_dir: "$work/model" }
peft { lora { r: 4 alpha: 8 dropout: 0.05 target_modules: "all-linear" } }
data {
  train_files: "$work/data/train-*-of-00002.tfrecord"
  validation_files: "$work/data/valid.tfrecord"
  seq_len: 16 batch_size: 2 grad_accumulation_steps: 2 shuffle_buffer: 8 batch_mode: PADDED
}
optimizer { lr: 1e-2 }
schedule { kind: CONSTANT total_steps: $2 }
checkpoint { dir: "$work/$1/checkpoints" keep_last: 2 }
logging { every_n_steps: 1 jsonl_path: "$work/$1/metrics.jsonl" eval_every_n_steps: ${3:-0} }
PBTXT
}
losses() { grep -o '"loss": *[-0-9.e+]*' "$1" | sed 's/.*: *//'; }
# The pid of rank 1 of run NAME once its metrics.jsonl has LINES lines (60 s at most).
rank1_of() {
  for _ in $(seq 600); do
    sleep 0.1
    [ -f "$work/$1/metrics.jsonl" ] && [ "$(wc -l <"$work/$1/metrics.jsonl")" -ge "$2" ] || continue
    for pid in $(pgrep -f "llmft train --config $work/$1.pbtxt"); do
      tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=1" && { echo "$pid"; return; }
    done
  done
}

# 1. A long run; SIGTERM to rank 1 alone once it has taken 5 steps.
write_config stopped 100000
"${launch[@]}" "$llmft" train --config "$work/stopped.pbtxt" --threads 1 >"$work/stopped.log" 2>&1 &
job=$!
rank1=$(rank1_of stopped 5)
[ -n "$rank1" ] || fail "no rank 1 process after 60 s: $(cat "$work/stopped.log")"
kill -TERM "$rank1"
wait "$job"
status=$?
[ "$status" -eq 143 ] || fail "mpirun exited $status after SIGTERM to rank 1 (expected 143): $(cat "$work/stopped.log")"
grep -q "stopped by signal 15 at step" "$work/stopped.log" || fail "no stop line: $(cat "$work/stopped.log")"
stopped_step=$(sed -n 's/.*stopped by signal 15 at step \([0-9]*\)\/.*/\1/p' "$work/stopped.log" | head -1)
[ "$(ls "$work/stopped/checkpoints")" = "step-$stopped_step" ] ||
  fail "expected exactly checkpoint step-$stopped_step, found: $(ls -a "$work/stopped/checkpoints")"
[ "$(grep -c '"step"' "$work/stopped/metrics.jsonl")" -eq "$stopped_step" ] ||
  fail "metrics.jsonl should hold steps 1..$stopped_step once each (rank 0 writes)"
grep -q "^step 1/100000 | loss .* tok/s | packing [0-9]*% | comm [0-9]*% hidden" "$work/stopped.log" ||
  fail "no progress line with the hidden-communication share: $(head "$work/stopped.log")"
grep -q '"allreduce_ms":[0-9.e+-]*,"exposed_allreduce_ms":' "$work/stopped/metrics.jsonl" ||
  fail "metrics.jsonl lacks the all-reduce times: $(head -2 "$work/stopped/metrics.jsonl")"

# 2. Resume to step k + 4; an uninterrupted run of k + 4 steps gives the same losses.
total=$((stopped_step + 4))
"${launch[@]}" "$llmft" train --config "$work/stopped.pbtxt" --threads 1 --set checkpoint.resume=latest \
  --set schedule.total_steps=$total >"$work/resumed.log" 2>&1 || fail "resume exited $?: $(cat "$work/resumed.log")"
grep -q "resumed from $work/stopped/checkpoints/step-$stopped_step at step $stopped_step/$total" "$work/resumed.log" ||
  fail "no resume line: $(cat "$work/resumed.log")"
write_config straight "$total" "$total"
"${launch[@]}" "$llmft" train --config "$work/straight.pbtxt" --threads 1 >"$work/straight.log" 2>&1 ||
  fail "uninterrupted run exited $?: $(cat "$work/straight.log")"
[ "$(losses "$work/stopped/metrics.jsonl")" = "$(losses "$work/straight/metrics.jsonl")" ] ||
  fail "resumed losses differ from the uninterrupted run's:
$(paste <(losses "$work/stopped/metrics.jsonl") <(losses "$work/straight/metrics.jsonl"))"
echo "SIGTERM to rank 1 stopped both ranks at step $stopped_step; resumed to $total with identical losses"

# The final evaluation, dealt over 2 ranks, against one process on the final checkpoint.
split=$(sed -n "s/^eval step $total: loss \([^ ]*\) | perplexity [^ ]* | \([0-9]*\) tokens | .*/\1 \2/p" "$work/straight.log")
[ -n "$split" ] || fail "no eval line at step $total: $(cat "$work/straight.log")"
single=$("$llmft" eval --config "$work/straight.pbtxt" | sed -n 's/^loss \([^ ]*\) perplexity [^ ]* tokens \([0-9]*\) .*/\1 \2/p')
[ -n "$single" ] || fail "llmft eval printed no loss line"
echo "$split $single" | awk '{ d = $1 - $3; if (d < 0) d = -d; if ($2 != $4 || d > 1e-5 * $3) exit 1 }' ||
  fail "eval over 2 ranks (loss tokens: $split) differs from one process ($single)"
echo "evaluation over 2 ranks: loss and tokens $split; one process: $single"

# 3. parallel.dp disagreeing with the launch: exit 2, one line per rank, no work.
out=$("${launch[@]}" "$llmft" train --config "$work/straight.pbtxt" --set parallel.dp=3 2>&1)
status=$?
[ "$status" -eq 2 ] || fail "dp mismatch: mpirun exited $status: $out"
echo "$out" | grep -q "field 'parallel.dp': 3, but 2 process(es) were launched (mpirun -np 2) with tp 1, which makes dp 2" ||
  fail "dp mismatch: no error line: $out"
echo "dp mismatch: $(echo "$out" | grep -m1 "parallel.dp")"

# 4. Rank i of a node takes GPU i: more ranks than GPUs is one error line
# (this machine has none; with CUDA, the count of visible GPUs).
out=$("${launch[@]}" "$llmft" train --config "$work/straight.pbtxt" --device cuda 2>&1)
status=$?
[ "$status" -eq 2 ] || fail "ranks > GPUs: mpirun exited $status: $out"
echo "$out" | grep -q "this node runs 2 ranks but has [01] visible GPU(s)" || fail "ranks > GPUs: no error line: $out"

# 5. Tensor parallelism: tp 2 over the 2 ranks (dp 1) trains the one-process
# model (LoRA dropout included: masks keyed by the whole input's offsets);
# its checkpoint holds full tensors, so one process evaluates and exports it.
write_config tp 6
"${launch[@]}" "$llmft" train --config "$work/tp.pbtxt" --threads 1 --set parallel.tp=2 >"$work/tp.log" 2>&1 ||
  fail "tp 2 run exited $?: $(cat "$work/tp.log")"
write_config alone 6
"$llmft" train --config "$work/alone.pbtxt" --threads 1 >"$work/alone.log" 2>&1 || fail "one-process run exited $?"
paste <(losses "$work/tp/metrics.jsonl") <(losses "$work/alone/metrics.jsonl") |
  awk 'NF != 2 { exit 1 } { d = $1 - $2; if (d < 0) d = -d; if (d > 1e-5 * $2) exit 1; n++ } END { if (n != 6) exit 1 }' ||
  fail "tp 2 losses differ from one process's:
$(paste <(losses "$work/tp/metrics.jsonl") <(losses "$work/alone/metrics.jsonl"))"
for what in adapter merged; do
  "$llmft" export --config "$work/tp.pbtxt" --"$what" "$work/tp-$what" >"$work/tp-export.log" 2>&1 ||
    fail "export --$what of the tp 2 checkpoint exited $?: $(cat "$work/tp-export.log")"
done
[ -f "$work/tp-adapter/adapter_model.safetensors" ] && [ -f "$work/tp-merged/config.json" ] ||
  fail "export of the tp 2 checkpoint wrote no adapter/merged model: $(ls "$work")"
echo "tp 2: the one-process losses over 6 steps; checkpoint exported by one process"

# 6. SIGKILL of one rank (issue 18): the job ends (mpirun reports the dead
# rank and stops the other, which would otherwise wait in a collective until
# parallel.timeout_s), no checkpoint is left half-written, and `mpirun -np 2
# ... resume=latest` finishes the run with the uninterrupted run's losses.
write_config rankkill 60
"${launch[@]}" "$llmft" train --config "$work/rankkill.pbtxt" --threads 1 --set parallel.timeout_s=20 \
  --set checkpoint.every_n_steps=1 >"$work/rankkill.log" 2>&1 &
job=$!
rank1=$(rank1_of rankkill 8)
[ -n "$rank1" ] || fail "rank kill: no rank 1 process: $(cat "$work/rankkill.log")"
killed_at=$(date +%s)
kill -KILL "$rank1"
wait "$job"
status=$?
elapsed=$(( $(date +%s) - killed_at ))
[ "$status" -ne 0 ] || fail "rank kill: mpirun exited 0 after rank 1 was killed"
[ "$elapsed" -le 25 ] || fail "rank kill: the job took $elapsed s to end (timeout_s 20)"
for checkpoint in "$work"/rankkill/checkpoints/step-*; do
  "$llmft" export --config "$work/rankkill.pbtxt" --checkpoint "$checkpoint" --adapter "$work/rankkill-probe" \
    >/dev/null 2>&1 || fail "rank kill: $checkpoint is not a complete checkpoint"
done
"${launch[@]}" "$llmft" train --config "$work/rankkill.pbtxt" --threads 1 --set checkpoint.every_n_steps=1 \
  --set checkpoint.resume=latest >>"$work/rankkill.log" 2>&1 || fail "rank kill: resume exited $?: $(tail -5 "$work/rankkill.log")"
write_config rankstraight 60
"${launch[@]}" "$llmft" train --config "$work/rankstraight.pbtxt" --threads 1 >"$work/rankstraight.log" 2>&1 ||
  fail "rank kill: the uninterrupted run exited $?"
step_losses "$work/rankstraight/metrics.jsonl" >"$work/rankstraight.losses"
step_losses "$work/rankkill/metrics.jsonl" >"$work/rankkill.losses"
same_step_losses "$work/rankstraight.losses" "$work/rankkill.losses" ||
  fail "rank kill: the resumed job's losses differ from the uninterrupted run's"
echo "SIGKILL of rank 1: the job ended in $elapsed s (exit $status), every checkpoint complete, resumed to the uninterrupted run's losses"

