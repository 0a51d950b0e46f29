#!/usr/bin/env bash
# `make soak`: load adapterd with wrk on loopback for a while and report what it did.
# Starts $BUILD/adapterd (or $ADAPTERD_BIN) on a free 127.0.0.1 port with the default model
# (data/model, `make default-data`) and --adapters-dir data/adapters, in a fresh data dir under
# tests/tmp/soak-PORT/. A warm-up (SOAK_WARMUP_SECONDS at the largest connection count) loads
# the adapters and brings the KV cache, batch scratch and connection buffers to their working
# size, so RSS growth after it measures leaks rather than start-up; then one wrk phase per entry of SOAK_CONNECTIONS ("64 512"), each
# SOAK_SECONDS (300) divided by the number of phases, running tools/soak.lua: short completions
# (max_tokens 4) cycling over base, demo-a and demo-b. Prints, per phase C,
#   BENCH soak_C_requests|rps|p50|p99|2xx|5xx|status_NNN|socket_errors ...
# and for the whole run BENCH soak_rss_{start,warm,end,peak}_kb, soak_rss_growth_pct (end
# against after the warm-up, both read SOAK_SETTLE_SECONDS (3) after the load stopped) and
# soak_fd_{start,end}. With 512 connections many requests get
# 429: that is the --max-queue back-pressure working (docs/OPERATIONS.md "Soak").
# Exits 1 on any 5xx, a daemon that died or stopped answering /healthz, a non-zero exit status
# on SIGTERM, or fds not back within SOAK_FD_SLACK (4) of the start; 2 when it cannot start.
# Environment: BUILD, ADAPTERD_BIN, SOAK_SECONDS, SOAK_WARMUP_SECONDS (5), SOAK_CONNECTIONS,
# SOAK_THREADS (wrk threads, 2), SOAK_MODEL, SOAK_ADAPTERS, SOAK_ARGS (more daemon flags),
# SOAK_READY_TIMEOUT (60 s; longer for sanitizer builds), SOAK_SETTLE_SECONDS, KEEP_TMP (keep the work folder).
set -uo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
BIN=${ADAPTERD_BIN:-$BUILD/adapterd}
TOTAL=${SOAK_SECONDS:-300}
WARMUP=${SOAK_WARMUP_SECONDS:-5}
CONNS=${SOAK_CONNECTIONS:-64 512}
THREADS=${SOAK_THREADS:-2}
MODEL=${SOAK_MODEL:-data/model}
ADAPTERS=${SOAK_ADAPTERS:-data/adapters}
READY=${SOAK_READY_TIMEOUT:-60}
FD_SLACK=${SOAK_FD_SLACK:-4}
# The daemon hands freed heap pages back after 2 s without an engine step (server.c
# trim_when_idle): RSS is read after the same idle pause at both ends, so growth compares
# like with like (what is still held), not how much of a burst's scratch glibc kept.
SETTLE=${SOAK_SETTLE_SECONDS:-3}

die() { echo "soak: $*" >&2; exit 2; }
command -v wrk >/dev/null || die "wrk not found (Debian package wrk; make deps installs it)"
command -v curl >/dev/null || die "curl not found"
[ -x "$BIN" ] || die "$BIN not built (make)"
[ -f "$MODEL/config.json" ] || die "$MODEL has no config.json (make default-data)"
[ -d "$ADAPTERS" ] || die "$ADAPTERS missing (make default-data)"

nphase=$(wc -w <<<"$CONNS")
phase=$((TOTAL / nphase)); [ "$phase" -ge 1 ] || phase=1
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') \
  || die "no free port"
url="http://127.0.0.1:$port"
work=tests/tmp/soak-$port
rm -rf "$work" && mkdir -p "$work/data" || die "cannot create $work"

# shellcheck disable=SC2086 # SOAK_ARGS is a list of flags
"$BIN" serve --host 127.0.0.1 --port "$port" --model "$MODEL" --model-name base \
  --adapters-dir "$ADAPTERS" --data-dir "$work/data" ${SOAK_ARGS:-} >"$work/daemon.log" 2>&1 &
pid=$!
cleanup() { kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null; }
trap cleanup EXIT

healthy() { curl -sf -m 5 -o /dev/null "$url/healthz"; }
rss_kb() { awk -v k="${2:-VmRSS}:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null; }
# Where the resident memory is (anonymous heap vs mapped files such as the model and sqlite's -shm).
rss_parts() { awk '/^Rss(Anon|File|Shmem):/ { printf "%s %s kB  ", $1, $2 }' "/proc/$1/status" 2>/dev/null; }
fd_count() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
bench() { echo "BENCH $1 $2 $3"; }
fail=0
why() { echo "# soak: FAIL: $*"; fail=1; }

deadline=$((SECONDS + READY))
until healthy; do
  kill -0 "$pid" 2>/dev/null || { tail -20 "$work/daemon.log" >&2; die "adapterd exited at start"; }
  [ $SECONDS -lt $deadline ] || { tail -20 "$work/daemon.log" >&2; die "adapterd not ready in ${READY}s"; }
  sleep 0.1
done
echo "# soak: adapterd pid $pid on $url; phases: $CONNS connections, ${phase}s each"
fd_start=$(fd_count "$pid")
rss_start=$(rss_kb "$pid")

run_wrk() { # tag connections seconds
  SOAK_TAG=$1 wrk -t"$(( $2 < THREADS ? $2 : THREADS ))" -c"$2" -d"$3s" --timeout 30s --latency \
    -s tools/soak.lua "$url/" >"$work/$1.log" 2>&1
  local rc=$?
  grep '^BENCH ' "$work/$1.log"
  grep -v '^BENCH ' "$work/$1.log" | sed '/^#/!s/^/# /'
  [ $rc -eq 0 ] || why "wrk exited $rc in $1"
}

if [ "$WARMUP" -gt 0 ]; then
  maxc=$(tr ' ' '\n' <<<"$CONNS" | sort -n | tail -1)
  run_wrk soak_warmup "$maxc" "$WARMUP" | grep -v '^BENCH'  # warm-up figures are not the result
fi
sleep "$SETTLE"
rss_warm=$(rss_kb "$pid")
echo "# soak: after the warm-up: $(rss_parts "$pid")"

for c in $CONNS; do
  out=$(run_wrk "soak_$c" "$c" "$phase"); echo "$out"
  n5=$(awk -v k="BENCH soak_${c}_5xx" 'index($0, k " ") == 1 { print $3 }' <<<"$out")
  [ "${n5:-x}" = 0 ] || why "${n5:-unknown} 5xx responses with $c connections"
  grep -q '^# soak: FAIL' <<<"$out" && fail=1
  kill -0 "$pid" 2>/dev/null || { why "adapterd died during the $c-connection phase"; break; }
  healthy || why "/healthz did not answer 200 after the $c-connection phase"
  echo "# soak: after $c connections: rss $(rss_kb "$pid") kB, fds $(fd_count "$pid")"
done

if kill -0 "$pid" 2>/dev/null; then
  # wrk has closed its connections; give the daemon a moment to see the EOFs.
  for _ in $(seq 50); do
    [ "$(fd_count "$pid")" -le $((fd_start + FD_SLACK)) ] && break
    sleep 0.1
  done
  fd_end=$(fd_count "$pid")
  sleep "$SETTLE"
  rss_end=$(rss_kb "$pid")
  echo "# soak: at the end: $(rss_parts "$pid")"
  bench soak_fd_start "$fd_start" fds
  bench soak_fd_end "$fd_end" fds
  bench soak_rss_start_kb "$rss_start" kB
  bench soak_rss_warm_kb "$rss_warm" kB
  bench soak_rss_end_kb "$rss_end" kB
  bench soak_rss_peak_kb "$(rss_kb "$pid" VmHWM)" kB
  bench soak_rss_growth_pct "$(awk -v a="$rss_warm" -v b="$rss_end" \
    'BEGIN { printf "%.1f", (b - a) * 100 / a }')" %
  [ "$fd_end" -le $((fd_start + FD_SLACK)) ] || why "fds $fd_start at start, $fd_end at the end"
  kill -TERM "$pid"
  for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then why "adapterd still running 30 s after SIGTERM"
  else wait "$pid"; st=$?; echo "# soak: adapterd exit status $st"
    [ $st -eq 0 ] || why "adapterd exited $st on SIGTERM"; fi
fi
if [ $fail -ne 0 ]; then
  echo "# soak: daemon log kept in $work/daemon.log"; tail -20 "$work/daemon.log" | sed 's/^/#   /'
  exit 1
fi
[ -n "${KEEP_TMP:-}" ] || rm -rf "$work"
echo "# soak: passed"
