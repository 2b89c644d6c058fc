#!/usr/bin/env bash
# baton's test command. Installs what it needs, then runs every stage and ends with one line
# "tests: N passed, M failed" (a stage that cannot count its checks counts as one):
#   format      swift-format lint (.swift-format: swift-nio's, 4 spaces, 120 columns) over every Swift file
#   swift       unit tests (the lifecycle state machine, parsers) without processes; system tests with real
#               processes and sockets; end to end: the example Node and Python apps under load across reloads
#   fuzz        the parsers under libFuzzer, short form (Fuzz/run.sh --long for 10 million runs each)
#   tsan, asan  the unit and system tests again under ThreadSanitizer and AddressSanitizer
#   package     baton's .deb (packaging/build-deb.sh) and lintian; its binary is the one the next stages install
#   systemd     a real systemd (Debian 12 and 13 in systemd-nspawn): socket activation, reloads, watchdog, fd store
#   upgrade     Debian packages: apt upgrades of an app and of baton itself under load
# They run in the order format, swift, package, then systemd and upgrade in the background beside fuzz, tsan and
# asan (the container stages leave most of the machine idle). STAGES="swift fuzz" runs only those.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh || exit 1
# A python3 on PATH that is a shim (pyenv's is a bash script that runs `pyenv exec`: three processes and ~0.1 s of CPU
# per start, several seconds on a loaded machine) is replaced, for the tests, by the interpreter it runs.
python_bin=$(python3 -c 'import os, sys; print(os.path.dirname(sys.executable))') && [ -n "$python_bin" ] &&
  export PATH="$python_bin:$PATH"
STAGES=${STAGES:-format swift fuzz tsan asan package systemd upgrade}
passed=0
failed=0
failures=()
log=$(mktemp -d)
trap 'rm -rf "$log"' EXIT

# busy_ticks: the machine's busy time so far, in clock ticks (/proc/stat: all but idle and iowait), every process
# counted, also those in containers, which a stage's own rusage does not see.
busy_ticks() {
  local _ user nice system idle iowait irq softirq steal
  read -r _ user nice system idle iowait irq softirq steal _ </proc/stat
  echo $((user + nice + system + irq + softirq + steal))
}
# Runs one stage, echoing its output, and adds its counts from a closing "N passed, M failed" line (the Swift
# stages print theirs from each share's Swift Testing summary: swift_shares).
stage() {
  local name=$1
  shift
  case " $STAGES " in *" $name "*) ;; *) return 0 ;; esac
  echo "=== $name: $*"
  local start=$SECONDS busy0
  busy0=$(busy_ticks)
  "$@" 2>&1 | tee "$log/$name"
  local status=${PIPESTATUS[0]}
  local counts p f
  counts=$(grep -aE '^([a-z]+: )?[0-9]+ passed, [0-9]+ failed' "$log/$name" | tail -1)
  if [ -n "$counts" ]; then
    p=$(sed -E 's/^([a-z]+: )?([0-9]+) passed.*/\2/' <<<"$counts")
    f=$(sed -E 's/.* ([0-9]+) failed.*/\1/' <<<"$counts")
  elif [ "$status" = 0 ]; then p=1 f=0; else p=0 f=1; fi
  if [ "$status" != 0 ] && [ "$f" = 0 ]; then f=1; fi
  passed=$((passed + p))
  failed=$((failed + f))
  [ "$status" = 0 ] || failures+=("$name")
  local hz wall=$((SECONDS - start)) busy
  hz=$(getconf CLK_TCK)
  busy=$((($(busy_ticks) - busy0) / hz))
  # How much of the machine the stage kept busy (every process on it, CPU seconds against wall seconds): less than
  # the machine's cores is waiting.
  echo "=== $name: exit $status, $p passed, $f failed, ${wall}s (cpu ${busy}s, $((wall > 0 ? busy * 100 / wall : 0))% of a core)"
}

# The Swift tests run as several test processes at once (SWIFT_SHARDS, default 3), each with a share of the
# suites and ports of its own (BATON_TEST_PORTS): the tests mostly wait for the processes and clients they start,
# and one test process runs only as many tests at a time as the machine has cores (Swift's concurrency pool), so
# that one process alone left a core idle half of the time. Every test is in exactly one share: the last is
# "none of the others". The test binary is run directly (`swift test` locks the scratch path for one at a time).
shares=(
  'BatonSystemTests\.(ChaosTests|AdoptBindTests|ListenerIntegrityTests|IdleTests|HostileWorkerTests|ReexecTests)/'
  'BatonSystemTests\.(RescueTests/clientsOfAnUnmodifiedPython|OperatorTests/|ControlAndErrorTests/|FloodTests/|SecurityTests/|MetricsTests/|SpawnTests/)'
)
# swift_counts LOG STATUS: "PASSED FAILED" from Swift Testing's closing line in LOG and the run's exit STATUS.
swift_counts() {
  local line n f
  line=$(grep -aE 'Test run with [0-9]+ tests? .*(passed|failed)' "$1" | tail -1)
  [ -n "$line" ] || { echo "0 1"; return; }
  n=$(sed -E 's/.*Test run with ([0-9]+) test.*/\1/' <<<"$line")
  if [ "$2" = 0 ]; then echo "$n 0"; return; fi
  f=$(grep -aE '^✘ Test .* failed after' "$1" | grep -avE 'with [0-9]* test cases|^✘ Test run with' | grep -ac . || true)
  [ "$f" -gt 0 ] || f=1
  echo "$(( n > f ? n - f : 0 )) $f"
}
# swift_shares BIN_DIR ARG...: the tests of BIN_DIR's test bundle in shares at once, with ARGs (--skip ...); prints
# each share's output when it ends and a closing line "swift: N passed, M failed"; fails if any share failed.
swift_shares() {
  local bin=$1 k count=${SWIFT_SHARDS:-3} pids=() p f passed=0 failed=0 rc=0 status
  shift
  local dir; dir=$(mktemp -d)
  for ((k = 0; k < count; k++)); do
    local select=()
    if ((k < count - 1)); then select=(--filter "${shares[k]}"); else
      local j; for ((j = 0; j < count - 1; j++)); do select+=(--skip "${shares[j]}"); done
    fi
    NO_COLOR=1 BATON_TEST_PORTS=$((20000 + k * 3000))-$((22999 + k * 3000)) \
      "$bin/batonPackageTests.xctest" --testing-library swift-testing "${select[@]}" "$@" >"$dir/$k" 2>&1 &
    pids+=($!)
  done
  for ((k = 0; k < count; k++)); do
    wait "${pids[k]}"; status=$?
    echo "--- swift tests, share $((k + 1)) of $count: exit $status"
    cat "$dir/$k"
    read -r p f < <(swift_counts "$dir/$k" "$status")
    passed=$((passed + p)) failed=$((failed + f))
    [ "$status" = 0 ] || rc=1
  done
  rm -rf "$dir"
  echo "swift: $passed passed, $failed failed"
  return "$rc"
}
(( ${SWIFT_SHARDS:-3} >= 1 && ${SWIFT_SHARDS:-3} <= ${#shares[@]} + 1 )) ||
  { echo "SWIFT_SHARDS=${SWIFT_SHARDS}: give 1 to $((${#shares[@]} + 1))"; exit 64; }

# The bind-adoption library goes beside the baton under test, which looks for it next to its executable.
swift_tests() {
  swift build --build-tests && bash preload/build.sh "$(swift build --show-bin-path)" >/dev/null &&
    swift_shares "$(swift build --show-bin-path)"
}
sanitized() {
  local sanitizer=$1 bin
  # Leaks are checked in every baton process the tests start (and reported as a failure), not in the runner.
  swift build --build-tests --sanitize="$sanitizer" --scratch-path ".build-$2" &&
    bin=$(swift build --show-bin-path --scratch-path ".build-$2") && bash preload/build.sh "$bin" >/dev/null &&
    BATON_TEST_SANITIZER=$sanitizer ASAN_OPTIONS=detect_leaks=0 BATON_TEST_CHILD_ASAN_OPTIONS=detect_leaks=1:exitcode=23 \
      swift_shares "$bin" --skip EndToEndTests --skip ChaosTests
}

# Every Swift file is formatted as `swift format -i -r Sources Tests Fuzz/Targets Package.swift` leaves it.
format_lint() { swift format lint --strict --parallel -r Sources Tests Fuzz/Targets Package.swift; }
package() {
  local deb
  deb=$(bash packaging/build-deb.sh) || return 1
  bash scripts/deps.sh lintian:lintian
  lintian --fail-on error,warning "$deb"
}
# The container stages keep the machine less than half busy (booting, waiting on their units: about 0.8 of a core),
# so they run beside the next stages, one after the other in a background job whose output is shown, and whose
# counts are added, when it has ended (join_background). Every stage's "cpu" figure is the whole machine's, so the
# figures of stages that overlap include each other's.
containers() {
  # Build once: the container stages install the binary and the package built by the package stage.
  local deb
  deb=$(ls -t out/baton_*_*.deb 2>/dev/null | head -1)
  stage systemd env BATON_BIN=.build-deb/release/baton bash Tests/system/systemd-tests.sh
  stage upgrade env ${deb:+BATON_DEB=$deb} bash Tests/system/upgrade-tests.sh
}
background=
in_background() {
  ( passed=0 failed=0 failures=(); "$@"; echo "$passed $failed ${failures[*]}" >"$log/background.counts" ) \
    >"$log/background.out" 2>&1 &
  background=$!
}
join_background() {
  [ -n "$background" ] || return 0
  wait "$background"
  echo "=== in the background since the package stage:"
  cat "$log/background.out"
  local p=0 f=1 names=background
  [ -s "$log/background.counts" ] && read -r p f names <"$log/background.counts"
  passed=$((passed + p)) failed=$((failed + f))
  local name
  for name in $names; do failures+=("$name"); done
}

stage format format_lint
stage swift swift_tests
stage package package
in_background containers
stage fuzz bash Fuzz/run.sh
stage tsan sanitized thread tsan
stage asan sanitized address asan
join_background

# What failed, named again at the end (CI shows only the tail): each failed stage's failing tests and issues.
for name in "${failures[@]}"; do
  echo "--- $name: what failed"
  grep -saE '^(✘ |not ok )' "$log/$name" | grep -av 'with [0-9]* test cases' | cut -c1-400 | head -40
done
[ ${#failures[@]} -eq 0 ] || echo "failed stages: ${failures[*]}"
echo "tests: $passed passed, $failed failed"
[ "$failed" = 0 ] && [ ${#failures[@]} -eq 0 ]
