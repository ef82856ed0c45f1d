#!/usr/bin/env bash
# Soak: trains the tiny random model the tests use (llmft_make_tiny_run: a
# 2-layer Llama, LoRA r 4 on every linear, seq 16, batch 2) for a given time
# with a checkpoint about every minute, SIGKILLs it at random moments and
# resumes it from `latest` each time, while an uninterrupted twin of the same
# run goes on beside it (one thread each). Reports:
#   - loss continuity: every step the killed run logged (some twice: before a
#     kill and after the resume) has the twin's loss, bit for bit;
#   - work lost per kill: the steps logged after the checkpoint it resumed from;
#   - resident memory and open file descriptors over time, of the twin (one
#     process for the whole run: flat after warm-up means no leak) and of each
#     life of the killed run;
#   - that every checkpoint left behind is complete (llmft export reads it).
#
# Usage: bench/soak.sh [--seconds N] [--build DIR] [--kill-min S] [--kill-max S] [--out DIR]
#   --seconds   how long to train (default 1800: 30 minutes)
#   --build     the build directory with launch/llmft and
#               tests/trainer/llmft_make_tiny_run (default build)
#   --kill-min, --kill-max   a kill comes after a uniform random wait in
#               [min, max] seconds of the current life (default 30..150: lives
#               both shorter and longer than the minute between checkpoints)
#   --out       keep the work directory (logs, samples.tsv) there (default: a temp dir, removed)
# Prints a report and exits non-zero when continuity fails, a checkpoint is
# incomplete, or the twin's memory grows by more than 10% (or its descriptors
# by any) between the end of warm-up (a fifth of the run) and the end.
set -uo pipefail
seconds=1800 build=build kill_min=30 kill_max=150 out=
while (($#)); do
  case $1 in
    --seconds) seconds=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --kill-min) kill_min=$2; shift 2 ;;
    --kill-max) kill_max=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "soak: unknown argument '$1' (see the top of bench/soak.sh)" >&2; exit 2 ;;
  esac
done
llmft=$build/launch/llmft
make_tiny_run=$build/tests/trainer/llmft_make_tiny_run
for binary in "$llmft" "$make_tiny_run"; do
  [ -x "$binary" ] || { echo "soak: $binary is not built (cmake --build $build)" >&2; exit 2; }
done
llmft=$(realpath "$llmft")
if [ -n "$out" ]; then
  work=$(realpath -m "$out"); rm -rf "$work"; mkdir -p "$work"
else
  work=$(mktemp -d "${TMPDIR:-/tmp}/llmft-soak.XXXXXX")
fi
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null; done
  [ -n "$out" ] || rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }
. "$(dirname "$0")/../tests/launch/e2e_lib.sh"

"$make_tiny_run" "$work" >/dev/null || fail "llmft_make_tiny_run exited $?"
total_steps=100000000  # never reached: the run is stopped by the clock
write_config() {  # NAME EVERY_N_STEPS
  cat > "$work/$1.pbtxt" <<PBTXT
model { hf_dir: "$work/model" }
peft { lora { r: 4 alpha: 8 dropout: 0.05 target_modules: "all-linear" } }
data { train_files: "$work/data/train-*-of-00002.tfrecord" seq_len: 16 batch_size: 2 shuffle_buffer: 8 }
optimizer { lr: 1e-3 }
schedule { kind: COSINE warmup_steps: 5 total_steps: $total_steps }
checkpoint { dir: "$work/$1/checkpoints" every_n_steps: $2 keep_last: 2 }
logging { every_n_steps: 1 jsonl_path: "$work/$1/metrics.jsonl" }
PBTXT
}
logged_steps() { cat "$work/$1/metrics.jsonl" 2>/dev/null | wc -l; }
now() { date +%s.%N; }

# Calibration: steps per minute of one thread on this machine now, so that
# "a checkpoint every minute" becomes a step count.
write_config calibrate 1000000000
"$llmft" train --config "$work/calibrate.pbtxt" --threads 1 >"$work/calibrate.log" 2>&1 &
pid=$!; pids+=("$pid")
sleep 20
kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
calibrated=$(logged_steps calibrate)
every=$((calibrated * 3))  # 20 s of steps x 3
[ "$every" -ge 1 ] || fail "calibration logged no step in 20 s: $(tail -3 "$work/calibrate.log")"
echo "soak: $calibrated steps in 20 s at calibration; a checkpoint every $every steps (~1 min); $seconds s;" \
     "kills every ${kill_min}-${kill_max} s; load average $(cut -d' ' -f1-3 /proc/loadavg)"

write_config twin "$every"
write_config killed "$every"
sample() {  # LABEL PID ELAPSED -> a samples.tsv line
  local rss fds
  rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$2/status" 2>/dev/null) || return
  fds=$(ls "/proc/$2/fd" 2>/dev/null | wc -l)
  [ -n "$rss" ] && printf '%s\t%.0f\t%s\t%s\t%s\n' "$1" "$3" "$rss" "$fds" "$(logged_steps "$1")" >> "$work/samples.tsv"
}
printf 'run\tseconds\trss_kib\tfds\tlogged\n' > "$work/samples.tsv"
start=$(now)
elapsed() { awk -v a="$start" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
"$llmft" train --config "$work/twin.pbtxt" --threads 1 >"$work/twin.log" 2>&1 &
twin=$!; pids+=("$twin")

RANDOM=${LLMFT_SOAK_SEED:-$$}
kills=0 lives=0
: > "$work/kills.tsv"
while awk -v e="$(elapsed)" -v s="$seconds" 'BEGIN { exit !(e < s) }'; do
  lives=$((lives + 1))
  resumed_from=$(ls "$work/killed/checkpoints" 2>/dev/null | sed -n 's/^step-//p' | sort -n | tail -1)
  "$llmft" train --config "$work/killed.pbtxt" --threads 1 --set checkpoint.resume=latest >>"$work/killed.log" 2>&1 &
  pid=$!; pids+=("$pid")
  life=$((kill_min + RANDOM % (kill_max - kill_min + 1)))
  born=$(now)
  while kill -0 "$pid" 2>/dev/null; do
    sleep 5
    sample twin "$twin" "$(elapsed)"
    sample killed "$pid" "$(elapsed)"
    awk -v a="$born" -v b="$(now)" -v l="$life" 'BEGIN { exit !(b - a >= l) }' && break
    awk -v e="$(elapsed)" -v s="$seconds" 'BEGIN { exit !(e >= s) }' && break
  done
  last_logged=$(step_losses "$work/killed/metrics.jsonl" | tail -1 | cut -d' ' -f1)
  if kill -KILL "$pid" 2>/dev/null; then
    kills=$((kills + 1))
    wait "$pid" 2>/dev/null
    kept=$(ls "$work/killed/checkpoints" 2>/dev/null | sed -n 's/^step-//p' | sort -n | tail -1)
    # Steps that the next life repeats: logged after the newest checkpoint.
    printf '%s\t%s\t%s\t%s\n' "$kills" "${resumed_from:-0}" "${last_logged:-0}" "${kept:-0}" >> "$work/kills.tsv"
    for checkpoint in "$work"/killed/checkpoints/step-*; do
      [ -e "$checkpoint" ] || continue
      "$llmft" export --config "$work/killed.pbtxt" --checkpoint "$checkpoint" --adapter "$work/probe" \
        >"$work/probe.log" 2>&1 || fail "after kill $kills, $checkpoint is incomplete: $(cat "$work/probe.log")"
    done
  else
    wait "$pid"; fail "the killed run's life $lives ended by itself ($?): $(tail -3 "$work/killed.log")"
  fi
done
kill -TERM "$twin"; wait "$twin" 2>/dev/null

# Continuity over every step both runs logged.
step_losses "$work/twin/metrics.jsonl" > "$work/twin.losses"
step_losses "$work/killed/metrics.jsonl" > "$work/killed.losses"
# A step logged twice by the killed run (before a kill and after the resume)
# counts once among the steps and each time among the lines compared.
compared=$(awk 'NR == FNR { want[$1] = $2; next }
                ($1 in want) { lines++; if (!($1 in seen)) { seen[$1] = 1; n++ } if (want[$1] != $2) bad++ }
                END { printf "%d %d %d", n, lines, bad }' "$work/twin.losses" "$work/killed.losses")
read -r compared_steps compared_lines differing <<<"$compared"
killed_last=$(tail -1 "$work/killed.losses" | cut -d' ' -f1)
twin_last=$(tail -1 "$work/twin.losses" | cut -d' ' -f1)
lost=$(awk -F'\t' '{ lost += $3 - $4 } END { print lost + 0 }' "$work/kills.tsv")

echo
echo "## soak: $(date -u +%F), $(nproc) cores, load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
echo "duration ${seconds} s; checkpoint every $every steps; $kills SIGKILLs over $lives lives of the killed run"
echo "steps: twin $twin_last, killed run $killed_last; losses compared on $compared_steps steps" \
     "($compared_lines logged lines of the killed run), ${differing:-0} differ"
echo "steps repeated after kills (logged after the checkpoint resumed from): $lost in all," \
     "at most $every per kill by construction"
echo
echo "| minute | twin RSS MiB | twin fds | twin step | killed-run RSS MiB | killed-run fds |"
echo "|---:|---:|---:|---:|---:|---:|"
awk -F'\t' 'NR > 1 { m = int($2 / 60); if ($1 == "twin") { rss[m] = $3; fd[m] = $4; st[m] = $5; seen[m] = 1 }
                     else { krss[m] = $3; kfd[m] = $4 } }
            END { for (m = 0; m in seen || m == 0; m++) if (m in seen)
                    printf "| %d | %.1f | %d | %d | %s | %s |\n", m, rss[m] / 1024, fd[m], st[m],
                           (m in krss) ? sprintf("%.1f", krss[m] / 1024) : "-", (m in kfd) ? kfd[m] : "-" }' \
  "$work/samples.tsv"
# Warm-up: the first fifth of the run. Growth from its end to the end.
verdict=$(awk -F'\t' -v w="$((seconds / 5))" '$1 == "twin" && $2 >= w { if (!n++) { r0 = $3; f0 = $4 } r1 = $3; f1 = $4 }
  END { printf "%.1f %.1f %+.1f%% %d %d", r0 / 1024, r1 / 1024, n ? 100 * (r1 - r0) / r0 : 0, f0, f1 }' "$work/samples.tsv")
read -r rss_start rss_end rss_growth fd_start fd_end <<<"$verdict"
echo
echo "twin after warm-up: RSS $rss_start -> $rss_end MiB ($rss_growth), open descriptors $fd_start -> $fd_end"
status=0
[ "${differing:-0}" -eq 0 ] && [ "${compared_steps:-0}" -gt 0 ] || { echo "FAIL: losses differ or none compared"; status=1; }
awk -v g="${rss_growth%\%}" 'BEGIN { exit !(g > 10) }' && { echo "FAIL: resident memory grew by $rss_growth"; status=1; }
[ "${fd_end:-0}" -le "${fd_start:-0}" ] || { echo "FAIL: open descriptors grew"; status=1; }
[ "$status" -eq 0 ] && echo "PASS"
exit "$status"
