#!/usr/bin/env bash
# make test: lint and types, then every tier of pytest, while the builds the later tiers need run
# in the background. Lint and the unit tier need no build, the integration tier the storage
# servers and (at its end) the image, so on a cold machine the control plane and the node compile
# beside them instead of before them: the storage servers first, then the control plane (the
# longest, and it needs no Python), then the rest in the order the tiers reach them. Each build
# script holds a lock while it builds; a test that needs a build waits for it outside its own
# timeout (tests/builds.py), and the time table at the end names each step, each wait and each
# tier (tests/tiers.py).
#
# Usage: scripts/test.sh [pytest arguments]     (the Makefile's `test` target)
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p build
builds_log=build/background-builds.log
export ICECHUNK_OPERATOR_RUN_STARTED=$EPOCHREALTIME

background_builds() {
    local failed=0
    renice -n 19 -p "$BASHPID" >/dev/null  # every build inherits it
    ionice -c 3 -p "$BASHPID" 2>/dev/null || true
    step() {  # name script [arguments]: one build, timed; the others go on if it fails
        scripts/timed.sh "build beside the tests: $1" "${@:2}" >/dev/null || { echo "FAILED: $1"; failed=1; }
    }
    step Azurite scripts/install-azurite.sh
    step toxiproxy scripts/build-go-tool.sh toxiproxy
    step fake-gcs-server scripts/build-go-tool.sh fake-gcs-server
    step "control plane" scripts/build-control-plane.sh
    scripts/setup.sh  # the image and checkov use the project's interpreter (waits on setup's lock)
    step image scripts/build-image.sh  # tests/integration/test_local_image.py reads it
    step versitygw scripts/build-go-tool.sh versitygw
    step "helm and checkov" scripts/build-chart-tools.sh
    step node scripts/build-node.sh
    return "$failed"
}

# At the lowest CPU and I/O priority: the builds take what the tests leave idle. At equal
# priority the compilers took both cores and the unit and integration tiers ran three times
# slower (a cold run of 60 min); a test that needs a build waits for it, and then nothing else
# wants the cores.
set -m  # the builds get a process group of their own, so an interrupted run stops all of them
background_builds >"$builds_log" 2>&1 &
builds=$!
set +m
trap 'kill -- "-$builds" 2>/dev/null' EXIT
echo "test: builds run beside lint and the first tiers (log: $builds_log)"

status=0
make --no-print-directory lint || status=$?
if [[ $status -eq 0 ]]; then
    .venv/bin/python -m pytest -q --durations=25 "$@" || status=$?
fi
if [[ $status -eq 0 ]] && ! wait "$builds"; then
    echo "test: a background build failed ($builds_log):"
    tail -n 40 "$builds_log"
    status=1
fi
exit "$status"
