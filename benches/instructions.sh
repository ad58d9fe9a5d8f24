#!/usr/bin/env bash
# Instructions per unit of each scenario of benches/instructions.rs, counted
# by callgrind (see that file's `//!` comment for what each one runs):
#
#     bash benches/instructions.sh [scenario ...]      # default: all of them
#
# Builds the bench (`cargo bench -p benches --bench instructions --no-run`, in
# $CARGO_TARGET_DIR if set), runs each scenario under
# `valgrind --tool=callgrind` with n = 2 000 and n = 22 000 units, and prints
#
#     Ir per unit = (Ir at 22 000 - Ir at 2 000) / 20 000
#
# so that what a run costs whatever its n cancels out. Rounded down, as the
# figures in BENCHMARKS.md are. All of them take about a minute once built,
# half of it the two sleep scenarios waiting for their 8 s sleeps. For one
# build, the counts repeat to the instruction, but for those two, whose timers
# depend on the clock (a few Ir per unit from run to run).
#
# When both ax_add and ax_tracker are counted, it also checks the ceiling
# BENCHMARKS.md holds the layer to: a one-task request through axum at most
# 4 100 Ir over one calling TaskTracker::spawn (exit status 1 if not).
#
# Environment:
#   INSTRUCTIONS_N1, INSTRUCTIONS_N2  the two sizes (default 2000 and 22000;
#                                     batch needs multiples of 1000)
#   INSTRUCTIONS_OUT                  a directory to keep the callgrind files
#                                     in (callgrind.<scenario>.<n>), for
#                                     callgrind_annotate; build with
#                                     CARGO_PROFILE_BENCH_DEBUG=true to see
#                                     source lines
set -euo pipefail

n1=${INSTRUCTIONS_N1:-2000}
n2=${INSTRUCTIONS_N2:-22000}

fail() {
    echo "instructions.sh: $*" >&2
    exit 1
}

command -v valgrind >/dev/null 2>&1 ||
    fail "valgrind is not installed (Debian/Ubuntu: apt-get install valgrind)"
[[ $n1 =~ ^[0-9]+$ && $n2 =~ ^[0-9]+$ ]] && ((n1 < n2)) ||
    fail "INSTRUCTIONS_N1 ($n1) and INSTRUCTIONS_N2 ($n2) must be numbers, N1 < N2"

cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "building the bench (cargo bench -p benches --bench instructions --no-run)..." >&2
# Diagnostics go to stderr as cargo renders them; stdout is JSON, one message
# a line, of which the bench's artifact names the binary.
bin=$(cargo bench -p benches --bench instructions --no-run --message-format=json-render-diagnostics |
    grep '"reason":"compiler-artifact"' |
    grep '"name":"instructions"' |
    grep -o '"executable":"[^"]*"' |
    tail -n 1 |
    cut -d '"' -f 4) ||
    fail "the build failed"
[[ -n $bin && -x $bin ]] || fail "cargo named no executable for the bench"

known=$("$bin" --list)
if (($# == 0)); then
    mapfile -t scenarios <<<"$known"
else
    scenarios=("$@")
    for scenario in "${scenarios[@]}"; do
        grep -qx -- "$scenario" <<<"$known" ||
            fail "no scenario named '$scenario'; there are: $(tr "\n" " " <<<"$known")"
    done
fi

if [[ -n ${INSTRUCTIONS_OUT:-} ]]; then
    out=$INSTRUCTIONS_OUT
    mkdir -p "$out"
else
    out=$(mktemp -d)
    trap 'rm -rf "$out"' EXIT
fi

# The total Ir of one run of `scenario` with `n` units.
count() {
    local scenario=$1 n=$2
    local file="$out/callgrind.$scenario.$n"
    if ! valgrind --tool=callgrind --callgrind-out-file="$file" \
        "$bin" "$scenario" "$n" >"$out/log" 2>&1; then
        cat "$out/log" >&2
        fail "$scenario with n = $n failed under valgrind (its output is above)"
    fi
    # The file's `summary:` line holds the total of its (only) event, Ir.
    awk '/^summary:/ { print $2; exit }' "$file"
}

echo "binary: $bin" >&2
echo "counting n = $n1 and n = $n2 for ${#scenarios[@]} scenario(s)..." >&2
printf '%-16s %12s\n' scenario 'Ir per unit'
declare -A per_unit
for scenario in "${scenarios[@]}"; do
    small=$(count "$scenario" "$n1")
    large=$(count "$scenario" "$n2")
    per_unit[$scenario]=$(((large - small) / (n2 - n1)))
    printf '%-16s %12d\n' "$scenario" "${per_unit[$scenario]}"
done

# The TaskTracker ceiling (BENCHMARKS.md, "Where the targets stand").
ceiling=4100
if [[ -n ${per_unit[ax_add]:-} && -n ${per_unit[ax_tracker]:-} ]]; then
    over=$((per_unit[ax_add] - per_unit[ax_tracker]))
    if ((over <= ceiling)); then
        echo "ax_add - ax_tracker = $over Ir per request: within the ceiling of $ceiling"
    else
        echo "ax_add - ax_tracker = $over Ir per request: OVER the ceiling of $ceiling"
        exit 1
    fi
fi
