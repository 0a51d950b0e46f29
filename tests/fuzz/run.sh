#!/usr/bin/env bash
# run.sh SECONDS TARGET... - runs each built libFuzzer target (build-fuzz/fuzz_TARGET, see the
# Makefile's fuzz section) for SECONDS on build-fuzz/corpus/TARGET, which starts as a copy of
# the committed seeds in tests/fuzz/corpus/TARGET and keeps what the fuzzer adds across runs.
# Prints per target:
#   BENCH fuzz_TARGET_execs N execs
#   # fuzz TARGET: N execs in S s, K crashes, cov E edges, corpus C files
# tests/fuzz/TARGET.dict, when present, is passed as -dict. Crash reproducers go to
# build-fuzz/crashes/TARGET/, the full log to build-fuzz/logs/TARGET.log.
# Exits 1 if any target crashed (or did not report its final stats line).
set -uo pipefail
cd "$(dirname "$0")/../.."
FUZZ_BUILD=${FUZZ_BUILD:-build-fuzz}
secs=$1
shift
failed=0
for t in "$@"; do
  bin=$FUZZ_BUILD/fuzz_$t
  corpus=$FUZZ_BUILD/corpus/$t
  crashes=$FUZZ_BUILD/crashes/$t
  log=$FUZZ_BUILD/logs/$t.log
  mkdir -p "$corpus" "$crashes" "$FUZZ_BUILD/logs"
  cp -n tests/fuzz/corpus/"$t"/* "$corpus"/ 2>/dev/null || true
  dict=()
  [ -f tests/fuzz/"$t".dict ] && dict=(-dict=tests/fuzz/"$t".dict)
  # -timeout: one input taking 10 s is a hang (templates and parsers have budgets).
  # -rss_limit_mb: the api targets hold a 32000-token tokenizer plus ASan's shadow.
  start=$SECONDS
  "$bin" "${dict[@]}" -max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 \
    -max_len=16384 -print_final_stats=1 -artifact_prefix="$crashes"/ "$corpus" >"$log" 2>&1
  rc=$?
  runs=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
  took=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\2/p' "$log" | tail -1)
  cov=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | sed -n 's/.* cov: \([0-9]*\).*/\1/p' | tail -1)
  ncrash=0
  if [ "$rc" -ne 0 ] || [ -z "$runs" ]; then
    ncrash=1
    failed=1
    # a crash ends the run before the final stats: count what the last status line says
    [ -z "$runs" ] && runs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
    took=$((SECONDS - start))
  fi
  ncorp=$(find "$corpus" -type f | wc -l)
  echo "BENCH fuzz_${t}_execs ${runs:-0} execs"
  echo "# fuzz $t: ${runs:-0} execs in ${took:-0} s, $ncrash crashes, cov ${cov:-?} edges, corpus $ncorp files"
  if [ "$ncrash" -ne 0 ]; then
    echo "# fuzz $t: FAILED (exit $rc), log $log, reproducers in $crashes/:"
    grep -E 'ERROR: |SUMMARY: |Test unit written|runtime error|fuzz_[a-z_]+: ' "$log" | head -8 | sed 's/^/#   /'
  fi
done
exit $failed
