#!/usr/bin/env bash
# The hang guard and a dying rank, through mpirun as users launch jobs.
# usage: hang_guard.sh MPIEXEC HANG_PROBE NP
set -uo pipefail
mpiexec=$1 probe=$2 np=$3
flags=(--oversubscribe --allow-run-as-root --bind-to none)
fail() { echo "hang_guard.sh: FAIL: $*"; echo "--- output:"; cat "$log"; exit 1; }
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# expect_abort MODE TIMEOUT MAX_SECONDS MESSAGE_REGEX: the probe's job must
# end non-zero (not by the 60 s outer timeout) within MAX_SECONDS, print a
# line matching MESSAGE_REGEX, and no rank may finish as if nothing happened.
expect_abort() {
  local mode=$1 timeout_seconds=$2 max_seconds=$3 message=$4 start status elapsed
  start=$(date +%s)
  timeout 60 "$mpiexec" "${flags[@]}" -np "$np" "$probe" "$mode" "$timeout_seconds" >"$log" 2>&1
  status=$?
  elapsed=$(( $(date +%s) - start ))
  [[ $status -ne 0 && $status -ne 124 ]] || fail "$mode: exit status $status (0: no guard; 124: hung for 60 s)"
  (( elapsed < max_seconds )) || fail "$mode: took ${elapsed} s"
  grep -qiE "$message" "$log" || fail "$mode: no line matching '$message'"
  grep -q "finished all steps" "$log" && fail "$mode: a rank ran past the failed collective"
  echo "$mode: exit $status after ${elapsed} s: $(grep -m1 -iE "$message" "$log")"
}

# 1. A rank skips a collective: the job ends within the 3 s timeout (plus
# start-up), naming the collective, the step, the rank and the host.
expect_abort skip 3 30 "did not complete within 3 s at step 7 on rank [0-9]+ of $np \(host [^)]+\)"

# 2. A rank dies: the others exit non-zero with a message (mpirun's or the guard's).
expect_abort die 10 40 "signal 9|killed|exited on signal|did not complete"
