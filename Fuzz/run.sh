#!/usr/bin/env bash
# Fuzzes baton's parsers with libFuzzer (swiftc -sanitize=fuzzer,address).
#   bash Fuzz/run.sh            short form: 200 000 executions per target (the test command runs this)
#   bash Fuzz/run.sh --long     long form: 10 000 000 executions per target; new inputs join Fuzz/corpus/
# A crash leaves its input in Fuzz/crashes/ and fails the run; turn it into a regression test in
# Tests/BatonCoreTests/FuzzRegressionTests.swift.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=200000
long=0
if [ "${1:-}" = "--long" ]; then runs=10000000; long=1; fi
mkdir -p .build-fuzz Fuzz/crashes
binary=.build-fuzz/fuzz
if [ ! -x "$binary" ] || [ -n "$(find Sources/BatonCore Fuzz/Targets -newer "$binary" -name '*.swift' | head -1)" ]; then
  # (ld.gold warns about every ASan symbol it cannot export: keep that out of the way unless the build fails.)
  swiftc -sanitize=fuzzer,address -parse-as-library -O -module-name BatonCore \
    Sources/BatonCore/*.swift Fuzz/Targets/Fuzz.swift -o "$binary" >.build-fuzz/build.log 2>&1 \
    || { grep -v 'Cannot export local symbol' .build-fuzz/build.log >&2; exit 1; }
fi
status=0
ok=0
for target in notify control address; do
  corpus="Fuzz/corpus/$target"
  work=$(mktemp -d)
  # The short form explores from the committed corpus without changing it.
  if [ "$long" = 1 ]; then dirs=("$corpus"); else dirs=("$work" "$corpus"); fi
  start=$(date +%s)
  if BATON_FUZZ_TARGET=$target "$binary" -runs="$runs" -max_len=8192 -artifact_prefix="Fuzz/crashes/$target-" \
      -print_final_stats=1 "${dirs[@]}" >"$work/log" 2>&1; then
    execs=$(grep -o 'number_of_executed_units: *[0-9]*' "$work/log" | grep -o '[0-9]*$')
    echo "fuzz $target: $execs executions, 0 crashes, $(( $(date +%s) - start ))s, corpus $(ls "$corpus" | wc -l) inputs"
    ok=$((ok + 1))
  else
    echo "fuzz $target: CRASH (input in Fuzz/crashes/)"; tail -30 "$work/log"; status=1
  fi
  rm -rf "$work"
done
echo "fuzz: $ok passed, $((3 - ok)) failed"
exit $status
