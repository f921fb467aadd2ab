#!/usr/bin/env bash
# Runs every fuzz target of referral-proto for a while, one after another.
#
#   fuzz/run.sh [SECONDS_PER_TARGET]     (default 30)
#
# Needs the nightly toolchain (rustup) and cargo-fuzz, which it installs from
# crates.io if missing. Each target starts from its checked-in seeds in
# fuzz/corpus/<target>/, read only: new inputs go to a temporary working
# corpus that is thrown away. Crash inputs land in fuzz/artifacts/<target>/;
# full logs in fuzz/target/fuzz-logs/<target>.log. Prints executions and
# executions per second for each target; exits non-zero if any target
# crashed, hung or leaked.
set -euo pipefail

SECONDS_PER_TARGET="${1:-30}"
if ! [[ "$SECONDS_PER_TARGET" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [SECONDS_PER_TARGET]" >&2
    exit 2
fi
TARGETS=(envelope notice directory audit_entry key_file)

FUZZ_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$FUZZ_DIR"

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz/run.sh: the nightly toolchain is missing (rustup toolchain install nightly)" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz from crates.io"
    cargo install cargo-fuzz --locked
fi

LOG_DIR="$FUZZ_DIR/target/fuzz-logs"
mkdir -p "$LOG_DIR"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/referral-fuzz.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

started=$(date +%s)
failed=()
summary=()
for t in "${TARGETS[@]}"; do
    echo "== $t: building (nightly) and fuzzing for ${SECONDS_PER_TARGET}s"
    mkdir -p "$WORK/$t" "artifacts/$t"
    log="$LOG_DIR/$t.log"
    t0=$(date +%s)
    status=0
    # Working corpus first (libFuzzer writes new inputs there), seeds second.
    cargo +nightly fuzz run "$t" "$WORK/$t" "$FUZZ_DIR/corpus/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" \
        -rss_limit_mb=2048 \
        -timeout=30 \
        -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    t1=$(date +%s)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n1 | cut -d' ' -f2)
    if [ "$status" -ne 0 ]; then
        failed+=("$t")
        echo "!! $t FAILED (exit $status); last lines of $log:"
        tail -n 40 "$log" | sed 's/^/   /'
        ls -1 "artifacts/$t" 2>/dev/null | sed 's|^|   artifact: fuzz/artifacts/'"$t"'/|'
    fi
    line=$(printf '%-12s %12s execs %8s exec/s  cov %6s  %4ss wall  %s' \
        "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "$((t1 - t0))" \
        "$([ "$status" -eq 0 ] && echo ok || echo CRASH)")
    summary+=("$line")
    echo "$line"
done

echo
echo "== summary (${SECONDS_PER_TARGET}s per target, $(( $(date +%s) - started ))s in all)"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -ne 0 ]; then
    echo "crashed: ${failed[*]} (inputs in fuzz/artifacts/<target>/; reproduce with" \
        "'cd fuzz && cargo +nightly fuzz run <target> artifacts/<target>/<file>')" >&2
    exit 1
fi
