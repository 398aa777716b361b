#!/usr/bin/env bash
# Instruction budgets: each in-memory case's instructions per call, counted by callgrind in
# the benchmark binary's counting mode (inside the closures that make the calls, as in
# BENCHMARKS.md, "With the `metrics` feature"), against a budget about 10 % above the figure
# measured at the close of round two (BENCHMARKS.md, "Round two, final runs (J)").
# Instruction counts do not depend on the machine's load, so a case dearer than its budget
# is a change in the code (or the toolchain), not noise. A change that makes a case cheaper
# should lower its budget here.
#
#   bash benches/instructions.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "instructions.sh needs valgrind (apt-get install valgrind)" >&2; exit 1; }

failed=0

# Instructions per call of one case: the difference between N and 2N calls, over N.
per_call() {
    local binary=$1 case=$2 n collected counts=()
    for n in 20000 40000; do
        collected=$(CIRCUITPY_BENCH_CALLS=$n CIRCUITPY_BENCH_CASE=$case \
            valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*counting_modes*' \
            --callgrind-out-file=/dev/null "$binary" 2>&1 | sed -n 's/.*Collected : \([0-9]*\).*/\1/p')
        [ -n "$collected" ] || { echo "callgrind counted nothing for case $case of $binary" >&2; exit 1; }
        counts+=("$collected")
    done
    echo $(((counts[1] - counts[0]) / 20000))
}

# Builds the benchmark binary with `features` and checks each `case=budget`.
check() {
    local features=$1 label=${1:-default} binary pair case budget count
    shift
    binary=$(cargo bench -p circuitpy-benches ${features:+--features "$features"} --bench breaker --no-run 2>&1 |
        sed -n 's/.*Executable.*(\(.*\))/\1/p')
    [ -x "$binary" ] || { echo "no benchmark binary built for features: $label" >&2; exit 1; }
    for pair in "$@"; do
        case=${pair%=*}
        budget=${pair#*=}
        count=$(per_call "$binary" "$case")
        if [ "$count" -le "$budget" ]; then
            echo "ok    $label $case: $count instructions per call (budget $budget)"
        else
            echo "FAIL  $label $case: $count instructions per call, over its budget of $budget" >&2
            failed=1
        fi
    done
}

# Measured in J: bare 14; consecutive 34, rate 91, open 102, async 119 (bare async 15),
# static key 34, user style 55 (its bare 32).
check "" consecutive=38 rate=100 open=112 async=131 static_key=38 user_style=61
# With a Prometheus recorder installed: consecutive 61, rate 110, open 141, async 139,
# static key 61, user style 84.
check metrics consecutive=67 rate=121 open=155 async=153 static_key=67 user_style=92

exit "$failed"
