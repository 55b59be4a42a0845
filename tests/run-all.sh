#!/usr/bin/env bash
# The whole test suite: unit tests of the normal and the sanitizer build,
# then the integration tests (real daemon, real oidc-provider, real
# chromium) against both builds. Ends with one "N passed, N failed" line.
#
# A step counts as failed when it says so, when its exit status is not 0
# (taken from PIPESTATUS, not from tee), when node reports a test as
# cancelled (past its timeout) or as a failed todo, or when a step prints
# no summary at all.
#   TB_BUILDS="build-x build-x-asan"   the two build folders (default: build build-asan)
#   TB_TESTS="tests/integration/a.test.js ..."   the integration files (default: all)
#   TB_SKIP_FUZZ=1                     skip the fuzz smoke run
#   TB_FILE_LIMIT=900                  seconds one integration file may take
#                                      before it is killed (a failure)
#   TB_DEADLINE=EPOCH                  stop starting files after this time
#                                      (.ci/run sets it inside CI's limit)
#
# Every integration file runs in its own `node --test` under timeout, so a
# file that hangs (a child that never exits, a hook that never returns)
# is killed and named instead of eating the whole run. The end of the
# output says how long each step and the slowest files took.
set -uo pipefail
cd "$(dirname "$0")/.."
total_pass=0 total_fail=0
read -r -a builds <<< "${TB_BUILDS:-build build-asan}"
FILE_LIMIT=${TB_FILE_LIMIT:-900}
DEADLINE=${TB_DEADLINE:-0}
suite_start=$(date +%s)
steps=()        # "SECONDS what" per step, for the summary
killed=()       # files killed by the limit or the deadline
not_run=0       # files not started because the deadline had passed
step_start=$suite_start
step_done() { local now; now=$(date +%s); steps+=("$((now - step_start)) $1"); step_start=$now; }

count() {   # adds up the last "N passed, M failed" in file $1; $2 is the step's exit status
        local line rc=${2:-0}
        line=$(grep -oE '[0-9]+ passed, [0-9]+ failed' "$1" | tail -n 1)
        if [ -z "$line" ]; then
                echo "!! no summary line: counted as a failure"
                total_fail=$((total_fail + 1))
                return
        fi
        local p f
        p=$(echo "$line" | awk '{print $1}')
        f=$(echo "$line" | awk '{print $3}')
        if [ "$rc" != 0 ] && [ "$f" = 0 ]; then
                echo "!! exit status $rc with 0 failures reported: counted as a failure"
                f=1
        fi
        total_pass=$((total_pass + p))
        total_fail=$((total_fail + f))
}

# node --test, TAP reporter, output in $log; adds pass and fail + cancelled
# + failed todos (+1 for a non-zero exit that no count explains).
node_tests() {
        timeout -k 20 "$FILE_LIMIT" node --test --test-reporter=tap --test-concurrency=1 "${force_exit[@]}" "$@" 2>&1 | tee "$log"
        local rc=${PIPESTATUS[0]}
        if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
                echo "!! killed after ${FILE_LIMIT} s: $*"
                killed+=("$*")
        fi
        local p f c todo
        p=$(sed -n 's/^# pass \([0-9]*\)$/\1/p' "$log" | tail -n 1)
        f=$(sed -n 's/^# fail \([0-9]*\)$/\1/p' "$log" | tail -n 1)
        c=$(sed -n 's/^# cancelled \([0-9]*\)$/\1/p' "$log" | tail -n 1)
        todo=$(grep -cE '^ *not ok [0-9]+ .*# TODO' "$log")
        if [ -z "$p" ] || [ -z "$f" ]; then
                echo "!! node printed no summary (exit status $rc): counted as a failure"
                total_fail=$((total_fail + 1))
                return
        fi
        local bad=$((f + ${c:-0} + todo))
        if [ "$rc" != 0 ] && [ "$bad" = 0 ]; then bad=1; fi
        echo "== node: $p passed, $f failed, ${c:-0} cancelled (timed out), $todo failed todo, exit status $rc"
        total_pass=$((total_pass + p))
        total_fail=$((total_fail + bad))
}

# The harness needs node >= 20.12 (TestContext.passed); node 21+ is fine.
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 12) ? 0 : 1)'; then
        echo "!! node $(node --version) is too old: the tests need node >= 20.12 (tests/package.json)"
        echo "all tests: 0 passed, 1 failed"
        exit 1
fi

# A file whose tests have all finished but that still holds a handle (a
# child process, a socket, a timer) makes node --test wait for ever: with
# --test-force-exit (node >= 20.14) the file's process exits once its
# tests and hooks are done. Its results count as they are.
force_exit=()
if node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 14) ? 0 : 1)'; then
        force_exit=(--test-force-exit)
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT

for b in "${builds[@]}"; do
        bash tests/run-unit.sh "$b" 2>&1 | tee "$log"
        count "$log" "${PIPESTATUS[0]}"
        step_done "unit tests ($b)"
done

# Fuzzing: a short run of every libFuzzer target, plus its regression inputs.
if [ "${TB_SKIP_FUZZ:-0}" != 1 ]; then
        make -s fuzz-smoke FUZZ_SECONDS="${FUZZ_SECONDS:-10}" 2>&1 | tee "$log"
        count "$log" "${PIPESTATUS[0]}"
        step_done "fuzz smoke (build and run)"
fi

# Every secret a test uses and every daemon log and events table are kept
# here for the leak scan after the whole suite (tests/lib/suite.js).
export TB_SUITE_DIR
TB_SUITE_DIR=$(mktemp -d)
chmod 0700 "$TB_SUITE_DIR"
trap 'rm -f "$log"; rm -rf "$TB_SUITE_DIR"' EXIT

# The harness's own self-tests (oidc-provider and its records, the leak scan).
echo "== test harness self-tests"
node_tests tests/lib/selftest-*.test.js
step_done "harness self-tests"

# Files, not a folder: `node --test DIR` means something else on node 21+.
if [ -n "${TB_TESTS:-}" ]; then
        read -r -a files <<< "$TB_TESTS"
else
        files=(tests/integration/*.test.js)
fi
if [ ! -e "${files[0]}" ]; then
        echo "!! no integration test files: counted as a failure"
        total_fail=$((total_fail + 1))
else
        times=$(mktemp)
        for b in "${builds[@]}"; do
                echo "== integration tests against $b"
                for f in "${files[@]}"; do
                        if [ "$DEADLINE" != 0 ] && [ "$(date +%s)" -ge "$DEADLINE" ]; then
                                echo "!! not started, the run's deadline has passed: $b $f"
                                not_run=$((not_run + 1))
                                continue
                        fi
                        limit=$FILE_LIMIT
                        if [ "$DEADLINE" != 0 ] && [ $((DEADLINE - $(date +%s))) -lt "$limit" ]; then
                                limit=$((DEADLINE - $(date +%s)))
                        fi
                        fstart=$(date +%s)
                        echo "== $b $f"
                        FILE_LIMIT=$limit TOKENBROKER_BUILD="$PWD/$b" node_tests "$f"
                        echo "$(( $(date +%s) - fstart )) $b $(basename "$f")" >> "$times"
                done
                step_done "integration tests ($b, ${#files[@]} files)"
        done
        total_fail=$((total_fail + not_run))
fi

echo "== leak scan over the whole suite"
node tests/lib/suite.js "$TB_SUITE_DIR" 2>&1 | tee "$log"
count "$log" "${PIPESTATUS[0]}"

step_done "leak scan"

echo "== time: $(( $(date +%s) - suite_start )) s in all"
for st in "${steps[@]}"; do printf '   %5s s  %s\n' "${st%% *}" "${st#* }"; done
if [ -n "${times:-}" ] && [ -s "$times" ]; then
        echo "   slowest files:"
        sort -rn "$times" | head -n 6 | while read -r sec b f; do printf '   %5s s  %s %s\n' "$sec" "$b" "$f"; done
        rm -f "$times"
fi
for k in "${killed[@]}"; do echo "!! killed (took longer than its limit): $k"; done
[ "$not_run" = 0 ] || echo "!! $not_run integration files not started: the run's deadline (TB_DEADLINE) had passed"
echo "all tests: $total_pass passed, $total_fail failed"
[ "$total_fail" = 0 ]
