#!/usr/bin/env bash
# e2e: a full disk, for real: each writer of llmft writes into a small tmpfs
# that a filler file has left with no room (and, a second time, with room for
# about half of what it writes), through the llmft binary:
#   checkpoint    llmft train resuming a run whose checkpoints are on it
#   TensorBoard   llmft train with logging.tensorboard_dir on it
#   export        llmft export --merged and --adapter into directories on it
#   data build    llmft data build with --output on it
# Each must end with exit 1 (an I/O failure, ErrorKind::kRuntime; bad input
# is 2) and one "llmft <command>: error: ..." line naming the file and the
# cause, and leave the files an earlier successful run wrote there byte for
# byte as they were, with no temporary file left behind. The control: the
# same commands with the room back succeed and do change those files.
#
# Needs root (mount -t tmpfs): CI and the dev containers run as root. Without
# the mount the test fails rather than skips: the unit tests inject ENOSPC for
# each writer (trainer/checkpoint_test, metrics_test, gguf_export_test,
# tokenizer/dataset_builder_test), this is the one that uses a real file system.
# usage: disk_full_e2e.sh LLMFT_BINARY MAKE_TINY_RUN_BINARY SOURCE_DIR
set -u
llmft=$1 make_tiny_run=$2 source_dir=$3
work=$(mktemp -d "${TMPDIR:-/tmp}/llmft-disk-full-e2e.XXXXXX")
disk=$work/disk
mkdir -p "$disk"
trap 'umount "$disk" 2>/dev/null; rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
mount -t tmpfs -o size=8m tmpfs "$disk" 2>"$work/mount.log" ||
  fail "cannot mount an 8 MiB tmpfs at $disk ($(cat "$work/mount.log")): this test needs root"

"$make_tiny_run" "$work" >/dev/null || fail "fixture writer exited $?"
# A real tokenizer.json (1.5 MB) for the export to carry: the largest file it
# writes after the weights.
cp "$source_dir/tests/testdata/tokenizer/smollm2/tokenizer.json" "$work/model/"
cat > "$work/run.pbtxt" <<PBTXT
model { hf_dir: "$work/model" }
peft { lora { r: 4 alpha: 8 target_modules: "all-linear" } }
data { train_files: "$work/data/train-*-of-00002.tfrecord" seq_len: 16 batch_size: 2 shuffle_buffer: 8 }
optimizer { lr: 1e-2 }
schedule { kind: COSINE warmup_steps: 2 total_steps: 4 }
checkpoint { dir: "$disk/checkpoints" every_n_steps: 2 keep_last: 2 }
logging { every_n_steps: 1 jsonl_path: "$work/metrics.jsonl" }
PBTXT

# Leaves FREE bytes of the tmpfs free (rounded down to its pages).
fill() {
  rm -f "$disk/filler"
  local available
  available=$(df --output=avail -B1 "$disk" | tail -1)
  fallocate -l $((available - $1)) "$disk/filler" || fail "fallocate on the tmpfs failed"
}
unfill() { rm -f "$disk/filler"; }
snapshot() { (cd "$disk" && find . -path ./filler -prune -o -type f -print0 | sort -z | xargs -0 -r sha256sum); }
# expect_disk_full NAME COMMAND...: exit 1, one error line naming the cause,
# everything on the tmpfs but the filler as it was. With NEW_FILES=REGEX, new
# files whose path matches it may stay (what a run logged before the disk
# filled), as long as every earlier file is as it was.
expect_disk_full() {
  local name=$1; shift
  local before status errors after
  before=$(snapshot)
  "$@" >"$work/$name.out" 2>"$work/$name.err"
  status=$?
  [ "$status" -eq 1 ] || fail "$name: exit $status, expected 1: $(tail -3 "$work/$name.err")"
  errors=$(grep -c 'error' "$work/$name.err")
  [ "$errors" -eq 1 ] || fail "$name: expected one error line, found $errors: $(cat "$work/$name.err")"
  grep -q '^llmft [a-z ]*: error: .*No space left on device' "$work/$name.err" ||
    fail "$name: the error line does not name the full disk: $(cat "$work/$name.err")"
  after=$(snapshot)
  local missing extra=""
  missing=$(comm -23 <(echo "$before" | sort) <(echo "$after" | sort))
  extra=$(comm -13 <(echo "$before" | sort) <(echo "$after" | sort))
  if [ -n "${NEW_FILES:-}" ]; then extra=$(echo "$extra" | grep -Ev "  ${NEW_FILES}\$"); fi
  [ -z "$missing$extra" ] || fail "$name: files already on the disk changed or new ones stayed:
gone or changed: $missing
new: $extra"
  echo "ok: $name: $(grep error "$work/$name.err")"
}

# --- Checkpoints: a run of 4 steps (step-2, step-4), then a resume to 8
# steps that cannot write step-6.
"$llmft" train --config "$work/run.pbtxt" --threads 1 >"$work/train.log" 2>&1 || fail "first run exited $?: $(tail -3 "$work/train.log")"
[ "$(ls "$disk/checkpoints")" = "step-2
step-4" ] || fail "expected step-2 and step-4, found $(ls "$disk/checkpoints")"
checkpoint_bytes=$(du -sb "$disk/checkpoints/step-4" | cut -f1)
for free in 0 $((checkpoint_bytes / 2)); do
  fill "$free"
  expect_disk_full "checkpoint-free-$free" "$llmft" train --config "$work/run.pbtxt" --threads 1 \
    --set checkpoint.resume=latest --set schedule.total_steps=8
done
unfill
# Control: with room, the resume writes step-6 and step-8 and prunes the others.
"$llmft" train --config "$work/run.pbtxt" --threads 1 --set checkpoint.resume=latest --set schedule.total_steps=8 \
  >"$work/resume.log" 2>&1 || fail "resume with room exited $?: $(tail -3 "$work/resume.log")"
[ "$(ls "$disk/checkpoints")" = "step-6
step-8" ] || fail "control: expected step-6 and step-8, found $(ls "$disk/checkpoints")"

# --- TensorBoard: a run logging events onto the disk, then one that cannot.
tensorboard_train() {
  "$llmft" train --config "$work/run.pbtxt" --threads 1 --set checkpoint.dir="$work/tb-checkpoints" \
    --set logging.tensorboard_dir="$disk/tb" --set logging.jsonl_path="$work/tb-metrics.jsonl"
}
tensorboard_train >"$work/tb.log" 2>&1 || fail "TensorBoard run exited $?: $(tail -3 "$work/tb.log")"
ls "$disk/tb" | grep -q tfevents || fail "no event file in $disk/tb"
# No room: no event file is left (one without its version record is not one).
fill 0
rm -rf "$work/tb-checkpoints"
expect_disk_full tensorboard-free-0 tensorboard_train
# Room for a few events: the new file keeps them, the earlier one is untouched.
fill 2048
rm -rf "$work/tb-checkpoints"
NEW_FILES='\./tb/events\.out\.tfevents\..*' expect_disk_full tensorboard-free-2048 tensorboard_train
unfill

# --- Export: merged model and adapter, then again onto a full disk.
"$llmft" export --config "$work/run.pbtxt" --merged "$disk/merged" --adapter "$disk/adapter" >"$work/export.log" 2>&1 ||
  fail "export exited $?: $(cat "$work/export.log")"
adapter_bytes=$(du -sb "$disk/adapter" | cut -f1)
weights_bytes=$(stat -c %s "$disk/merged/model.safetensors")
tokenizer_bytes=$(stat -c %s "$disk/merged/tokenizer.json")
# No room; room for half the weights; room for the weights and config but half
# of tokenizer.json (the weights are replaced, tokenizer.json must stay whole).
for free in 0 $((weights_bytes / 2)) $((weights_bytes + 8192 + tokenizer_bytes / 2)); do
  fill "$free"
  # From the older checkpoint: different weights, so a write that got through would show.
  expect_disk_full "export-merged-free-$free" "$llmft" export --config "$work/run.pbtxt" \
    --checkpoint "$disk/checkpoints/step-6" --merged "$disk/merged"
done
for free in 0 $((adapter_bytes / 2)); do
  fill "$free"
  expect_disk_full "export-adapter-free-$free" "$llmft" export --config "$work/run.pbtxt" \
    --checkpoint "$disk/checkpoints/step-6" --adapter "$disk/adapter"
done
unfill
before=$(snapshot)
"$llmft" export --config "$work/run.pbtxt" --checkpoint "$disk/checkpoints/step-6" --merged "$disk/merged" \
  >"$work/export2.log" 2>&1 || fail "control export exited $?: $(cat "$work/export2.log")"
[ "$(snapshot)" != "$before" ] || fail "control: the export with room changed nothing"

# --- data build: shards of 40 records, then a build of 400 that cannot be written.
for i in $(seq 40); do echo "{\"text\": \"first build, record $i\"}"; done > "$work/small.jsonl"
for i in $(seq 400); do echo "{\"text\": \"second build, a somewhat longer record number $i\"}"; done > "$work/large.jsonl"
build() {  # INPUT
  "$llmft" data build --input "$1" --tokenizer "$source_dir/tests/testdata/tokenizer/smollm2" \
    --output "$disk/data/train" --shards 2 --val-fraction 0.1
}
build "$work/small.jsonl" >"$work/build.log" 2>&1 || fail "data build exited $?: $(cat "$work/build.log")"
data_bytes=$(du -sb "$disk/data" | cut -f1)
for free in 0 $data_bytes; do
  fill "$free"
  expect_disk_full "data-build-free-$free" build "$work/large.jsonl"
done
unfill
before=$(snapshot)
build "$work/large.jsonl" >"$work/build2.log" 2>&1 || fail "control data build exited $?: $(cat "$work/build2.log")"
[ "$(snapshot)" != "$before" ] || fail "control: the data build with room changed nothing"
echo "PASS: checkpoint, TensorBoard, export (merged, adapter) and data build on a full tmpfs: exit 1, one error" \
     "line each, earlier files byte-identical; with room, each succeeds"
