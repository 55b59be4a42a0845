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
#   TB_PG_MATRIX="tests/integration/a.test.js ..."   the store matrix: these
#                                      files again with every daemon on
#                                      PostgreSQL (TB_STORE=postgresql), on
#                                      the first build only (default: the
#                                      list in tests/pg-matrix.txt; "none"
#                                      skips the phase)
#   TB_PG_ONLY=1                       the store matrix alone, on every build
#                                      (make check-pg): no unit tests, fuzzing
#                                      nor SQLite integration files
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
PG_ONLY=${TB_PG_ONLY:-0}
if [ -n "${TB_PG_MATRIX:-}" ]; then
        read -r -a pg_files <<< "$TB_PG_MATRIX"
else
        # a file a line; one marked check-pg-only runs in make check-pg alone
        read -r -a pg_files <<< "$(awk -v all="$PG_ONLY" '/^[^#]/ && NF && (all == 1 || $2 != "check-pg-only") { printf "%s ", $1 }' tests/pg-matrix.txt 2>/dev/null)"
fi
[ "${pg_files[0]:-}" = none ] && pg_files=()
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
        [ "$PG_ONLY" = 1 ] && break
        bash tests/run-unit.sh "$b" 2>&1 | tee "$log"
        count "$log" "${PIPESTATUS[0]}"
        step_done "unit tests ($b)"
done

# Fuzzing: a short run of every libFuzzer target, plus its regression inputs.
if [ "${TB_SKIP_FUZZ:-0}" != 1 ] && [ "$PG_ONLY" != 1 ]; then
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
if [ "$PG_ONLY" != 1 ]; then
        echo "== test harness self-tests"
        node_tests tests/lib/selftest-*.test.js
        step_done "harness self-tests"
fi

# One integration file against one build ($1 build, $2 file, $3 store):
# bounded by FILE_LIMIT and the deadline, its time in $times.
run_file() {
        local b=$1 f=$2 store=$3 limit fstart
        if [ "$DEADLINE" != 0 ] && [ "$(date +%s)" -ge "$DEADLINE" ]; then
                echo "!! not started, the run's deadline has passed: $b $f$([ "$store" = sqlite ] || echo " on $store")"
                not_run=$((not_run + 1))
                return
        fi
        limit=$FILE_LIMIT
        if [ "$DEADLINE" != 0 ] && [ $((DEADLINE - $(date +%s))) -lt "$limit" ]; then
                limit=$((DEADLINE - $(date +%s)))
        fi
        fstart=$(date +%s)
        echo "== $b $f$([ "$store" = sqlite ] || echo " on $store")"
        FILE_LIMIT=$limit TB_STORE=$store TOKENBROKER_BUILD="$PWD/$b" node_tests "$f"
        echo "$(( $(date +%s) - fstart )) $b $(basename "$f")$([ "$store" = sqlite ] || echo " on $store")" >> "$times"
}
times=$(mktemp)

# Files, not a folder: `node --test DIR` means something else on node 21+.
if [ -n "${TB_TESTS:-}" ]; then
        read -r -a files <<< "$TB_TESTS"
else
        files=(tests/integration/*.test.js)
fi
if [ "$PG_ONLY" = 1 ]; then
        :
elif [ ! -e "${files[0]}" ]; then
        echo "!! no integration test files: counted as a failure"
        total_fail=$((total_fail + 1))
else
        for b in "${builds[@]}"; do
                echo "== integration tests against $b"
                for f in "${files[@]}"; do
                        run_file "$b" "$f" sqlite
                done
                step_done "integration tests ($b, ${#files[@]} files)"
        done
fi

# The store matrix (issue 10): the files whose behaviour is the store's,
# again with every daemon on PostgreSQL (a throwaway cluster per file, a
# database per daemon; tests/lib/broker.js). make check: the first build;
# make check-pg: every build.
if [ "${#pg_files[@]}" -gt 0 ]; then
        pg_builds=("${builds[0]}")
        [ "$PG_ONLY" = 1 ] && pg_builds=("${builds[@]}")
        for b in "${pg_builds[@]}"; do
                echo "== integration tests against $b on PostgreSQL (TB_STORE=postgresql)"
                for f in "${pg_files[@]}"; do
                        run_file "$b" "$f" postgresql
                done
                step_done "integration tests on PostgreSQL ($b, ${#pg_files[@]} files)"
        done
elif [ "$PG_ONLY" = 1 ]; then
        echo "!! TB_PG_ONLY=1 with no store-matrix files: counted as a failure"
        total_fail=$((total_fail + 1))
fi
total_fail=$((total_fail + not_run))

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
