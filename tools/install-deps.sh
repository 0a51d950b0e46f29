#!/usr/bin/env bash
# Installs what adapterd needs to build, run and test, only what is missing:
# Debian 12 packages (as root, or via sudo) and the npm packages pinned in package-lock.json.
# clang + libclang-rt-14-dev (the libFuzzer/sanitizer runtime) serve only `make fuzz`;
# wrk only `make soak` and tests/integration/test_soak_smoke.py.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS="build-essential pkg-config libuv1-dev node-llhttp libopenblas-dev libjansson-dev
libsqlite3-dev sqlite3 python3 python3-numpy nodejs npm curl ca-certificates
clang libclang-rt-14-dev wrk"
missing=""
for p in $PKGS; do
  # nodejs/npm may come from elsewhere (nodesource); a working binary is enough.
  case $p in
    nodejs) command -v node >/dev/null && continue ;;
    npm) command -v npm >/dev/null && continue ;;
  esac
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "install-deps: installing$missing"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "install-deps: npm ci"
  npm ci --no-audit --no-fund --loglevel=error
fi
