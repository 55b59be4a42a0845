#!/usr/bin/env bash
# Runs the libFuzzer targets that `make fuzz-build` put in $FUZZ_OUT.
#
#   run.sh smoke   replay tests/fuzz/regressions/NAME/*, then fuzz for
#                  FUZZ_SECONDS on a fresh copy of tests/fuzz/corpus/NAME
#                  (in $FUZZ_OUT/smoke/NAME: the seeds are never written to)
#   run.sh long    the same, growing $FUZZ_OUT/corpus-NAME, which is then
#                  minimised (-merge=1) and kept for the next run
#
# Environment: FUZZ_OUT (build-fuzz), FUZZ_SECONDS (20), FUZZ_TARGETS
# (names, separated by spaces or commas), FUZZ_JOBS (targets at a time,
# default the number of CPUs). Logs: $FUZZ_OUT/logs/NAME.log; crash inputs:
# $FUZZ_OUT/artifacts/NAME/. Prints one line per target, then
# "fuzz: N passed, M failed"; exits non-zero if any target failed.
set -uo pipefail

mode=${1:-smoke}
cd "$(dirname "$0")/../.."
src=tests/fuzz
out=${FUZZ_OUT:-build-fuzz}
secs=${FUZZ_SECONDS:-20}
targets=$(printf '%s' "${FUZZ_TARGETS:-token-response jwt conf jsonptr template url callback-query api-route text-escape link http-forward url-template proxy-path redact}" | tr ',' ' ')
jobs=${FUZZ_JOBS:-}
[ -n "$jobs" ] || jobs=$(nproc 2>/dev/null || echo 1)

case $mode in
smoke | long) ;;
*)
        echo "usage: $0 smoke|long" >&2
        exit 2
        ;;
esac

mkdir -p "$out/logs" "$out/results"

# Options of one target: its dictionary, and a larger input for the
# configuration reader (its line limit is 8 KiB).
target_opts() {
        local t=$1
        [ -f "$src/$t.dict" ] && printf ' -dict=%s' "$src/$t.dict"
        [ "$t" = conf ] && printf ' -max_len=12000'
        return 0
}

# Runs one target; writes its summary line to $out/results/NAME.
run_target() {
        local t=$1 bin=$out/fuzz-$1 log=$out/logs/$1.log res=$out/results/$1
        local corpus opts rc nreg=0 runs line
        local -a regs=()

        if [ ! -x "$bin" ]; then
                echo "fuzz-$t: FAIL (no binary $bin; run make fuzz-build)" > "$res"
                return
        fi
        rm -rf "$out/artifacts/$t"
        mkdir -p "$out/artifacts/$t"
        opts="-rss_limit_mb=2048 -timeout=25 -artifact_prefix=$out/artifacts/$t/$(target_opts "$t")"
        : > "$log"

        # Crash inputs kept from earlier bugs: each must run clean.
        if [ -d "$src/regressions/$t" ]; then
                while IFS= read -r -d '' f; do regs+=("$f"); done \
                        < <(find "$src/regressions/$t" -type f ! -name '.*' -print0 | sort -z)
        fi
        nreg=${#regs[@]}
        if [ "$nreg" -gt 0 ]; then
                # shellcheck disable=SC2086
                "$bin" $opts "${regs[@]}" >> "$log" 2>&1
                rc=$?
                if [ $rc -ne 0 ]; then
                        line=$(grep -m1 -E 'ERROR: |SUMMARY: |runtime error|abort|fuzz-[a-z-]+: ' "$log")
                        echo "fuzz-$t: FAIL (a regression input crashes: ${line:-exit $rc}; see $log)" > "$res"
                        return
                fi
        fi

        if [ "$mode" = smoke ]; then
                corpus=$out/smoke/$t
                rm -rf "$corpus"
                mkdir -p "$corpus"
                cp -R "$src/corpus/$t/." "$corpus/" 2> /dev/null
                set -- "$corpus"
        else
                corpus=$out/corpus-$t
                mkdir -p "$corpus"
                # New inputs go to the first folder only; the seeds are read.
                set -- "$corpus" "$src/corpus/$t"
        fi
        # shellcheck disable=SC2086
        "$bin" $opts -max_total_time="$secs" -print_final_stats=1 "$@" >> "$log" 2>&1
        rc=$?
        if [ $rc -ne 0 ]; then
                line=$(grep -m1 -E 'ERROR: |runtime error|fuzz-[a-z-]+: |error text|url_is_acceptable|reference' "$log")
                art=$(find "$out/artifacts/$t" -type f | head -n 1)
                echo "fuzz-$t: FAIL (${line:-exit $rc}; input ${art:-none}; log $log)" > "$res"
                return
        fi

        if [ "$mode" = long ]; then
                # Keep only inputs that add coverage, seeds included.
                rm -rf "$corpus.merge"
                mkdir -p "$corpus.merge"
                # shellcheck disable=SC2086
                if "$bin" $opts -merge=1 "$corpus.merge" "$corpus" "$src/corpus/$t" >> "$log" 2>&1; then
                        rm -rf "$corpus"
                        mv "$corpus.merge" "$corpus"
                fi
        fi
        runs=$(sed -n 's/^Done \([0-9]*\) runs in .*/\1/p' "$log" | tail -n 1)
        cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1 | cut -d' ' -f2)
        echo "fuzz-$t: ok ($(printf '%s' "${runs:-?}") runs in ${secs}s, cov ${cov:-?}, corpus $(find "$corpus" -type f | wc -l), $nreg regression inputs)" > "$res"
}


for t in $targets; do
        rm -f "$out/results/$t"
        run_target "$t" &

        while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do
                wait -n
        done
done
wait

pass=0 fail=0
for t in $targets; do
        if [ -s "$out/results/$t" ]; then
                cat "$out/results/$t"
        else
                echo "fuzz-$t: FAIL (no result; see $out/logs/$t.log)"
        fi
        if grep -q '^fuzz-[^:]*: ok' "$out/results/$t" 2> /dev/null; then
                pass=$((pass + 1))
        else
                fail=$((fail + 1))
        fi
done
echo "fuzz: $pass passed, $fail failed"
[ "$fail" = 0 ]
