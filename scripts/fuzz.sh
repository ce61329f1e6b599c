#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ (decoders of client bytes: OTLP protobuf and JSON,
# Prometheus remote write, CRI and Docker log lines), each for a while, and fails if any crashes.
#
#   scripts/fuzz.sh                          # every target, 60 s each
#   scripts/fuzz.sh remote_write otlp_json   # just these
#   SECONDS_PER_TARGET=600 nice -n 19 scripts/fuzz.sh
#   SECONDS_PER_TARGET=1800 RUNS_PER_TARGET=10000000 scripts/fuzz.sh   # the hardening campaign:
#                                            # 10 million executions or 30 minutes, whichever first
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). CARGO_TARGET_DIR
# defaults to /var/tmp/wake-fuzz-target (the targets build with sanitizers: keep them apart
# from other builds). Each target's committed seeds (fuzz/seeds/<target>/) are copied into its
# working corpus (fuzz/corpus/<target>/, not committed) first; a crash leaves its input in
# fuzz/artifacts/<target>/ and the run's log in fuzz/artifacts/<target>.log. Reproduce one with
#   cargo +nightly fuzz run --fuzz-dir fuzz <target> fuzz/artifacts/<target>/crash-…
# and keep it as a regression input under fuzz/regressions/<target>/.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/wake-fuzz-target}"
seconds="${SECONDS_PER_TARGET:-60}"
# -1: no bound on executions, only on time (libFuzzer's -runs).
runs="${RUNS_PER_TARGET:--1}"

all_targets=$(cargo +nightly fuzz list --fuzz-dir fuzz)
if [ $# -gt 0 ]; then
    targets=("$@")
    for target in "${targets[@]}"; do
        grep -qx -- "$target" <<<"$all_targets" || { echo "fuzz.sh: no target $target (have: $(echo $all_targets))" >&2; exit 2; }
    done
else
    mapfile -t targets <<<"$all_targets"
fi

failed=()
summary=()
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
    if [ -d "fuzz/seeds/$target" ]; then
        cp -n "fuzz/seeds/$target"/* "fuzz/corpus/$target/" 2>/dev/null || true
    fi
    log="fuzz/artifacts/$target.log"
    if ! cargo +nightly fuzz build --fuzz-dir fuzz "$target"; then
        failed+=("$target")
        summary+=("$(printf '%-24s %12s executions  %s' "$target" "-" "BUILD FAILED")")
        continue
    fi
    echo "== $target: ${seconds}s, log in $log"
    status=0
    cargo +nightly fuzz run --fuzz-dir fuzz "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$seconds" -runs="$runs" -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1 || status=$?
    executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    elapsed=$(sed -n 's/.*Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n 1)
    if [ "$status" -eq 0 ]; then
        result="ok"
    else
        result="CRASHED (exit $status)"
        failed+=("$target")
        grep -E "^(thread '.*' panicked|==[0-9]+==ERROR|SUMMARY|artifact_prefix|Test unit written)" "$log" | head -n 8 >&2 || true
        grep -A3 "panicked at" "$log" | head -n 8 >&2 || true
    fi
    summary+=("$(printf '%-24s %12s executions %6s s  %s' "$target" "${executions:-?}" "${elapsed:-?}" "$result")")
    echo "${summary[-1]}"
done

echo
echo "== summary (${seconds}s per target)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz.sh: crashed: ${failed[*]} (inputs in fuzz/artifacts/<target>/)" >&2
    exit 1
fi
