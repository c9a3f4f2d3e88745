#!/usr/bin/env bash
# Builds and runs the libFuzzer harnesses of native/fuzz, then the hostile-writer program (scribble).
#
#   scripts/fuzz.sh --ci                 each harness 25 s, scribble 3 x 3000 rounds (about 2 minutes)
#   scripts/fuzz.sh --seconds 600        each harness 600 s
#   scripts/fuzz.sh --seconds 60 --only heap_ops
#   scripts/fuzz.sh --seconds 300 --keep-going   crashes are saved and fuzzing goes on (-fork=1)
#   scripts/fuzz.sh --repro FILE HARNESS  runs one saved input
#
# Needs clang with libFuzzer: on Debian `apt-get install -y clang libclang-rt-14-dev`. CXX=clang++-19
# picks another one. Inputs that crash are written to native/fuzz/out/crashes/; the corpus grows in
# native/fuzz/out/corpus/<harness> (seeded from native/fuzz/corpus/<harness>, which stays small).
# Exit status: 0 when no harness crashed, 1 otherwise. Prints one summary line per harness:
#   fuzz <harness>: <executions> executions in <s> s, <n> crash(es)
set -uo pipefail
cd "$(dirname "$0")/.."

seconds=60
only=""
keep_going=0
scribble_rounds=20000
repro=""
while [ $# -gt 0 ]; do
  case "$1" in
    --ci) seconds=25; scribble_rounds=3000 ;;
    --seconds) seconds="$2"; shift ;;
    --only) only="$2"; shift ;;
    --keep-going) keep_going=1 ;;
    --repro) repro="$2"; only="$3"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "fuzz.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

CXX="${CXX:-clang++}"
if ! command -v "$CXX" >/dev/null; then
  echo "fuzz.sh: $CXX not found; on Debian: apt-get install -y clang libclang-rt-14-dev" >&2
  exit 1
fi
probe=$(mktemp -d)
printf '#include <cstddef>\n#include <cstdint>\nextern "C" int LLVMFuzzerTestOneInput(const uint8_t*, size_t) { return 0; }\n' > "$probe/p.cc"
if ! "$CXX" -fsanitize=fuzzer,address "$probe/p.cc" -o "$probe/p" 2>/dev/null; then
  echo "fuzz.sh: $CXX cannot link -fsanitize=fuzzer; on Debian: apt-get install -y libclang-rt-14-dev (or the libclang-rt-N-dev of your clang)" >&2
  rm -rf "$probe"; exit 1
fi
rm -rf "$probe"

make -s -C native/fuzz CXX="$CXX" 2>&1 | grep -v -e 'unused function' -e '^\s*inline' -e '^\s*\^' -e 'warnings\? generated' || true
[ -x native/fuzz/out/heap_ops ] || { echo "fuzz.sh: build failed" >&2; exit 1; }

export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

if [ -n "$repro" ]; then
  exec "native/fuzz/out/$only" "$repro"
fi

# Objects left by killed runs of earlier sessions (their pids are gone).
for f in /dev/shm/mempool-fuzz-* /dev/shm/mempool-scribble-*; do
  [ -e "$f" ] || continue
  pid=$(basename "$f" | sed -E 's/^mempool-(fuzz|scribble)-([0-9]+).*/\2/')
  kill -0 "$pid" 2>/dev/null || rm -f "$f"
done

mkdir -p native/fuzz/out/crashes
failed=0
total_execs=0
for h in heap_ops heap_attach segment_open; do
  [ -z "$only" ] || [ "$only" = "$h" ] || continue
  corpus="native/fuzz/out/corpus/$h"
  mkdir -p "$corpus"
  log="native/fuzz/out/$h.log"
  args=(-max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048
        -artifact_prefix="native/fuzz/out/crashes/$h-" "$corpus" "native/fuzz/corpus/$h")
  before=$(ls native/fuzz/out/crashes | grep -c "^$h-" || true)
  start=$(date +%s)
  if [ "$keep_going" = 1 ]; then
    "native/fuzz/out/$h" -fork=1 -ignore_crashes=1 -ignore_timeouts=1 "${args[@]}" > "$log" 2>&1
  else
    "native/fuzz/out/$h" "${args[@]}" > "$log" 2>&1
  fi
  rc=$?
  elapsed=$(( $(date +%s) - start ))
  after=$(ls native/fuzz/out/crashes | grep -c "^$h-" || true)
  if [ "$keep_going" = 1 ]; then
    execs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
  else
    execs=$(grep -oE 'stat::number_of_executed_units: [0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1)
  fi
  execs=${execs:-0}
  total_execs=$((total_execs + execs))
  crashes=$((after - before))
  echo "fuzz $h: $execs executions in $elapsed s, $crashes crash(es)"
  if [ "$crashes" -gt 0 ] || { [ "$keep_going" = 0 ] && [ "$rc" -ne 0 ]; }; then
    failed=1
    grep -m3 -E 'FUZZ FAILURE|ERROR: |runtime error' "$log" | sed 's/^/    /'
    ls -t native/fuzz/out/crashes | grep "^$h-" | head -3 | sed 's|^|    native/fuzz/out/crashes/|'
  fi
done

if [ -z "$only" ] || [ "$only" = scribble ]; then
  for a in tlsf buddy bitmap; do
    out=$(native/fuzz/out/scribble --algorithm "$a" --rounds "$scribble_rounds" --seed "${SCRIBBLE_SEED:-1}" 2>&1)
    rc=$?
    if [ $rc -eq 0 ]; then
      echo "$out" | grep '^scribble'
    else
      failed=1
      echo "scribble $a: FAILED (exit $rc)"
      echo "$out" | grep -m6 -E 'ERROR|runtime error|FUZZ FAILURE|#[0-4] ' | sed 's/^/    /'
    fi
  done
fi

echo "fuzz: $total_execs executions in all"
exit $failed
