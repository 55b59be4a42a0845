#!/usr/bin/env bash
# Runs every unit-test binary of one build folder; prints one summary line.
# A folder without unit-test binaries is a failure (a build that produced
# nothing must not pass as "0 passed, 0 failed").
set -uo pipefail
build=${1:-build}
pass=0 fail=0 ran=0
for t in "$build"/tests/test-*; do
        [ -x "$t" ] || continue
        ran=$((ran + 1))
        out=$("$t" 2>&1)
        rc=$?
        line=$(printf '%s\n' "$out" | tail -n 1)
        p=$(printf '%s' "$line" | sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\1/p')
        f=$(printf '%s' "$line" | sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\2/p')
        if [ -z "$p" ]; then p=0; f=1; fi
        if [ $rc -ne 0 ] && [ "$f" = 0 ]; then f=1; fi
        if [ "$f" != 0 ]; then
                printf '%s\n' "$out" | grep -v '^ok ' | sed "s|^|  $(basename "$t"): |"
        fi
        printf 'unit %-22s %s %s\n' "$(basename "$t")" "$([ "$f" = 0 ] && echo ok || echo FAIL)" "($line)"
        pass=$((pass + p))
        fail=$((fail + f))
done
if [ "$ran" = 0 ]; then
        echo "unit tests ($build): no unit-test binaries in $build/tests/ (not built?)" >&2
        fail=$((fail + 1))
fi
echo "unit tests ($build): $pass passed, $fail failed"
[ "$fail" = 0 ]
