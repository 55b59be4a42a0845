#!/bin/bash
# SPDX-License-Identifier: MIT
#
# Checks the scale tools against a real daemon, by hand (not run by
# `make check`): seeds N connections due within a few seconds, serves them
# a refresh storm from fastprovider (rotating, slow enough that requests
# pile up) and checks that
#   - the daemon starts on the seeded store and serves a seeded token (200),
#   - every connection was refreshed once, with no invalid_grant,
#   - fastprovider saw requests pile up to, and never beyond, max_in_flight,
#   - seed refuses the store while the daemon holds it,
#   - nothing exited with a sanitizer report.
# Loopback only; everything it starts is stopped by PID; every wait is
# bounded. Tokens are never printed.
#
#   bash tests/bench/check-scale-tools.sh [BUILD_DIR] [N]
#
# BUILD_DIR defaults to build (make BUILD=... BUILD/bench/seed
# BUILD/bench/fastprovider BUILD/tokenbrokerd first); N to 2000.

set -u
B=$(cd "${1:-build}" && pwd) || exit 2
. "$(dirname "${BASH_SOURCE[0]}")/fastconf.sh"
N=${2:-2000}
MAX_IN_FLIGHT=8
DELAY_MS=100
DUE_WITHIN=5
for f in bench/seed bench/fastprovider tokenbrokerd; do
        [ -x "$B/$f" ] || { echo "check-scale-tools: $B/$f is missing" >&2; exit 2; }
done

T=$(mktemp -d /tmp/scale-tools.XXXXXX)
FP= D=
fail=0
cleanup() {
        [ -n "$D" ] && kill "$D" 2>/dev/null && wait "$D" 2>/dev/null
        [ -n "$FP" ] && kill "$FP" 2>/dev/null && wait "$FP" 2>/dev/null
        if [ "$fail" = 0 ]; then rm -rf "$T"; else echo "check-scale-tools: kept $T" >&2; fi
}
trap cleanup EXIT
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fail=1; }
# json KEY[.KEY]: a member of the JSON object on stdin (node: a test dependency already).
json() {
        node -e 'let s = ""; process.stdin.on("data", (d) => (s += d)).on("end", () => {
                let v = JSON.parse(s); for (const k of process.argv[1].split(".")) v = v[k];
                console.log(v); });' "$1"
}
stats() { curl -sf --max-time 5 "http://127.0.0.1:$PORT/stats"; }

mkdir -p "$T/providers.d"
cd "$T" || exit 2

"$B/bench/fastprovider" --rotate --accept unseen --delay-ms $DELAY_MS --port-file fp.port \
        > fp.out 2> fp.err &
FP=$!
for _ in $(seq 200); do [ -s fp.port ] && break; sleep 0.05; done
[ -s fp.port ] || { bad "fastprovider did not start"; cat fp.err; exit 1; }
PORT=$(cat fp.port)

cat > tokenbroker.conf <<EOF
[broker]
state_dir = $T/state
socket = $T/run/tokenbroker.sock
callback_listen = 127.0.0.1:0
public_url = http://127.0.0.1:8421
providers_dir = $T/providers.d
EOF
fast_provider_conf providers.d "$PORT" $MAX_IN_FLIGHT

if "$B/bench/seed" -q -c tokenboker.conf -p fast -n 1 2> seed.err; then
        bad "seed accepted a missing config"
else
        ok "seed refuses a missing config"
fi
if "$B/bench/seed" -q -c tokenbroker.conf -p nosuch -n 1 2> seed.err; then
        bad "seed accepted an unknown provider"
elif grep -q "configured: fast" seed.err; then
        ok "seed refuses an unknown provider and lists the configured ones"
else
        bad "seed's unknown-provider message: $(cat seed.err)"
fi

"$B/bench/seed" -q -c tokenbroker.conf -p fast -n "$N" --due-within $DUE_WITHIN > seed.out 2> seed.err ||
        { bad "seed failed: $(cat seed.err)"; exit 1; }
grep -q "^seeded $N connections" seed.out && ok "$(cat seed.out)" || bad "seed said: $(cat seed.out)"
if "$B/bench/seed" -q -c tokenbroker.conf -p fast -n 1 2> seed.err; then
        bad "seed wrote a name that exists"
else
        grep -q "exists already" seed.err && ok "seed refuses an existing name" ||
                bad "seed's existing-name message: $(cat seed.err)"
fi

"$B/tokenbrokerd" -c tokenbroker.conf > daemon.log 2>&1 &
D=$!
status=
for _ in $(seq 600); do
        status=$(curl -sf --max-time 5 --unix-socket run/tokenbroker.sock http://x/v1/status) && break
        kill -0 "$D" 2>/dev/null || break
        sleep 0.05
done
active=$(printf '%s' "$status" | json connections.active 2>/dev/null)
[ "$active" = "$N" ] && ok "daemon started on the seeded store: $active active" ||
        { bad "daemon status: '$status'"; tail -5 daemon.log; exit 1; }
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 --unix-socket run/tokenbroker.sock \
        http://x/v1/connections/c0000001/token)
[ "$code" = 200 ] && ok "a seeded token is served" || bad "token of c0000001: HTTP $code"

# The store lock (state_dir/lock, flock) came with issue 8; an older
# daemon takes none, and then there is nothing to refuse.
if [ -e state/lock ] && ! flock -n state/lock true; then
        if "$B/bench/seed" -q -c tokenbroker.conf -p fast -n 1 --start $((N + 1)) 2> seed.err; then
                bad "seed wrote into a store a running daemon holds"
        else
                grep -q "PID $D" seed.err && ok "seed refuses the store of a running daemon (PID $D)" ||
                        bad "seed under a running daemon said: $(cat seed.err)"
        fi
else
        echo "skip this daemon takes no lock on its store: seed's refusal not checked"
fi

# The storm: every refresh falls due within DUE_WITHIN s (plus the
# jitter); at DELAY_MS a request and MAX_IN_FLIGHT at once it lasts about
# N * DELAY_MS / MAX_IN_FLIGHT ms. Wait up to three times that, plus 60 s.
limit=$(( (N * DELAY_MS / MAX_IN_FLIGHT / 1000 + DUE_WITHIN + 10) * 3 + 60 ))
start=$SECONDS
refreshes=0
while [ $((SECONDS - start)) -lt "$limit" ]; do
        refreshes=$(stats | json refreshes) || refreshes=0
        [ "$refreshes" -ge "$N" ] && break
        kill -0 "$D" 2>/dev/null || break
        sleep 1
done
sleep 1   # a refresh beyond N would show now
s=$(stats)
refreshes=$(printf '%s' "$s" | json refreshes)
invalid=$(printf '%s' "$s" | json invalid_grant)
peak=$(printf '%s' "$s" | json peak_in_flight)
[ "$refreshes" = "$N" ] && ok "$refreshes refreshes in $((SECONDS - start)) s" ||
        bad "refreshes: $refreshes, want $N"
[ "$invalid" = 0 ] && ok "invalid_grant 0" || bad "invalid_grant $invalid"
if [ "$peak" -le "$MAX_IN_FLIGHT" ] && [ "$peak" -ge $((MAX_IN_FLIGHT / 2)) ]; then
        ok "peak in flight $peak (max_in_flight $MAX_IN_FLIGHT)"
else
        bad "peak in flight $peak, want $((MAX_IN_FLIGHT / 2))..$MAX_IN_FLIGHT"
fi
st=$(curl -sf --max-time 5 --unix-socket run/tokenbroker.sock http://x/v1/status)
rok=$(printf '%s' "$st" | json refreshes_ok)
rfail=$(printf '%s' "$st" | json refreshes_failed)
[ "$rok" = "$N" ] && [ "$rfail" = 0 ] && ok "daemon: refreshes_ok $rok, refreshes_failed $rfail" ||
        bad "daemon: refreshes_ok $rok, refreshes_failed $rfail"

kill "$D"; wait "$D"; rc=$?; D=
[ "$rc" = 0 ] && ok "daemon exit 0" || bad "daemon exit $rc"
kill "$FP"; wait "$FP"; rc=$?; FP=
[ "$rc" = 0 ] && ok "fastprovider exit 0" || bad "fastprovider exit $rc"
if grep -l "Sanitizer" daemon.log fp.err seed.err > /dev/null 2>&1; then
        bad "sanitizer report"; grep -h -A5 Sanitizer daemon.log fp.err seed.err | head -20
else
        ok "no sanitizer report"
fi
[ "$fail" = 0 ] && echo "check-scale-tools: all passed" || echo "check-scale-tools: FAILED"
exit $fail
