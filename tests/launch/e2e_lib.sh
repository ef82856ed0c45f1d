# Shared by the e2e scripts that compare a resumed run's logged losses with an
# uninterrupted run's (source it: `. "$(dirname "$0")/e2e_lib.sh"`).

# "step loss" pairs of a metrics JSONL file (records without a loss skipped).
step_losses() { sed -n 's/.*"step": *\([0-9]*\).*"loss": *\([-0-9.e+]*\).*/\1 \2/p' "$1"; }

# True when every step of WANT (a step_losses list) is logged in GOT and every
# loss GOT logs (a step may be logged twice: before a kill and after the
# resume) equals WANT's for that step, as printed; prints the differences.
same_step_losses() {
  awk 'NR == FNR { want[$1] = $2; next }
       { seen[$1] = 1; if (!($1 in want) || want[$1] != $2) { print "step " $1 ": " $2 " vs " want[$1]; bad = 1 } }
       END { for (s in want) if (!(s in seen)) { print "step " s " never logged"; bad = 1 } exit bad }' "$1" "$2"
}
