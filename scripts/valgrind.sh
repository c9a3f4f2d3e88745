#!/usr/bin/env bash
# Memcheck over mempool: the core's tests built WITHOUT sanitizers, then mocha specs in Node.
#
#   scripts/valgrind.sh                 core tests (all but the long stresses) + test/10.pool.api.spec.ts and test/50.shared.spec.ts
#   scripts/valgrind.sh --core          the core only
#   scripts/valgrind.sh --js SPEC...    these mocha specs only
#
# Only Node's and V8's own noise is suppressed (test/valgrind.supp: every entry is anchored on
# node/V8/libc frames, none on mempool's). Any error in mempool's code fails the run (exit 1).
# The specs where two processes race for the lock are left out of the JS run ("allocate and free
# concurrently"): under memcheck the parent is so slow that the native child's lock wait times out.
# Node under memcheck runs 20-50x slower: the default set takes about 10 minutes on 2 cores.
set -uo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind.sh: install valgrind (apt-get install -y valgrind)" >&2; exit 1; }

core=1
js=1
specs=(test/10.pool.api.spec.ts test/50.shared.spec.ts)
case "${1:-}" in
  --core) js=0 ;;
  --js) core=0; shift; [ $# -gt 0 ] && specs=("$@") ;;
  "") ;;
  *) echo "valgrind.sh: unknown argument $1" >&2; exit 2 ;;
esac

mkdir -p native/fuzz/out
failed=0
VG=(valgrind --tool=memcheck --error-exitcode=99 --track-origins=yes --suppressions=test/valgrind.supp)

if [ "$core" = 1 ]; then
  echo "== core tests, no sanitizers, under memcheck"
  ( cd native/core && g++ -std=c++17 -O1 -g -Wall -Wextra -I. $(ls *.cc) test/*.cc \
      -o ../fuzz/out/core_tests_plain -lpthread -lrt ) || exit 1
  : > native/fuzz/out/valgrind-core.log
  core_tests=0
  core_errors=0
  # The crash tests fork and kill -9 their children: memcheck follows the parent only. Leaks are
  # checked (definite leaks fail the run): the core owns no memory a test does not free.
  # Every core test but the long random stresses (too slow under memcheck; they run under ASan in
  # npm run test:native): the opt-in stress of regression_test.cc runs instead, with
  # MEMPOOL_STRESS_OPS (default 20000 per heap here). Names come from the test sources.
  mapfile -t filters < <(
    { grep -ho 'TEST("[^"]*")' native/core/test/*.cc | sed -E 's/^TEST\("(.*)"\)$/\1/';
      grep -ho 'FOR_EACH_ALGORITHM("[^"]*"' native/core/test/*.cc | sed -E 's/^FOR_EACH_ALGORITHM\("(.*)"$/\1/'; } |
    grep -v -e ' label' | grep -v -E 'stress|nearly full'; echo "stress: MEMPOOL_STRESS_OPS")
  for filter in "${filters[@]}"; do
    log="native/fuzz/out/valgrind-core.log.part"
    MEMPOOL_STRESS_OPS="${MEMPOOL_STRESS_OPS:-20000}" \
      "${VG[@]}" --leak-check=full --errors-for-leak-kinds=definite native/fuzz/out/core_tests_plain "$filter" > "$log" 2>&1
    rc=$?
    cat "$log" >> native/fuzz/out/valgrind-core.log
    errors=$(grep -E 'ERROR SUMMARY' "$log" | tail -1 | grep -oE '[0-9]+ errors' | grep -oE '[0-9]+')
    ran=$(grep -cE '^(ok|FAIL) ' "$log")
    core_tests=$((core_tests + ran)); core_errors=$((core_errors + ${errors:-0}))
    if [ $rc -ne 0 ]; then
      failed=1
      echo "core '$filter': exit $rc, ${errors:-?} memcheck error(s), $(grep -c '^FAIL ' "$log") failing"
      grep -m10 -E '^==[0-9]+== (Invalid|Conditional|Use of|Syscall|   (at|by) )' "$log" | head -12
    fi
  done
  echo "core under memcheck: $core_tests test case(s) in ${#filters[@]} runs, $core_errors memcheck error(s)"
fi

if [ "$js" = 1 ]; then
  echo "== mocha under memcheck: ${specs[*]}"
  log="native/fuzz/out/valgrind-mocha.log"
  TS_NODE_PROJECT=test/tsconfig.json TS_NODE_TRANSPILE_ONLY=true \
    "${VG[@]}" --leak-check=no --trace-children=no --smc-check=all-non-file --num-callers=30 \
    node --expose-gc node_modules/mocha/bin/mocha.js --no-config --require ts-node/register --extension ts \
    --timeout 600000 --grep 'allocate and free concurrently' --invert "${specs[@]}" > "$log" 2>&1
  rc=$?
  echo "mocha: $(grep -E '^\s+[0-9]+ (passing|failing|pending)' "$log" | tr -s ' ' | paste -sd, -); $(grep -E 'ERROR SUMMARY' "$log" | tail -1 | sed 's/^==[0-9]*== //')"
  if [ $rc -ne 0 ]; then
    failed=1
    grep -m20 -E '^==[0-9]+== (Invalid|Conditional|Use of|Syscall|   (at|by) )' "$log"
  fi
fi
exit $failed
