#!/bin/bash
# SPDX-License-Identifier: MIT
#
# Start-to-READY alone (issue 9's first row), quicker than make bench-scale:
# seeds N connections once (as scale.sh seeds them: 40-character tokens,
# expiries 10-60 min ahead, so nothing falls due), then starts the daemon
# ROUNDS times on that store and prints, each time, the ms from exec to the
# first 200 from /v1/status (it answers only once every connection is
# loaded and every listener accepts), how long its start thread waited for
# a core meanwhile (other jobs: /proc/PID/schedstat), the daemon's own
# "Loaded ..." line (with each load thread's CPU) and its VmRSS then. Several builds may be given: they take turns on the
# same store, so a before/after comparison runs side by side.
#
#   bash tests/bench/ready.sh [-n N] [-r ROUNDS] [-d DIR] BUILD_DIR...
#
# DIR (default /tmp/tb-ready-N) keeps the seeded store between runs; remove
# it to seed again. Nothing is needed but the daemon and bench/seed (no
# provider: no connection is due while it runs). Tokens are never printed.
set -u
N=1000000 ROUNDS=3 DIR=
while getopts n:r:d: o; do
        case $o in
        n) N=$OPTARG ;;
        r) ROUNDS=$OPTARG ;;
        d) DIR=$OPTARG ;;
        *) exit 2 ;;
        esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { echo "usage: ready.sh [-n N] [-r ROUNDS] [-d DIR] BUILD_DIR..." >&2; exit 2; }
BUILDS=()
for b in "$@"; do
        b=$(cd "$b" && pwd) || exit 2
        [ -x "$b/tokenbrokerd" ] || { echo "ready: $b/tokenbrokerd is missing" >&2; exit 2; }
        BUILDS+=("$b")
done
DIR=${DIR:-/tmp/tb-ready-$N}
. "$(dirname "${BASH_SOURCE[0]}")/fastconf.sh"
mkdir -p "$DIR/providers.d" "$DIR/run" && cd "$DIR" || exit 1
D=
trap '[ -n "$D" ] && kill "$D" 2>/dev/null && wait "$D" 2>/dev/null' EXIT

cat > tokenbroker.conf <<EOF
[broker]
state_dir = $DIR/state
socket = $DIR/run/tb.sock
callback_listen = 127.0.0.1:$(( 10000 + RANDOM % 20000 ))
providers_dir = $DIR/providers.d
EOF
fast_provider_conf providers.d 9 64    # never asked: nothing falls due
if [ ! -e seeded ]; then
        rm -rf state
        "${BUILDS[0]}/bench/seed" -c tokenbroker.conf -p fast -n "$N" --prefix c --token-length 40 \
                --expires-in-min 600 --expires-in-max 3600 || exit 1
        touch seeded
fi

ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
for round in $(seq "$ROUNDS"); do
        for b in "${BUILDS[@]}"; do
                sync
                t0=$(date +%s%N)
                TOKENBROKER_LOG_LEVEL=info "$b/tokenbrokerd" -c tokenbroker.conf > daemon.log 2>&1 &
                D=$!
                ms=
                for _ in $(seq 30000); do
                        kill -0 "$D" 2>/dev/null || break
                        curl -sf --max-time 5 --unix-socket run/tb.sock http://x/v1/status > /dev/null 2>&1 &&
                                { ms=$(ms_since "$t0"); break; }
                        sleep 0.005
                done
                rss=$(sed -n 's/^VmRSS:[[:space:]]*//p' "/proc/$D/status" 2>/dev/null)
                # the start thread's time waiting for a core: the share of
                # the wall time other jobs on the machine took
                waited=$(awk '{ printf "%d", $2 / 1000000 }' "/proc/$D/schedstat" 2>/dev/null)
                kill "$D" 2>/dev/null; wait "$D" 2>/dev/null; D=
                [ -n "$ms" ] || { echo "ready: $b did not answer" >&2; tail daemon.log >&2; exit 1; }
                printf 'round %d  %-28s READY %5d ms (%s ms waiting for a core)  RSS %s  %s\n' "$round" "$b" "$ms" \
                        "${waited:-?}" "$rss" \
                        "$(grep -o 'Loaded [0-9]* connections.*' daemon.log | head -1)"
        done
done
