#!/bin/bash
# SPDX-License-Identifier: MIT
#
# make bench-scale: issue 9's benchmark, one table with the targets beside
# the figures. Not run by `make check` (a million connections take minutes).
#
#   make bench-scale                                 (1,000,000 connections)
#   make bench-scale BENCH_SCALE_CONNECTIONS=100000  (a smaller run)
#   bash tests/bench/scale.sh [BUILD_DIR] [N]
#
# What it does, all on loopback, everything it starts stopped by PID:
#   1. fastprovider (C, rotating refresh tokens, 1-hour access tokens) and
#      a daemon on an empty store: its RSS is the baseline.
#   2. seed writes N connections: N - S - A with expiries 10-60 min ahead,
#      S = N/10 (100,000 at 1M) falling due within one minute of the
#      daemon's start, A = N/50 (20,000 at 1M) due at once.
#   3. The daemon starts on them: exec to the first 200 from /v1/status
#      (it answers only once every connection is loaded and every listener
#      accepts), and its RSS then: (RSS - baseline) / N - token bytes is
#      the memory per connection beyond its tokens.
#   4. Durable refreshes/s: the A due at once (plus the first of S),
#      counted from /v1/status's refreshes_ok, which moves only once a
#      refresh's commit is durable.
#   5. Handout latency of one client (loadgen, 1 connection) while the S
#      storm runs, over tokens of the storm's connections, counting answers
#      whose expires_at had passed (served past expiry: must be 0).
#   6. tokenctl list: the first page (--limit 1000) and a full --json walk,
#      with handout latency measured during the walk.
#   7. The provider's totals: refreshes, invalid_grant, peak requests in
#      flight (the provider file's max_in_flight is 64).
# Tokens are never printed.
set -u
B=$(cd "${1:-build}" && pwd) || exit 2
. "$(dirname "${BASH_SOURCE[0]}")/fastconf.sh"
N=${2:-${BENCH_SCALE_CONNECTIONS:-1000000}}
MAX_IN_FLIGHT=64
TOKEN_LENGTH=40
case "$N" in ''|*[!0-9]*) echo "bench-scale: N must be a number of connections" >&2; exit 2 ;; esac
[ "$N" -ge 1000 ] || { echo "bench-scale: N must be at least 1000" >&2; exit 2; }
for f in tokenbrokerd tokenctl bench/seed bench/fastprovider bench/loadgen; do
        [ -x "$B/$f" ] || { echo "bench-scale: $B/$f is missing (make all $B/bench/fastprovider $B/bench/loadgen)" >&2; exit 2; }
done
S=$(( N / 10 ))
A=$(( N / 50 ))
REST=$(( N - S - A ))

T=$(mktemp -d /tmp/tb-scale-XXXXXX)
FP= D= LG=
cleanup() {
        for p in $LG $D $FP; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
        rm -rf "$T"
}
trap cleanup EXIT
cd "$T" && mkdir -p providers.d run

ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
rss_kib() { sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$1/status"; }
status() { curl -sf --max-time 5 --unix-socket run/tb.sock http://x/v1/status; }
field() { sed -n "s/.*\"$1\": *\([0-9]*\).*/\1/p"; }
wait_ready() {          # PID: ms from now to the first 200, or nothing
        local t0 i
        t0=$(date +%s%N)
        for i in $(seq 30000); do
                kill -0 "$1" 2>/dev/null || return 1
                status > /dev/null 2>&1 && { ms_since "$t0"; return 0; }
                sleep 0.005
        done
        return 1
}
lg_field() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p" "$2"; }
lat() { printf '%.3f / %.3f / %.1f ms' "$(lg_field p50_ms "$1")" "$(lg_field p99_ms "$1")" "$(lg_field max_ms "$1")"; }

"$B/bench/fastprovider" --rotate --accept unseen --expires-in 3600 --port-file fp.port > fp.out 2>&1 &
FP=$!
for _ in $(seq 200); do [ -s fp.port ] && break; sleep 0.05; done
PORT=$(cat fp.port 2>/dev/null) || { echo "bench-scale: fastprovider did not start" >&2; exit 1; }
CB=$(( 10000 + RANDOM % 20000 ))
conf() {
        cat <<EOF
[broker]
state_dir = $T/$1
socket = $T/run/tb.sock
callback_listen = 127.0.0.1:$CB
public_url = http://127.0.0.1:$CB
providers_dir = $T/providers.d
EOF
}
conf state > tokenbroker.conf
conf base > base.conf
fast_provider_conf providers.d "$PORT" $MAX_IN_FLIGHT

# 1. baseline
TOKENBROKER_LOG_LEVEL=notice "$B/tokenbrokerd" -c base.conf > base.log 2>&1 &
D=$!
wait_ready "$D" > /dev/null || { echo "bench-scale: the daemon did not start on an empty store" >&2; tail base.log >&2; exit 1; }
RSS0=$(rss_kib "$D")
kill "$D"; wait "$D"; D=

# 2. seed
t0=$(date +%s%N)
"$B/bench/seed" -c tokenbroker.conf -p fast -n "$REST" --prefix c --token-length $TOKEN_LENGTH \
        --expires-in-min 600 --expires-in-max 3600 -q > seed.out || exit 1
"$B/bench/seed" -c tokenbroker.conf -p fast -n "$A" --prefix a --token-length $TOKEN_LENGTH --due-within 0 -q >> seed.out || exit 1
"$B/bench/seed" -c tokenbroker.conf -p fast -n "$S" --prefix s --token-length $TOKEN_LENGTH --due-within 60 -q >> seed.out || exit 1
SEED_MS=$(ms_since "$t0")

# 3. start
t0=$(date +%s%N)
TOKENBROKER_LOG_LEVEL=notice "$B/tokenbrokerd" -c tokenbroker.conf > daemon.log 2>&1 &
D=$!
START_MS=$(wait_ready "$D") || { echo "bench-scale: the daemon did not answer within 150 s" >&2; tail daemon.log >&2; exit 1; }
t_ready=$(date +%s%N)
RSS=$(rss_kib "$D")
PER_CONN=$(( (RSS - RSS0) * 1024 / N ))
BEYOND=$(( PER_CONN - 2 * (TOKEN_LENGTH + 1) ))

# 5 (started now: the storm runs from the start). One client, tokens of the
# storm's connections, until every due connection is refreshed.
for i in $(seq 1 "$(( S < 1000 ? S : 1000 ))"); do
        printf '/v1/connections/s%07d/token access_token\n' $(( (i - 1) * (S / (S < 1000 ? S : 1000)) + 1 ))
done > storm.paths
"$B/bench/loadgen" --socket run/tb.sock --connections 1 --duration 300 --warmup 0 --random \
        --path-file storm.paths --count-expired --json --label storm > storm.json 2> storm.txt &
LG=$!

# 4. durable refreshes/s: the A due at once
A_MS=
for _ in $(seq 60000); do
        ok=$(status | field refreshes_ok)
        [ "${ok:-0}" -ge "$A" ] && { A_MS=$(ms_since "$t_ready"); break; }
        [ "$(ms_since "$t_ready")" -ge 120000 ] && break
        sleep 0.002
done
# the storm: every due connection refreshed (at most 5 minutes)
STORM_MS=
for _ in $(seq 30000); do
        ok=$(status | field refreshes_ok)
        [ "${ok:-0}" -ge $(( A + S )) ] && { STORM_MS=$(ms_since "$t_ready"); break; }
        [ "$(ms_since "$t_ready")" -ge 290000 ] && break
        sleep 0.01
done
kill -INT "$LG"; wait "$LG"; LG=
REFRESHED=$(status | field refreshes_ok)

# 6. listing, with one client's handouts during the full walk
t0=$(date +%s%N)
"$B/tokenctl" --socket run/tb.sock list --limit 1000 > /dev/null || echo "bench-scale: tokenctl list --limit 1000 failed" >&2
FIRST_MS=$(ms_since "$t0")
printf '/v1/connections/c%07d/token access_token\n' 1 2 3 > list.paths
"$B/bench/loadgen" --socket run/tb.sock --connections 1 --duration 300 --warmup 0 \
        --path-file list.paths --count-expired --json --label list > list.json 2> list.txt &
LG=$!
sleep 0.5
t0=$(date +%s%N)
"$B/tokenctl" --socket run/tb.sock list --json > list.out || echo "bench-scale: tokenctl list --json failed" >&2
FULL_MS=$(ms_since "$t0")
LISTED=$(grep -o '"name"' list.out | wc -l)
kill -INT "$LG"; wait "$LG"; LG=

STATS=$(curl -s --max-time 5 "http://127.0.0.1:$PORT/stats")
PROV_REFRESHES=$(echo "$STATS" | field refreshes)
INVALID=$(echo "$STATS" | field invalid_grant)
PEAK=$(echo "$STATS" | field peak_in_flight)
EXPIRED=$(( $(sed -n 's/.* expired=\([0-9]*\).*/\1/p' storm.txt | head -1) + $(sed -n 's/.* expired=\([0-9]*\).*/\1/p' list.txt | head -1) ))
kill "$D"; wait "$D"; rc=$?; D=
grep -E "Sanitizer|runtime error" daemon.log >&2 && rc=99

rate() { [ -n "$1" ] && [ "$1" -gt 0 ] && echo $(( $2 * 1000 / $1 )) || echo "-"; }
row() { printf '| %-52s | %-22s | %-18s |\n' "$1" "$2" "$3"; }
echo
echo "bench-scale: $N connections ($REST later, $S due within a minute, $A due at once; ${TOKEN_LENGTH}-character tokens), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
row "what" "measured" "target"
row "---" "---" "---"
row "seed (3 runs of tests/bench/seed)" "$(( SEED_MS / 1000 )) s" "-"
row "start to answering (READY), $N connections" "${START_MS} ms" "<= 3,000 ms"
row "RSS: empty daemon / with $N" "$(( RSS0 / 1024 )) MiB / $(( RSS / 1024 )) MiB" "-"
row "memory per connection beyond its two tokens" "${BEYOND} B (${PER_CONN} B in all)" "<= 300 B"
row "durable refreshes/s ($A due at once)" "$(rate "$A_MS" "$A")/s (${A_MS:-not done} ms)" ">= 20,000/s"
row "storm: $S due within a minute, all refreshed after" "${STORM_MS:-not done in 290 s} ms" "before expiry"
row "handout during the storm p50 / p99 / max" "$(lat storm.json)" "p99 <= 2, max <= 20"
row "tokenctl list: first page (1,000)" "${FIRST_MS} ms" "< 100 ms"
row "tokenctl list --json: all ($LISTED listed)" "${FULL_MS} ms" "< 15,000 ms"
row "handout during the listing p50 / p99 / max" "$(lat list.json)" "p99 <= 2, max <= 20"
row "tokens served past expiry" "${EXPIRED}" "0"
row "refreshes committed (daemon) / seen (provider)" "${REFRESHED:-?} / ${PROV_REFRESHES:-?}" "$(( A + S )) / same"
row "invalid_grant at the provider" "${INVALID:-?}" "0"
row "peak requests in flight at the provider" "${PEAK:-?}" "<= $MAX_IN_FLIGHT"
echo "handout answers checked: storm $(lg_field requests storm.json), listing $(lg_field requests list.json); loadgen errors/mismatches: storm $(lg_field errors storm.json)/$(lg_field mismatches storm.json), listing $(lg_field errors list.json)/$(lg_field mismatches list.json)"
[ "$rc" = 0 ] || { echo "bench-scale: the daemon exited with $rc" >&2; exit 1; }
