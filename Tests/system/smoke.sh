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
# Each suite's checks are one check ("ok - SUITE rig: ..." or "not ok - ..." with its
# transcript). Prints the time of each phase (rootfs, boot, checks, teardown), checks that the
# teardown left no process, cgroup or mount behind, and ends with "smoke: N passed, M failed".
# The containers are always torn down on exit (trap). The harness is lib.sh's.
#
# Environment:
#   RIG_CACHE     where the rootfs trees live, default /var/cache/baton-rig (SUITE/ each)
#   RIG_SUITES    suites to test, default "bookworm trixie"
#   RIG_PARALLEL  1 (default): run each phase for all suites at once; 0: one after another

set -euo pipefail

# shellcheck source=Tests/system/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
declare -A expect_systemd=([bookworm]=252 [trixie]=257)
rig_start smoke smoke

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

check_title[rig]="systemd version, transient service, socket activation"
check_rig() {
    local line version out state
    inside() { "$rig" exec "$NAME" "$@"; }

    line=$(inside systemctl --version | sed -n 1p)
    version=$(awk '{print $2}' <<<"$line")
    note "$line"
    if [[ -n ${expect_systemd[$SUITE]:-} && $version != "${expect_systemd[$SUITE]}" ]]; then
        fail "expected systemd ${expect_systemd[$SUITE]}, found $version"
    fi
    note "node $(inside node --version), $(inside python3 --version)"

    out=$(inside systemd-run --wait --pipe --quiet /bin/echo transient-ok)
    [[ $out == transient-ok ]] || fail "systemd-run --pipe printed '$out'"
    inside systemd-run --wait --quiet /bin/true
    note "transient service: ok"

    inside sh -ec 'cp /opt/test/smoke-hello.socket /opt/test/smoke-hello.service /run/systemd/system/
               systemctl daemon-reload
               systemctl start smoke-hello.socket'
    state=$(inside systemctl is-active smoke-hello.service) || true
    [[ $state == inactive ]] || fail "service is '$state' before any connection"
    out=$(inside curl -fsS --max-time 10 http://127.0.0.1:8080/)
    [[ $out == "hello from socket activation"* ]] || fail "curl got '$out'"
    inside systemctl is-active --quiet smoke-hello.service ||
        fail "service not active after the connection"
    note "socket activation: ok ($out)"
}
check_suite() { check "$1" rig; }

# -------------------------------------------------------------------------------- main

no_setup() { :; }

write_test_files
rootfs_phase
if ((phase_rc)); then record "not ok" all rootfs 0; summary smoke; exit 1; fi
boot_phase no_setup
if ((${#booted[@]})); then phase checks check_suite "${booted[@]}"; fi
teardown_phase

echo
timings rootfs boot checks teardown
du -sh "${suites[@]/#/$cache/}" 2>/dev/null | sed 's/^/rootfs size: /'
summary smoke
