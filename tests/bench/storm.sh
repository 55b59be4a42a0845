#!/bin/bash
# A refresh storm (issue 9): N connections seeded all due at once, a fast
# rotating provider, and token handouts measured while the daemon refreshes
# them. Prints durable refreshes/s (every refresh counted once the daemon
# has committed it: refreshes_ok in /v1/status) and the handout latency of
# one client during the storm, in 1-second windows. Not run in CI.
#
#   make build/tokenbrokerd build/bench/seed build/bench/fastprovider build/bench/loadgen
#   bash tests/bench/storm.sh [BUILD_DIR] [N]        (default build, 20000)
#
# Everything it starts is stopped by PID; the folder is removed at the end.
set -euo pipefail
B=$(cd "${1:-build}" && pwd)
. "$(dirname "${BASH_SOURCE[0]}")/fastconf.sh"
N=${2:-20000}
D=$(mktemp -d /tmp/tb-storm-XXXXXX)
FP= DAEMON=
cleanup() {
        [ -n "$DAEMON" ] && kill "$DAEMON" 2>/dev/null && wait "$DAEMON" 2>/dev/null || true
        [ -n "$FP" ] && kill "$FP" 2>/dev/null && wait "$FP" 2>/dev/null || true
        rm -rf "$D"
}
trap cleanup EXIT
mkdir -p "$D/providers.d" "$D/run"
cd "$D"

"$B/bench/fastprovider" --rotate --accept unseen --port-file fp.port > fp.out 2>&1 &
FP=$!
for _ in $(seq 200); do [ -s fp.port ] && break; sleep 0.05; done
PORT=$(cat fp.port)
CB=$(( 20000 + RANDOM % 20000 ))
cat > tokenbroker.conf <<EOF
[broker]
state_dir = $D/state
socket = $D/run/tb.sock
callback_listen = 127.0.0.1:$CB
public_url = http://127.0.0.1:$CB
providers_dir = $D/providers.d
EOF
fast_provider_conf providers.d "$PORT" 64
"$B/bench/seed" -c tokenbroker.conf -p fast -n "$N" --due-within 0 -q > seed.out
TOKENBROKER_LOG_LEVEL=notice "$B/tokenbrokerd" -c tokenbroker.conf > daemon.log 2>&1 &
DAEMON=$!

status() { curl -sf --unix-socket run/tb.sock http://x/v1/status; }
ok() { status | sed -n 's/.*"refreshes_ok": *\([0-9]*\).*/\1/p'; }
for _ in $(seq 3000); do status > /dev/null 2>&1 && break; sleep 0.01; done
t0=$(date +%s%N)
echo "storm: $N connections due at once (seeded, 40-character tokens, rotating provider, max_in_flight 64)"
# A watcher polls the daemon every 20 ms and notes when all are refreshed.
( while :; do
        n=$(ok)
        if [ "${n:-0}" -ge "$N" ]; then echo $(( ($(date +%s%N) - t0) / 1000000 )) > done.ms; exit 0; fi
        [ $(( ($(date +%s%N) - t0) / 1000000000 )) -ge 120 ] && exit 1
        sleep 0.02
  done ) &
W=$!
while [ ! -s done.ms ] && kill -0 "$W" 2>/dev/null; do
        "$B/bench/loadgen" --socket run/tb.sock --connections 1 --duration 1 --warmup 0 \
                --path /v1/connections/c0000001/token --expect access_token --label "handout during storm" 2>&1 | \
                sed -n 's/^\(handout during storm\) .*\(req\/s=[0-9.]*\) *\(p50=[0-9.]*ms\) *\(p99=[0-9.]*ms\).*\(max=[0-9.]*ms\).*/  \1: \2 \3 \4 \5/p'; echo
done
wait "$W" || { echo "storm: not done after 120 s ($(ok) of $N refreshed)"; exit 1; }
ms=$(cat done.ms)
echo "refreshed: $(ok) of $N in $ms ms after the daemon answered: $(( N * 1000 / (ms > 0 ? ms : 1) )) durable refreshes/s"
curl -s "http://127.0.0.1:$PORT/stats" | sed -n 's/.*\("refreshes": *[0-9]*\).*\("invalid_grant": *[0-9]*\).*/provider: \1, \2/p'; echo
curl -s "http://127.0.0.1:$PORT/stats" | sed -n 's/.*\("peak_in_flight": *[0-9]*\).*/provider: \1/p'; echo
