#!/usr/bin/env bash
# Runs every fuzz target under libFuzzer for FUZZ_SECONDS each (default 30)
# and prints, per target, the inputs executed, executions per second and
# crashes found. A crash (a panic, a hang past FUZZ_TIMEOUT seconds, or
# memory past 2 GiB) stops its target; its input is saved under
# fuzz/regressions/<target>/ where the replay test (`cargo test -p
# remedy-fuzz`) runs it from then on. Exits non-zero when any target crashed.
#
# FUZZ_TARGETS picks targets (space-separated names; default all).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
seconds=${FUZZ_SECONDS:-30}
timeout=${FUZZ_TIMEOUT:-10}
targets=${FUZZ_TARGETS:-"cri alertmanager runbook template grpc"}
cargo=${CARGO:-cargo}

if ! "$cargo" fuzz --version >/dev/null 2>&1; then
    echo "fuzz: cargo-fuzz is required: cargo install cargo-fuzz --locked" >&2
    exit 1
fi
# `-s none`: coverage instrumentation without a sanitizer, which stable
# Rust allows; a safe-Rust panic is what these targets look for.
"$cargo" fuzz build -s none --features libfuzzer
triple=$(rustc -vV | sed -n 's/^host: //p')
bin_dir=$root/target/$triple/release
work=$root/target/fuzz
mkdir -p "$work/logs"

# The longest input each target is given: a runbook or a payload of a few
# pages reaches every branch; longer ones only slow the search down.
max_len() {
    case $1 in
        runbook | alertmanager) echo 16384 ;;
        *) echo 4096 ;;
    esac
}

stat_of() { sed -n "s/^stat::$1: *//p" "$2" | tail -n 1; }

total_crashes=0
rows=()
for target in $targets; do
    regressions=fuzz/regressions/$target
    grown=$work/corpus/$target
    log=$work/logs/$target.log
    mkdir -p "$regressions" "$grown"
    before=$(find "$regressions" -type f ! -name '.*' | sort)
    dict=()
    [[ -f fuzz/dicts/$target.dict ]] && dict=(-dict="fuzz/dicts/$target.dict")
    echo "fuzz: $target for ${seconds}s (log: ${log#"$root"/})" >&2
    # New inputs that reach new code go to the first directory (under
    # target/, not committed); the committed seeds are only read.
    status=0
    "$bin_dir/$target" "${dict[@]}" \
        -artifact_prefix="$regressions/" -max_total_time="$seconds" -timeout="$timeout" \
        -rss_limit_mb=2048 -max_len="$(max_len "$target")" -print_final_stats=1 \
        "$grown" "fuzz/corpus/$target" >"$log" 2>&1 || status=$?
    crashes=0
    # libFuzzer names a crash after its SHA-1; keep the first 12 digits.
    while IFS= read -r file; do
        [[ -z $file ]] && continue
        if ! grep -qxF "$file" <<<"$before"; then
            base=$(basename "$file")
            short=$(sed -E 's/^([a-z-]+-)?([0-9a-f]{12})[0-9a-f]*$/\1\2/' <<<"$base")
            [[ $short != "$base" ]] && mv "$file" "$regressions/$short" && file=$regressions/$short
            echo "fuzz: $target crashed on $file" >&2
            crashes=$((crashes + 1))
        fi
    done < <(find "$regressions" -type f ! -name '.*' | sort)
    if ((status != 0 && crashes == 0)); then
        echo "fuzz: $target exited with status $status and saved no input; see $log" >&2
        crashes=1
    fi
    ((crashes > 0)) && grep -m1 -A3 -E "panicked at|ERROR: libFuzzer" "$log" >&2 || true
    execs=$(stat_of number_of_executed_units "$log")
    rate=$(stat_of average_exec_per_sec "$log")
    added=$(stat_of new_units_added "$log")
    rows+=("$(printf '| %-12s | %12s | %10s | %10s | %7s |' "$target" "${execs:-?}" "${rate:-?}" "${added:-?}" "$crashes")")
    total_crashes=$((total_crashes + crashes))
done

printf '\n| %-12s | %12s | %10s | %10s | %7s |\n' target executions "exec/s" "new units" crashes
printf '|%s|%s|%s|%s|%s|\n' -------------- -------------: -----------: -----------: --------:
printf '%s\n' "${rows[@]}"
if ((total_crashes > 0)); then
    echo "fuzz: $total_crashes crash(es); inputs are under fuzz/regressions/, replayed by cargo test -p remedy-fuzz" >&2
    exit 1
fi
