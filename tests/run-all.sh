#!/usr/bin/env bash
# The whole test suite: unit tests of the normal and the sanitizer build,
# then the integration tests (real daemon, real oidc-provider, real
# chromium) against both builds. Ends with one "N passed, N failed" line.
set -uo pipefail
cd "$(dirname "$0")/.."
total_pass=0 total_fail=0

count() {   # adds up the last "N passed, M failed" in file $1
        local line
        line=$(grep -oE '[0-9]+ passed, [0-9]+ failed' "$1" | tail -n 1)
        if [ -z "$line" ]; then
                total_fail=$((total_fail + 1))
                return
        fi
        total_pass=$((total_pass + $(echo "$line" | awk '{print $1}')))
        total_fail=$((total_fail + $(echo "$line" | awk '{print $3}')))
}

log=$(mktemp)
trap 'rm -f "$log"' EXIT

for b in build build-asan; do
        bash tests/run-unit.sh "$b" | tee "$log"
        count "$log"
done

# Fuzzing: a short run of every libFuzzer target, plus its regression inputs.
make -s fuzz-smoke FUZZ_SECONDS="${FUZZ_SECONDS:-10}" 2>&1 | tee "$log"
count "$log"

# Every secret a test uses and every daemon log and events table are kept
# here for the leak scan after the whole suite (tests/lib/suite.js).
export TB_SUITE_DIR
TB_SUITE_DIR=$(mktemp -d)
chmod 0700 "$TB_SUITE_DIR"
trap 'rm -f "$log"; rm -rf "$TB_SUITE_DIR"' EXIT

if [ -d tests/integration ] && ls tests/integration/*.test.js >/dev/null 2>&1; then
        for b in build build-asan; do
                echo "== integration tests against $b"
                TOKENBROKER_BUILD="$PWD/$b" node --test --test-concurrency=1 tests/integration/ 2>&1 | tee "$log"
                p=$(sed -n 's/^# pass \([0-9]*\)$/\1/p' "$log" | tail -n 1)
                f=$(sed -n 's/^# fail \([0-9]*\)$/\1/p' "$log" | tail -n 1)
                total_pass=$((total_pass + ${p:-0}))
                total_fail=$((total_fail + ${f:-1}))
        done
fi

echo "== leak scan over the whole suite"
node tests/lib/suite.js "$TB_SUITE_DIR" 2>&1 | tee "$log"
count "$log"

echo "all tests: $total_pass passed, $total_fail failed"
[ "$total_fail" = 0 ]
