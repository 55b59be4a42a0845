#!/usr/bin/env bash
# A Debian 12 (bookworm) root that boots with systemd, for tests/boot/boot-test.sh.
#
#   tests/boot/make-root.sh [CACHE_DIR]      prints CACHE_DIR when it is ready
#
# Made once with debootstrap (minbase + systemd + the runtime libraries of
# tokenbrokerd and tokenctl) and kept in CACHE_DIR (default
# $TB_ROOT_CACHE or /var/cache/tokenbroker-test/bookworm-root). A run reuses
# it when its stamp file says it is complete and made from the same package
# list; otherwise it is made again from scratch. Runs copy it, never boot it.
#
# The mirror is the one apt uses on this machine (or $TB_DEBIAN_MIRROR).
# Needs root. About 250 MB and a few minutes on a cold cache.
set -euo pipefail

CACHE=${1:-${TB_ROOT_CACHE:-/var/cache/tokenbroker-test/bookworm-root}}
SUITE=bookworm
# systemd + dbus to boot; procps for /bin/kill (ExecReload=); the rest are
# what `ldd build/tokenbrokerd build/tokenctl` needs (their dependencies
# come along).
INCLUDE=systemd,systemd-sysv,dbus,procps,libmicrohttpd12,libcurl4,libsqlite3-0,libjansson4,libsystemd0,libssl3,libpq5,ca-certificates
STAMP_TEXT="tokenbroker-test-root v1 $SUITE minbase $INCLUDE"

log() { echo "make-root: $*" >&2; }

[ "$(id -u)" = 0 ] || { log "must run as root (debootstrap, systemd-nspawn)"; exit 1; }

# The tools: debootstrap to make the root, systemd-nspawn to boot it.
missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        # No recommends: systemd-container recommends libnss-mymachines,
        # which would change this machine's nsswitch.conf.
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2 ||
                { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2; }
fi

stamp="$CACHE/.tokenbroker-root-complete"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$STAMP_TEXT" ]; then
        echo "$CACHE"
        exit 0
fi

# The Debian mirror apt uses here: the first bookworm (not -security) URI
# of a deb822 .sources file, else of a one-line sources.list entry.
mirror() {
        local f uri
        if [ -n "${TB_DEBIAN_MIRROR:-}" ]; then echo "$TB_DEBIAN_MIRROR"; return; fi
        for f in /etc/apt/sources.list.d/*.sources; do
                [ -f "$f" ] || continue
                uri=$(awk -v suite="$SUITE" '
                        /^[[:space:]]*$/ { if (u != "" && s && t) { print u; exit } u = ""; s = 0; t = 0; next }
                        /^Types:/ { for (i = 2; i <= NF; i++) if ($i == "deb") t = 1 }
                        /^URIs:/ { u = $2 }
                        /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) s = 1 }
                        /^Enabled:[[:space:]]*no/ { t = 0 }
                        END { if (u != "" && s && t) print u }' "$f" | head -n 1)
                if [ -n "$uri" ]; then echo "$uri"; return; fi
        done
        for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
                [ -f "$f" ] || continue
                uri=$(awk -v suite="$SUITE" '$1 == "deb" { i = 2; if ($2 ~ /^\[/) while ($i !~ /\]$/) i++; if ($2 ~ /^\[/) i++; if ($(i + 1) == suite) { print $i; exit } }' "$f")
                if [ -n "$uri" ]; then echo "$uri"; return; fi
        done
        echo http://deb.debian.org/debian
}

mkdir -p "$(dirname "$CACHE")"
exec 9>"$CACHE.lock"
flock -w 1800 9 || { log "another make-root holds $CACHE.lock"; exit 1; }
# Someone else may have made it while we waited for the lock.
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$STAMP_TEXT" ]; then
        echo "$CACHE"
        exit 0
fi

MIRROR=$(mirror)
tmp="$CACHE.tmp"
rm -rf "$tmp" "$CACHE"
log "debootstrap $SUITE from $MIRROR into $CACHE (cold cache: a few minutes)"
start=$(date +%s)
if ! debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$tmp" "$MIRROR" >"$CACHE.debootstrap.log" 2>&1; then
        log "debootstrap failed; the end of $CACHE.debootstrap.log:"
        tail -n 30 "$CACHE.debootstrap.log" >&2
        [ -f "$tmp/debootstrap/debootstrap.log" ] && tail -n 30 "$tmp/debootstrap/debootstrap.log" >&2
        rm -rf "$tmp"
        exit 1
fi

# Boot faster and quieter in a container; nothing here is the broker's.
rm -f "$tmp/etc/machine-id" && : >"$tmp/etc/machine-id"   # nspawn gives one per boot
echo tokenbroker-boot >"$tmp/etc/hostname"
for u in systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
         fstrim.timer man-db.timer dpkg-db-backup.timer systemd-tmpfiles-clean.timer; do
        ln -sf /dev/null "$tmp/etc/systemd/system/$u"
done
apt_cache="$tmp/var/cache/apt/archives"
find "$apt_cache" -maxdepth 1 -name '*.deb' -delete 2>/dev/null || true

mv "$tmp" "$CACHE"
echo "$STAMP_TEXT" >"$stamp"
log "root ready in $(( $(date +%s) - start )) s: $(du -sh "$CACHE" | cut -f1)"
echo "$CACHE"
