#!/usr/bin/env bash
# Runs every test of adapterd and ends with "N passed, N failed, N skipped".
#  - C unit tests: each TEST of each $BUILD/tests/test_* binary in its own process, with a
#    timeout (a crash or hang fails that test only).
#  - Scripts: tests/ref/test_*.py, tests/integration/test_*.py (Debian's /usr/bin/python3,
#    which has numpy) and tests/js/*.test.mjs (node). Each prints TAP lines
#    ("ok N - name", "not ok N - name", "# SKIP" suffix for skips); a script that exits
#    non-zero without reporting a failure counts as one failed test.
# Environment: BUILD (build dir), TEST_FILTER (substring of test names to run).
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
export BUILD
FILTER=${TEST_FILTER:-}
pass=0; fail=0; skip=0
failed_names=()
LOGDIR=tests/tmp/logs
mkdir -p "$LOGDIR"

record() { # status name
  case $1 in
    ok) pass=$((pass+1)); echo "ok - $2" ;;
    skip) skip=$((skip+1)); echo "ok - $2 # SKIP" ;;
    *) fail=$((fail+1)); failed_names+=("$2"); echo "not ok - $2" ;;
  esac
}

run_unit() {
  for bin in "$BUILD"/tests/test_*; do
    [ -x "$bin" ] || continue
    suite=$(basename "$bin")
    for name in $("$bin" --list); do
      [ -n "$FILTER" ] && [[ "$suite.$name" != *"$FILTER"* ]] && continue
      log="$LOGDIR/$suite.$name.log"
      if timeout 180 "$bin" "$name" >"$log" 2>&1; then record ok "$suite.$name"
      else record fail "$suite.$name"; sed 's/^/    # /' "$log" | tail -20; fi
    done
  done
}

run_script() { # interpreter file
  local interp=$1 file=$2 suite log rc
  suite=$(basename "$file")
  [ -n "$FILTER" ] && [[ "$suite" != *"$FILTER"* ]] && return
  log="$LOGDIR/$suite.log"
  timeout 900 $interp "$file" >"$log" 2>&1; rc=$?
  local n_before=$((pass+fail+skip)) fails_before=$fail
  while IFS= read -r line; do
    case $line in
      "not ok"*) record fail "$suite: ${line#not ok*- }" ;;
      "ok"*"# SKIP"*) record skip "$suite: ${line#ok*- }" ;;
      "ok"*) record ok "$suite: ${line#ok*- }" ;;
    esac
  done <"$log"
  if [ $rc -ne 0 ] && [ $fail -eq $fails_before ]; then
    record fail "$suite (exit $rc)"
  fi
  if [ $fail -ne $fails_before ] || [ $((pass+fail+skip)) -eq $n_before ]; then
    grep -v '^ok' "$log" | tail -30 | sed 's/^/    # /'
  fi
}

run_unit
for f in tests/ref/test_*.py tests/integration/test_*.py; do
  [ -f "$f" ] && run_script /usr/bin/python3 "$f"
done
for f in tests/js/*.test.mjs; do
  [ -f "$f" ] && run_script node "$f"
done

if [ ${#failed_names[@]} -gt 0 ]; then
  echo "# failed:"; printf '#   %s\n' "${failed_names[@]}"
fi
echo "$pass passed, $fail failed, $skip skipped"
[ $fail -eq 0 ]
