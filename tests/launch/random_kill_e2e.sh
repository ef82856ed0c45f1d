#!/usr/bin/env bash
# e2e (issue 18, random kills): a training run of the tiny model is killed
# with SIGKILL at a random moment (mid-step or mid-checkpoint: it checkpoints
# every step) 20 times, and resumed from `latest` each time. Checks after
# every kill that each step-N directory is complete (a one-process `llmft
# export --adapter` reads and validates it: state.json, file sizes,
# fingerprint) and that nothing else looks like a checkpoint; and at the end
# that the final checkpoint's weights and optimizer state are byte-identical
# to an uninterrupted run's and that every logged loss (a step may be logged
# twice: once before a kill, once after the resume) equals the uninterrupted
# run's loss of that step, bit for bit (17 significant digits). Then the
# same for `llmft export --merged` (below): 20 SIGKILLs mid-export, and the
# output directory is never left half-written.
# usage: random_kill_e2e.sh LLMFT_BINARY MAKE_TINY_RUN_BINARY
set -u
llmft=$1 make_tiny_run=$2
work=$(mktemp -d "${TMPDIR:-/tmp}/llmft-kill-e2e.XXXXXX")
trap 'pkill -KILL -f "$work/" 2>/dev/null; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
. "$(dirname "$0")/e2e_lib.sh"
"$make_tiny_run" "$work" || fail "fixture writer exited $?"
steps=600
write_config() {  # NAME
  cat > "$work/$1.pbtxt" <<PBTXT
model { hf_dir: "$work/model" }
peft { lora { r: 4 alpha: 8 dropout: 0.05 target_modules: "all-linear" } }
data { train_files: "$work/data/train-*-of-00002.tfrecord" seq_len: 16 batch_size: 2 shuffle_buffer: 8 }
optimizer { lr: 1e-2 }
schedule { kind: COSINE warmup_steps: 5 total_steps: $steps }
checkpoint { dir: "$work/$1/checkpoints" every_n_steps: 1 keep_last: 2 }
logging { every_n_steps: 1 jsonl_path: "$work/$1/metrics.jsonl" }
PBTXT
}
write_config straight
"$llmft" train --config "$work/straight.pbtxt" --threads 1 >"$work/straight.log" 2>&1 ||
  fail "uninterrupted run exited $?: $(tail -3 "$work/straight.log")"

write_config killed
seed=${LLMFT_KILL_SEED:-$$}
RANDOM=$seed
kills=0
for attempt in $(seq 20); do
  logged=$(cat "$work/killed/metrics.jsonl" 2>/dev/null | wc -l)
  "$llmft" train --config "$work/killed.pbtxt" --threads 1 --set checkpoint.resume=latest >>"$work/killed.log" 2>&1 &
  pid=$!
  # After 0..24 more logged steps (so 20 kills never reach the end of the run
  # whatever the machine's speed), then 0..39 ms later: start-up, steps and
  # checkpoint writes (one per step) all get hit.
  wanted=$((logged + RANDOM % 25))
  for _ in $(seq 6000); do
    [ "$(cat "$work/killed/metrics.jsonl" 2>/dev/null | wc -l)" -ge "$wanted" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.01
  done
  sleep "0.0$(printf '%02d' $((RANDOM % 40)))"
  if kill -KILL "$pid" 2>/dev/null; then kills=$((kills + 1)); fi
  wait "$pid" 2>/dev/null
  for checkpoint in "$work"/killed/checkpoints/step-*; do
    [ -e "$checkpoint" ] || continue
    "$llmft" export --config "$work/killed.pbtxt" --checkpoint "$checkpoint" --adapter "$work/probe" \
      >"$work/probe.log" 2>&1 || fail "after kill $attempt, $checkpoint is not a complete checkpoint: $(cat "$work/probe.log")"
  done
  if ls "$work/killed/checkpoints" 2>/dev/null | grep -v '^step-[0-9]*$' | grep -qv '^\.step-'; then
    fail "after kill $attempt, an unexpected entry: $(ls -a "$work/killed/checkpoints")"
  fi
done
[ "$kills" -eq 20 ] || fail "only $kills of 20 kills hit a running trainer: $(grep -v '^step' "$work/killed.log" | tail -3)"
"$llmft" train --config "$work/killed.pbtxt" --threads 1 --set checkpoint.resume=latest >>"$work/killed.log" 2>&1 ||
  fail "the final resume exited $?: $(tail -3 "$work/killed.log")"

last="step-$steps"
for file in trainable.safetensors optimizer.safetensors; do
  cmp -s "$work/straight/checkpoints/$last/$file" "$work/killed/checkpoints/$last/$file" ||
    fail "$last/$file differs from the uninterrupted run's after $kills kills (seed $seed)"
done
step_losses "$work/straight/metrics.jsonl" > "$work/straight.losses"
step_losses "$work/killed/metrics.jsonl" > "$work/killed.losses"
[ "$(wc -l <"$work/straight.losses")" -eq "$steps" ] || fail "the uninterrupted run logged $(wc -l <"$work/straight.losses") steps"
same_step_losses "$work/straight.losses" "$work/killed.losses" || fail "logged losses differ (seed $seed)"

# Mid-export: `llmft export --merged` of the final checkpoint, SIGKILLed at a
# random moment of its run 20 times, into a directory that does not exist
# yet (it must then be absent or complete) and, every other time, over a
# complete earlier export (every file must stay whole). Complete means the
# uninterrupted export's files, byte for byte.
export_to() {  # OUT
  "$llmft" export --config "$work/killed.pbtxt" --merged "$1" --dtype f32 >"$work/export.log" 2>&1
}
start=$(date +%s%N)
export_to "$work/export-straight" || fail "uninterrupted export exited $?: $(cat "$work/export.log")"
export_ms=$(( ($(date +%s%N) - start) / 1000000 + 1 ))
same_as_straight() {  # DIR: the uninterrupted export's files, each byte-identical
  [ "$(ls "$1")" = "$(ls "$work/export-straight")" ] || return 1
  for file in "$work"/export-straight/*; do cmp -s "$file" "$1/$(basename "$file")" || return 1; done
}
absent=0 complete=0 export_kills=0
for attempt in $(seq 20); do
  out="$work/export-killed-$attempt"
  if [ $((attempt % 2)) -eq 0 ]; then export_to "$out" || fail "export before kill $attempt exited $?"; fi
  # The command itself in the background, not export_to: a backgrounded
  # shell function runs in a subshell, and SIGKILL would hit that bash and
  # leave llmft running.
  "$llmft" export --config "$work/killed.pbtxt" --merged "$out" --dtype f32 >"$work/export.log" 2>&1 &
  pid=$!
  sleep "$(awk -v ms=$((RANDOM % (export_ms + export_ms / 5 + 1))) 'BEGIN { printf "%.3f", ms / 1000 }')"
  if kill -KILL "$pid" 2>/dev/null; then export_kills=$((export_kills + 1)); fi
  wait "$pid" 2>/dev/null
  if [ ! -e "$out" ]; then
    absent=$((absent + 1))
  elif same_as_straight "$out"; then
    complete=$((complete + 1))
  else
    fail "after export kill $attempt (seed $seed), $out is neither absent nor complete: $(ls -la "$out")"
  fi
done
[ "$export_kills" -ge 10 ] || fail "only $export_kills of 20 export kills hit a running export (one takes ${export_ms} ms)"
# A killed export leaves its staging directory (".NAME.tmp-PID"); the next
# export to the same place removes it, its process being gone.
leftovers=$(cd "$work" && ls -A | grep -c '^\.export-killed-.*\.tmp-[0-9]*$')
for attempt in $(seq 20); do
  out="$work/export-killed-$attempt"
  ls -A "$work" | grep -q "^\.export-killed-$attempt\.tmp-" || continue
  export_to "$out" || fail "export after kill $attempt exited $?: $(cat "$work/export.log")"
  same_as_straight "$out" || fail "the export after kill $attempt is not the uninterrupted one"
done
if ls -A "$work" | grep -q '\.tmp-'; then fail "staging left after the re-exports: $(ls -A "$work" | grep '\.tmp-')"; fi
echo "PASS: $kills SIGKILLs of training (seed $seed), every checkpoint complete after each, final weights and" \
     "optimizer state byte-identical, $(wc -l <"$work/killed.losses") logged losses all equal the uninterrupted" \
     "run's; $export_kills SIGKILLs of export --merged (${export_ms} ms each): $absent left no directory," \
     "$complete a complete one, none a partial one; $leftovers staging directories of killed exports removed by" \
     "the next export"
