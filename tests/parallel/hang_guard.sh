#!/usr/bin/env bash
# The hang guard and a dying rank, through mpirun as users launch jobs.
# usage: hang_guard.sh MPIEXEC HANG_PROBE NP
set -uo pipefail
mpiexec=$1 probe=$2 np=$3
flags=(--oversubscribe --allow-run-as-root --bind-to none)
fail() { echo "hang_guard.sh: FAIL: $*"; echo "--- output:"; cat "$log"; exit 1; }
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# 1. A rank skips a collective: the job ends within the 3 s timeout (plus
# start-up), non-zero, naming the collective, the step, the rank and the host.
start=$(date +%s)
timeout 60 "$mpiexec" "${flags[@]}" -np "$np" "$probe" skip 3 >"$log" 2>&1
status=$?
elapsed=$(( $(date +%s) - start ))
[[ $status -ne 0 && $status -ne 124 ]] || fail "skip: exit status $status (0: no guard; 124: hung for 60 s)"
(( elapsed < 30 )) || fail "skip: took ${elapsed} s"
grep -qE "did not complete within 3 s at step 7 on rank [0-9]+ of $np \(host [^)]+\)" "$log" ||
  fail "skip: no hang-guard line naming the collective, step, rank and host"
grep -q "finished all steps" "$log" && fail "skip: a rank ran past the skipped collective"
echo "skip: exit $status after ${elapsed} s: $(grep -m1 'did not complete' "$log")"

# 2. A rank dies: the others exit non-zero with a message (mpirun's or the guard's).
start=$(date +%s)
timeout 60 "$mpiexec" "${flags[@]}" -np "$np" "$probe" die 10 >"$log" 2>&1
status=$?
elapsed=$(( $(date +%s) - start ))
[[ $status -ne 0 && $status -ne 124 ]] || fail "die: exit status $status"
(( elapsed < 40 )) || fail "die: took ${elapsed} s"
grep -qiE "signal 9|killed|exited on signal|did not complete" "$log" || fail "die: no message about the dead rank"
grep -q "finished all steps" "$log" && fail "die: a rank finished as if nothing happened"
echo "die: exit $status after ${elapsed} s: $(grep -m1 -iE 'signal 9|killed|did not complete' "$log")"
