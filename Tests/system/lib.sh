# shellcheck shell=bash disable=SC2154,SC2034
# The harness of the container scripts (smoke.sh, systemd-tests.sh, upgrade-tests.sh); source it, don't run it.
#
#   rig_start SCRIPT PREFIX   the root check, rig.sh deps, the work directory $work, the trap that ends every
#                             job and stops every container on exit
#   phase NAME FN [SUITE...]  FN SUITE for every suite, timed (status in $phase_rc)
#   step NAME CMD...          CMD on the host, timed (status in $step_rc)
#   rootfs_phase, boot_phase FN   the root file systems; boot and FN SUITE (the set-up), into $booted
#   check SUITE ID            runs check_ID as one check of SUITE and reports it (see below)
#   timings ROW...            a table of the recorded times, one row each, a column per suite
#   summary LABEL             the line "LABEL: N passed, M failed"; fails if any failed
#
# Settings read here (the environment):
#   RIG_CACHE      rootfs trees, default /var/cache/baton-rig (SUITE/ each; built if missing)
#   RIG_SUITES     suites, default "bookworm trixie"
#   RIG_PARALLEL   1 (default): the suites run at once; 0: one after another
#
# Results and times go to $work/results, one line each, "STATUS<TAB>SUITE<TAB>ID<TAB>MS", STATUS being
# ok, not ok, skip or time (a phase's or a suite's step); summary counts them.

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
rig=$here/rig.sh
cache=${RIG_CACHE:-/var/cache/baton-rig}
parallel=${RIG_PARALLEL:-1}
read -r -a suites <<<"${RIG_SUITES:-bookworm trixie}"
names=()          # containers that may be running ("rig.sh stop" is idempotent)
jobs_running=()   # background jobs to end on exit
phase_running=""  # the phase under way, whose output is still in $work
booted=()         # the suites whose container is up and set up (boot_phase)
declare -A check_title=()

# MESSAGE_IDs of baton's events, from systemd/baton.catalog: mid SUBJECT prints the id of the entry whose
# Subject: line matches SUBJECT (an awk regular expression, e.g. 'baton: reload of .* failed$').
mid() {
    local id
    id=$(awk -v want="$1" '/^-- [0-9a-f]+$/ && length($2) == 32 { id = $2 } /^Subject: / && id != "" && $0 ~ want { print id; exit }' \
        "$repo/systemd/baton.catalog")
    [[ -n $id ]] || { echo "lib.sh: no entry in systemd/baton.catalog whose Subject matches '$1'" >&2; return 1; }
    echo "$id"
}

# rig_start SCRIPT PREFIX: root, or exit; the work directory; containers are named PREFIX-SUITE-PID.
rig_start() {
    script=$1 prefix=$2
    [[ $(id -u) == 0 ]] || { echo "$script: must run as root" >&2; exit 1; }
    work=$(mktemp -d "/tmp/baton-$script.XXXXXX")
    results=$work/results lock=$work/lock
    : >"$results"
    t_all=$(now_ms)
    "$rig" deps
    record time all deps $(($(now_ms) - t_all))
    exec 5>&1   # the script's stdout, where a check's report goes at once (a phase buffers the rest)
    trap rig_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

name_of() { echo "$prefix-$1-$$"; }

rig_cleanup() {
    local rc=$? s
    trap - EXIT INT TERM
    stop_jobs_and_containers || rc=1
    if [[ -n ${phase_running:-} ]]; then   # interrupted: show what the suites got through
        for s in "${phase_on[@]}"; do
            echo "-- [$s] $phase_running (interrupted)"
            cat "$work/phase.$phase_running.$s" 2>/dev/null
        done
    fi
    rm -rf "$work"
    exit "$rc"
}

# SIGTERM a process and its descendants, children first found, by PID.
kill_tree() {
    local child
    for child in $(pgrep -P "$1" 2>/dev/null); do kill_tree "$child"; done
    kill -TERM "$1" 2>/dev/null || true
}

# Ends the running jobs (a boot in progress too), then stops every container; returns 1 if a stop failed.
stop_jobs_and_containers() {
    local pid n rc=0
    for pid in "${jobs_running[@]}"; do kill_tree "$pid"; done
    for pid in "${jobs_running[@]}"; do wait "$pid" 2>/dev/null || true; done
    for n in "${names[@]}"; do "$rig" stop "$n" 2>/dev/null || rc=1; done
    return "$rc"
}

now_ms() { local t=${EPOCHREALTIME//[!0-9]/}; echo $((t / 1000)); }
secs() { printf '%d.%d' $(($1 / 1000)) $(($1 % 1000 / 100)); }

# record STATUS SUITE ID MS: one line of $results, under the lock (the suites' jobs write at once).
record() { { flock 9; printf '%s\t%s\t%s\t%s\n' "$@" >>"$results"; } 9>>"$lock"; }

# ------------------------------------------------------------------------------------------ phases

# phase NAME FN [SUITE...]: FN SUITE for each SUITE (default: every suite), each a background job (so that
# the script's "set -e" holds inside), at once unless RIG_PARALLEL=0. Their output is printed once all are
# done, each line prefixed with its suite. Records the phase's time (suite "all") and each suite's; sets
# phase_rc to 1 if any failed. (Never call it as a condition: that would turn "set -e" off in the jobs.)
phase() {
    local name=$1 fn=$2 s pid t0 pids=() others=("${jobs_running[@]}")
    shift 2
    local on=("$@")
    ((${#on[@]})) || on=("${suites[@]}")
    phase_rc=0 phase_running=$name phase_on=("${on[@]}")
    echo "== $name: ${on[*]}"
    t0=$(now_ms)
    for s in "${on[@]}"; do
        (
            t1=$(now_ms)
            trap 'record time "$s" "$name" $(($(now_ms) - t1))' EXIT
            "$fn" "$s"
        ) >"$work/phase.$name.$s" 2>&1 &
        pids+=($!); jobs_running=("${others[@]}" "${pids[@]}")
        if ! ((parallel)); then wait "$!" || phase_rc=1; fi
    done
    if ((parallel)); then
        for pid in "${pids[@]}"; do wait "$pid" || phase_rc=1; done
    fi
    jobs_running=("${others[@]}")
    record time all "$name" $(($(now_ms) - t0))
    for s in "${on[@]}"; do sed "s/^/[$s] /" "$work/phase.$name.$s"; done
    phase_running=""
    echo "== $name: $(secs $(($(now_ms) - t0)))s"
}

# step NAME CMD...: CMD on the host, in this shell (what it sets stays), timed as phase NAME; sets step_rc.
step() {
    local name=$1 t0
    shift
    echo "== $name"
    t0=$(now_ms)
    step_rc=0
    "$@" || step_rc=$?
    record time all "$name" $(($(now_ms) - t0))
    echo "== $name: $(secs $(($(now_ms) - t0)))s"
}

# The root file system of every suite, built once into $cache/SUITE (phase "rootfs").
rootfs_of() {
    local s=$1
    if [[ -e $cache/$s/.rig-complete ]]; then
        echo "reusing $cache/$s ($(grep '^systemd=' "$cache/$s/.rig-complete"))"
    else
        "$rig" rootfs "$s" "$cache/$s"
        echo "built $cache/$s"
    fi
}
rootfs_phase() { phase rootfs rootfs_of; }

# boot_phase SETUP: boots every suite's container (phase "boot"), with bind_of SUITE (a function of the
# script's; default $work/opt) at /opt/test, then runs SETUP SUITE in it. The suites that came up and were
# set up go into $booted; each other one is a failed check "SUITE setup".
bind_of() { echo "$work/opt"; }
boot_one() {
    local s=$1 ct out
    ct=$(name_of "$s")
    if out=$("$rig" boot "$ct" "$cache/$s" "$(bind_of "$s")" 2>&1); then
        printf '%s\n' "$out" | sed '/^$/d'
        echo "booted $ct: $("$rig" status "$ct")"
    else
        printf '%s\n' "$out"
        return 1
    fi
    "$boot_setup" "$s" && touch "$work/booted.$s"
}
boot_phase() {
    local s
    boot_setup=$1
    for s in "${suites[@]}"; do names+=("$(name_of "$s")"); done
    phase boot boot_one
    booted=()
    for s in "${suites[@]}"; do
        if [[ -e $work/booted.$s ]] && "$rig" status "$(name_of "$s")" >/dev/null; then
            booted+=("$s")
        else
            echo "not ok - $s setup: boot and set-up (see [$s] above)"
            record "not ok" "$s" setup 0
        fi
    done
}

# Stops every suite's container (phase "teardown"), then checks (host teardown) that nothing of them is
# left: no nspawn, no cgroup, no mount.
stop_one() { "$rig" stop "$(name_of "$1")"; }
teardown_phase() {
    phase teardown stop_one
    teardown_rc=$phase_rc
    check host teardown
    names=()
}
check_title[teardown]="every container stopped; no process, cgroup or mount left"
check_teardown() {
    local n
    ((teardown_rc == 0)) || fail "rig.sh stop failed (see [SUITE] under == teardown)"
    for n in "${names[@]}"; do
        if pgrep -f -- "-M $n " >/dev/null; then fail "process of $n still running"; fi
        if compgen -G "/sys/fs/cgroup/*/baton-rig-$n" >/dev/null || [[ -e /sys/fs/cgroup/baton-rig-$n ]]; then
            fail "cgroup of $n left behind"
        fi
    done
    if findmnt -rn -o TARGET | grep -qF -e "$cache" -e "$work"; then fail "mounts under $cache or $work left behind"; fi
}

# ------------------------------------------------------------------------------------------ checks
#
# check SUITE ID: runs check_ID (titled ${check_title[ID]}) in a subshell of its own, as a background job
# killed after $check_timeout seconds (0: no limit). Inside it, $SUITE is the suite and $NAME its container;
# stdout and stderr are the check's transcript, shown if it fails; `note TEXT` is a line shown in any case,
# `fail TEXT` an assertion that failed, `transcript TITLE FILE [LINES]` the tail of a command's output for
# the transcript. With check_strict=1 the check runs under "set -e" and ends at its first fail; with 0 it
# goes on (and fails at the end). A check that prints "SKIP: WHY" is a skip, not counted. The report, a
# block "ok - SUITE ID: TITLE (time)" or "not ok - ..." with the notes or with the failures, the transcript
# and check_diagnostics SUITE ID (the script's, if it has one), is printed at once, whole.
check_timeout=0
check_strict=1
SUITE="" NAME=""    # in a check: its suite and that suite's container

note() { printf '%s\n' "$*"; printf '%s\n' "$*" >&3; }
fail() {
    printf '%s\n' "$*" >&4
    printf 'FAIL: %s\n' "$*" >&2   # stderr: seen from inside $(...) too
    if ((check_strict)); then exit 1; fi
}
transcript() {
    printf '%s (last %d lines):\n' "$1" "${3:-25}"
    tail -n "${3:-25}" "$2" | tr -d '\r' | sed 's/^/  | /'
}

check() {
    local s=$1 id=$2 t0 ms rc=0 pid killer skip="" status d=$work/check.$1.$2 SUITE=$1 NAME
    NAME=$(name_of "$1")
    t0=$(now_ms)
    : >"$d.failed"
    (
        if ((check_strict)); then
            set -eE
            trap 'echo "(check ended by: $BASH_COMMAND, status $?)"' ERR
        fi
        trap 'exit 143' TERM    # at the time limit: still run the check's EXIT trap (cleanup)
        "check_$id"
        exit 0      # (with check_strict=0, what the check's last command returned does not count)
    ) >"$d.log" 2>&1 3>"$d.notes" 4>>"$d.failed" &
    pid=$!
    if ((check_timeout > 0)); then
        # Cancelled with SIGTERM, on which it ends its sleep and exits 0 (a job killed by a signal would
        # have bash print "Terminated").
        (
            trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
            sleep "$check_timeout" & sleeper=$!
            wait "$sleeper"
            echo "TIMEOUT after ${check_timeout}s" >>"$d.failed"
            kill_tree "$pid"
        ) &
        killer=$!
    fi
    wait "$pid" || rc=$?
    if ((check_timeout > 0)); then
        kill -TERM "$killer" 2>/dev/null || true
        wait "$killer" || true
    fi
    ms=$(($(now_ms) - t0))
    if ((rc != 0)) && ! [[ -s $d.failed ]]; then echo "ended with status $rc" >>"$d.failed"; fi
    if [[ -s $d.failed ]]; then status="not ok"
    elif grep -q '^SKIP: ' "$d.log"; then status=skip skip=" # SKIP $(sed -n 's/^SKIP: //p' "$d.log")"
    else status=ok; fi
    {
        echo "${status/skip/ok} - $s $id: ${check_title[$id]:-} ($(secs "$ms")s)$skip"
        if [[ $status == "not ok" ]]; then
            sed 's/^/FAILED: /' "$d.failed"
            echo "--- transcript"
            cat "$d.log"
            if declare -F check_diagnostics >/dev/null; then check_diagnostics "$s" "$id" 2>&1; fi
        else
            cat "$d.notes"
        fi
    } >"$d.report"
    { flock 9; sed '2,$s/^/#   /' "$d.report" >&5; } 9>>"$lock"
    record "$status" "$s" "$id" "$ms"
}

# ------------------------------------------------------------------------------------------ the end

# timings ROW...: a table of the times recorded under each ROW (a phase or a check) that has any, a column
# per suite, "-" where none; a check that failed is marked "FAIL", a skip "SKIP". Then the phases' wall times.
timings() {
    local row s line v any
    line=$(printf '%-10s' "(s)")
    for s in "${suites[@]}"; do line+=$(printf ' %14s' "$s"); done
    echo "$line"
    for row in "$@"; do
        line=$(printf '%-10s' "$row") any=0
        for s in "${suites[@]}"; do
            v=$(awk -F'\t' -v s="$s" -v r="$row" '$2 == s && $3 == r {
                    printf "%d.%d%s", $4 / 1000, ($4 % 1000) / 100, $1 == "not ok" ? " FAIL" : $1 == "skip" ? " SKIP" : "" }' \
                "$results")
            [[ -z $v ]] || any=1
            line+=$(printf ' %14s' "${v:--}")
        done
        if ((any)); then echo "$line"; fi
    done
    awk -F'\t' '$1 == "time" && $2 == "all" { printf "phase %-10s %6d.%ds\n", $3, $4 / 1000, ($4 % 1000) / 100 }' "$results"
    echo "total: $(secs $(($(now_ms) - t_all)))s (RIG_PARALLEL=$parallel)"
}

# summary LABEL [EXPECTED]: "LABEL: N passed, M failed" from $results; with EXPECTED, checks that never
# reported count as failed. Returns non-zero if any failed.
summary() {
    local passed failed
    passed=$(grep -c $'^ok\t' "$results" || true)
    failed=$(grep -c $'^not ok\t' "$results" || true)
    if (($# > 1)) && ((passed + failed < $2)); then
        echo "# $(($2 - passed - failed)) check(s) did not report"
        failed=$(($2 - passed))
    fi
    echo "$1: $passed passed, $failed failed"
    ((failed == 0))
}
