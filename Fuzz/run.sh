#!/usr/bin/env bash
# Fuzzes baton's parsers with libFuzzer (swiftc -sanitize=fuzzer,address).
#   bash Fuzz/run.sh            short form: 200 000 executions per target (the test command runs this)
#   bash Fuzz/run.sh --long     long form: 10 000 000 executions per target; new inputs join Fuzz/corpus/
#   bash Fuzz/run.sh [--long] TARGET...   only these targets (notify, control, address, config)
# A crash leaves its input in Fuzz/crashes/ and fails the run; turn it into a regression test beside that
# parser's tests: Tests/BatonCoreTests/ParsingTests.swift (notify, control, address) or
# Tests/BatonCoreTests/ConfigurationTests.swift (config).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=200000
long=0
if [ "${1:-}" = "--long" ]; then runs=10000000; long=1; shift; fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(notify control address config)
build=${BATON_FUZZ_BUILD:-.build-fuzz}
mkdir -p "$build" Fuzz/crashes
binary=$build/fuzz
flags=(-sanitize=fuzzer,address -parse-as-library -O)
# (ld.gold warns about every ASan symbol it cannot export: keep that out of the way unless a step fails.)
quiet() { "$@" >"$build/build.log" 2>&1 || { grep -v 'Cannot export local symbol' "$build/build.log" >&2; exit 1; }; }
# swift-argument-parser, instrumented too, from the version Package.swift resolves to (its own scratch path, so
# that a test run holding .build does not block this).
modules=$build/modules
if [ ! -f "$modules/ArgumentParser.o" ]; then
  quiet swift package --scratch-path "$build/spm" resolve
  sources=$build/spm/checkouts/swift-argument-parser/Sources
  mkdir -p "$modules"
  quiet swiftc "${flags[@]}" -wmo -module-name ArgumentParserToolInfo -emit-module -emit-module-path "$modules/ArgumentParserToolInfo.swiftmodule" \
    -c "$sources"/ArgumentParserToolInfo/*.swift -o "$modules/ArgumentParserToolInfo.o"
  mapfile -d '' files < <(find "$sources/ArgumentParser" -name '*.swift' -print0)
  quiet swiftc "${flags[@]}" -wmo -module-name ArgumentParser -I "$modules" -emit-module -emit-module-path "$modules/ArgumentParser.swiftmodule" \
    -c "${files[@]}" -o "$modules/ArgumentParser.o"
fi
# baton's parsers (BatonCore and BatonCommandLine, as one module) and the targets.
if [ ! -x "$binary" ] || [ -n "$(find Sources/BatonCore Sources/BatonCommandLine Fuzz/Targets -newer "$binary" -name '*.swift' | head -1)" ]; then
  quiet swiftc "${flags[@]}" -module-name BatonCore -I "$modules" -suppress-warnings \
    Sources/BatonCore/*.swift Sources/BatonCommandLine/*.swift Fuzz/Targets/Fuzz.swift \
    "$modules/ArgumentParser.o" "$modules/ArgumentParserToolInfo.o" -o "$binary"
fi
# Each target is one single-threaded libFuzzer process: they run at once (two cores here), each printing its
# result when all are done, in the order given.
fuzz_one() {
  local target=$1 corpus="Fuzz/corpus/$1" work dirs start execs
  mkdir -p "$corpus"
  work=$(mktemp -d)
  # The short form explores from the committed corpus without changing it.
  if [ "$long" = 1 ]; then dirs=("$corpus"); else dirs=("$work" "$corpus"); fi
  start=$(date +%s)
  if SWIFT_BACKTRACE=enable=no BATON_FUZZ_TARGET=$target "$binary" -runs="$runs" -max_len=8192 -artifact_prefix="Fuzz/crashes/$target-" \
      -print_final_stats=1 "${dirs[@]}" >"$work/log" 2>&1; then
    execs=$(grep -o 'number_of_executed_units: *[0-9]*' "$work/log" | grep -o '[0-9]*$')
    echo "fuzz $target: $execs executions, 0 crashes, $(( $(date +%s) - start ))s, corpus $(ls "$corpus" | wc -l) inputs"
    rm -rf "$work"
  else
    echo "fuzz $target: CRASH (input in Fuzz/crashes/)"; tail -30 "$work/log"; rm -rf "$work"; return 1
  fi
}
results=$(mktemp -d)
pids=()
for target in "${targets[@]}"; do
  fuzz_one "$target" >"$results/$target" 2>&1 &
  pids+=($!)
done
status=0
ok=0
for i in "${!targets[@]}"; do
  if wait "${pids[i]}"; then ok=$((ok + 1)); else status=1; fi
  cat "$results/${targets[i]}"
done
rm -rf "$results"
echo "fuzz: $ok passed, $((${#targets[@]} - ok)) failed"
exit $status
