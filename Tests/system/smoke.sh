#!/usr/bin/env bash
# smoke.sh - smoke test of the systemd container rig (rig.sh) on Debian 12 and 13.
#
# Usage: Tests/system/smoke.sh        (as root)
#
# Builds, or reuses, one rootfs per suite under $RIG_CACHE, boots one container per suite,
# and checks inside each:
#   - the systemd version (bookworm 252, trixie 257),
#   - a transient service (systemd-run --wait --pipe),
#   - socket activation: a .socket unit plus a python3 HTTP service that takes the
#     listening socket as fd 3, fetched with curl from inside the container.
# Prints the time of each phase (debootstrap, boot, checks, teardown), checks that the
# teardown left no process, cgroup or mount behind, and ends with "smoke: N passed, N failed".
# The containers are always torn down on exit (trap).
#
# Environment:
#   RIG_CACHE     where the rootfs trees live, default /var/cache/baton-rig (SUITE/ each)
#   RIG_SUITES    suites to test, default "bookworm trixie"
#   RIG_PARALLEL  1 (default): run each phase for all suites at once; 0: one after another

set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
rig=$here/rig.sh
# shellcheck source=Tests/system/lib.sh
source "$here/lib.sh"
cache=${RIG_CACHE:-/var/cache/baton-rig}
parallel=${RIG_PARALLEL:-1}
read -r -a suites <<<"${RIG_SUITES:-bookworm trixie}"
declare -A expect_systemd=([bookworm]=252 [trixie]=257)

[[ $(id -u) == 0 ]] || { echo "smoke: must run as root" >&2; exit 1; }

work=$(mktemp -d /tmp/baton-smoke.XXXXXX)
names=()     # containers that may be running; "rig.sh stop" is idempotent
jobs_running=()

name_of() { echo "smoke-$1-$$"; }

cleanup() {
    local rc=$? n
    trap - EXIT INT TERM
    stop_jobs_and_containers || rc=1
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM


# run_phase PHASE FUNC: FUNC SUITE for every suite (at once unless RIG_PARALLEL=0).
# Each runs as a background job, so that "set -e" holds inside FUNC; its output is
# printed afterwards, prefixed with the suite. Records the phase's wall time, and its
# status in phase_rc (run_phase itself is never called as a condition: that would turn
# "set -e" off inside the jobs too).
declare -A phase_ms=() suite_ms=() phase_rc=()
run_phase() {
    local phase=$1 fn=$2 s i rc=0 start pids=()
    echo "$phase: ${suites[*]}..."
    start=$(now_ms)
    for s in "${suites[@]}"; do
        ( local t0; t0=$(now_ms); "$fn" "$s"; echo $(($(now_ms) - t0)) >"$work/ms.$phase.$s" ) \
            >"$work/out.$phase.$s" 2>&1 &
        pids+=($!); jobs_running=("${pids[@]}")
        if ! ((parallel)); then wait "$!" || rc=1; fi
    done
    for i in "${!suites[@]}"; do
        wait "${pids[$i]}" 2>/dev/null || rc=1
    done
    jobs_running=()
    phase_ms[$phase]=$(($(now_ms) - start))
    for s in "${suites[@]}"; do
        sed "s/^/  [$s] /" "$work/out.$phase.$s"
        suite_ms[$phase.$s]=$(cat "$work/ms.$phase.$s" 2>/dev/null || echo -1)
    done
    echo "$phase: done in $(secs "${phase_ms[$phase]}")s"
    phase_rc[$phase]=$rc
}

# ------------------------------------------------------------------------------ phases

do_rootfs() {
    local s=$1
    if [[ -e $cache/$s/.rig-complete ]]; then
        echo "reusing $cache/$s ($(grep '^systemd=' "$cache/$s/.rig-complete"))"
    else
        "$rig" rootfs "$s" "$cache/$s"
        echo "built $cache/$s"
    fi
}

do_boot() {
    "$rig" boot "$(name_of "$1")" "$cache/$1" "$work/opt"
    echo "booted $(name_of "$1"): $("$rig" status "$(name_of "$1")")"
}

# A test service for socket activation: python3 takes the listening socket from systemd
# (fd 3, LISTEN_FDS=1) and answers HTTP.
write_test_files() {
    mkdir -p "$work/opt"
    cat >"$work/opt/serve.py" <<'EOF'
import os, socket
assert os.environ.get("LISTEN_FDS") == "1", "no socket passed"
assert int(os.environ["LISTEN_PID"]) == os.getpid(), "socket is for another process"
srv = socket.socket(fileno=3)
while True:
    conn, _ = srv.accept()
    with conn:
        req = b""
        while b"\r\n\r\n" not in req:
            chunk = conn.recv(4096)
            if not chunk:
                break
            req += chunk
        body = b"hello from socket activation, pid %d\n" % os.getpid()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
EOF
    cat >"$work/opt/smoke-hello.socket" <<'EOF'
[Unit]
Description=smoke test socket

[Socket]
ListenStream=127.0.0.1:8080
EOF
    cat >"$work/opt/smoke-hello.service" <<'EOF'
[Unit]
Description=smoke test service, started by its socket

[Service]
ExecStart=/usr/bin/python3 /opt/test/serve.py
EOF
}

do_checks() {
    local s=$1 n line version out state
    n=$(name_of "$s")
    inside() { "$rig" exec "$n" "$@"; }

    line=$(inside systemctl --version | sed -n 1p)
    version=$(awk '{print $2}' <<<"$line")
    echo "$line"
    if [[ -n ${expect_systemd[$s]:-} && $version != "${expect_systemd[$s]}" ]]; then
        echo "FAIL: expected systemd ${expect_systemd[$s]}, found $version"; return 1
    fi
    echo "node $(inside node --version), $(inside python3 --version)"

    out=$(inside systemd-run --wait --pipe --quiet /bin/echo transient-ok)
    [[ $out == transient-ok ]] || { echo "FAIL: systemd-run --pipe printed '$out'"; return 1; }
    inside systemd-run --wait --quiet /bin/true
    echo "transient service: ok"

    inside sh -ec 'cp /opt/test/smoke-hello.socket /opt/test/smoke-hello.service /run/systemd/system/
               systemctl daemon-reload
               systemctl start smoke-hello.socket'
    state=$(inside systemctl is-active smoke-hello.service) || true
    [[ $state == inactive ]] || { echo "FAIL: service is '$state' before any connection"; return 1; }
    out=$(inside curl -fsS --max-time 10 http://127.0.0.1:8080/)
    [[ $out == "hello from socket activation"* ]] || { echo "FAIL: curl got '$out'"; return 1; }
    inside systemctl is-active --quiet smoke-hello.service ||
        { echo "FAIL: service not active after the connection"; return 1; }
    echo "socket activation: ok ($out)"
}

do_stop() {
    "$rig" stop "$(name_of "$1")"
}

# Nothing of ours may survive the teardown: no nspawn, no cgroup, no mount.
check_leftovers() {
    local bad=0 n
    for n in "${names[@]}"; do
        if pgrep -f -- "-M $n " >/dev/null; then echo "FAIL: process of $n still running"; bad=1; fi
        if compgen -G "/sys/fs/cgroup/*/baton-rig-$n" >/dev/null ||
           [[ -e /sys/fs/cgroup/baton-rig-$n ]]; then
            echo "FAIL: cgroup of $n left behind"; bad=1
        fi
    done
    if findmnt -rn -o TARGET | grep -qF "$cache"; then
        echo "FAIL: mounts under $cache left behind"; bad=1
    fi
    return "$bad"
}

# -------------------------------------------------------------------------------- main

passed=0 failed=0
count() { if (($1 == 0)); then passed=$((passed + 1)); else failed=$((failed + 1)); fi; }

"$rig" deps
write_test_files
for s in "${suites[@]}"; do names+=("$(name_of "$s")"); done

run_phase debootstrap do_rootfs
((phase_rc[debootstrap] == 0)) || { echo "smoke: rootfs failed"; exit 1; }
run_phase boot do_boot
((phase_rc[boot] == 0)) || { echo "smoke: boot failed"; exit 1; }
run_phase checks do_checks
count "${phase_rc[checks]}"
run_phase teardown do_stop
count "${phase_rc[teardown]}"
leftovers=0
check_leftovers || leftovers=1
count "$leftovers"
names=()

echo
header=$(printf '%-12s %6s' "timings (s)" "total")
for s in "${suites[@]}"; do header+=$(printf ' %8s' "$s"); done
echo "$header"
for phase in debootstrap boot checks teardown; do
    row=$(printf '%-12s %6s' "$phase" "$(secs "${phase_ms[$phase]}")")
    for s in "${suites[@]}"; do row+=$(printf ' %8s' "$(secs "${suite_ms[$phase.$s]}")"); done
    echo "$row"
done
echo "(total: the phase's wall time; RIG_PARALLEL=$parallel)"
du -sh "${suites[@]/#/$cache/}" 2>/dev/null | sed 's/^/rootfs size: /'
echo "smoke: $passed passed, $failed failed"
((failed == 0))
