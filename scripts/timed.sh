#!/usr/bin/env bash
# scripts/timed.sh STEP COMMAND...: runs COMMAND and, when $ICECHUNK_OPERATOR_STEP_TIMES names a
# file, appends "STEP<TAB>seconds" to it. `make test` prints these lines in the time table at the
# end of the run (tests/tiers.py), so a CI log says what each build step cost.
set -uo pipefail
step=$1
shift
started=$EPOCHREALTIME
"$@"
status=$?
if [[ -n "${ICECHUNK_OPERATOR_STEP_TIMES:-}" ]]; then
    awk -v step="$step" -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN { printf "%s\t%.1f\n", step, b - a }' \
        >>"$ICECHUNK_OPERATOR_STEP_TIMES"
fi
exit "$status"
