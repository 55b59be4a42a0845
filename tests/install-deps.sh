#!/usr/bin/env bash
# Installs what building and testing tokenbroker needs on Debian 12, only
# what is missing: the -dev packages, the test tools (sqlite3 CLI, curl,
# Debian's chromium for the headless consent step, clang for fuzzing,
# groff-base and man-db for the man page checks, PostgreSQL 15 for the
# throwaway clusters of the store tests; git, python3-requests and
# golang-go for the integration examples) and the pinned npm
# packages of tests/package.json.
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(build-essential pkg-config libmicrohttpd-dev libcurl4-openssl-dev libsqlite3-dev
      libjansson-dev libsystemd-dev libssl-dev sqlite3 curl chromium clang libclang-rt-14-dev
      systemd util-linux prometheus debootstrap systemd-container libfaketime groff-base man-db
      postgresql-15 libpq-dev git python3-requests golang-go)
missing=()
for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node may come from elsewhere than Debian (the machine's own build):
# only ask apt for it when there is none.
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
        sudo=""
        [ "$(id -u)" = 0 ] || sudo="sudo"
        echo "install-deps: installing ${missing[*]}"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ ! -e tests/node_modules/.package-lock.json ] || [ tests/package-lock.json -nt tests/node_modules/.package-lock.json ]; then
        (cd tests && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "install-deps: ok"
