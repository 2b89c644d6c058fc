#!/usr/bin/env bash
# upgrade-tests.sh - package upgrades of an app under baton, on Debian 12 (bookworm, systemd 252)
# and Debian 13 (trixie, systemd 257), each booted as PID 1 of a systemd-nspawn container by
# rig.sh.
#
# Usage: Tests/system/upgrade-tests.sh        (as root)
#
# On the host: builds out/baton_*.deb (packaging/build-deb.sh) if it is missing or older than
# Sources/, systemd/ or packaging/debian/; the next version of baton (0.1.0 -> 0.1.1, for
# checks h and i) from that .deb, without building again: its binary with the version record
# rewritten (tools/set-version.py), its control file, changelog and md5sums to match; and
# the example package myapp (examples/debian-app/) in versions 1.0, 1.1 and a broken 1.2 into
# out/debian-app/ when they are older than their sources; lints them (lintian, when
# installed). Then, in each container (the suites at once),
# these checks, in order, each printing "ok - SUITE X: ..." or "not ok - SUITE X: ..." with
# diagnostics and `journalctl -u myapp -n 50`, the next one running anyway:
#   a  apt-get install baton and myapp 1.0: myapp.socket enabled and active, the service not
#      started before the first connection; curl 127.0.0.1:8080 answers version 1.0
#   b  apt-get install myapp 1.1 under load (loadgen inside: 16 clients, mixed, slow
#      requests): apt succeeds, 0 failed requests, the load spans two generations and ends on
#      the new one, which answers version 1.1; reloaded, not restarted (MainPID unchanged,
#      NRestarts=0)
#   c  apt-get install the broken myapp 1.2 under load: apt fails and its output reports the
#      failed reload and the worker's error; 0 failed requests; version 1.1 keeps serving
#   d  after the failed upgrade: dpkg has myapp 1.2 half-configured (Config-Version 1.1);
#      `dpkg --configure -a` re-runs 1.2's postinst and fails again; `apt-get install
#      --allow-downgrades ./myapp_1.1_all.deb` recovers (installed, 1.1 serving, same MainPID)
#   e  apt-get remove myapp: socket and service inactive (not failed), the service stopped
#      cleanly (Result=success), no baton or node process left
#   f  apt-get purge myapp: nothing left: none of the files `dpkg -L myapp` listed, no
#      symlink to or state of its units, nothing named *myapp* anywhere, no dynamic user
#      left in /run/systemd/dynamic-uid, no path created since boot that baton does not own
#   g  install 1.0 again, with workers slow to start (drop-in STARTUP_MS=3000); upgrade to 1.1
#      while a connection is starting the service: the postinst waits for the start (which
#      read 1.0's files) and then reloads, so 1.1 serves (a reload requested while the
#      service is activating merges into the start job and never runs); then purge
#   h  upgrade baton itself (to the next version: the package under test with the version
#      raised, so another binary file that reports another version) under load, with myapp 1.1 serving (installed again after g's purge): apt
#      succeeds; the launcher re-executes the new /usr/bin/baton in place (the journal's
#      reexecuted event, MESSAGE_ID=...e652); 0 failed requests; same MainPID, NRestarts and
#      workers; `baton status` shows the new version and the same pid; a reload still works
#   i  a re-execution whose binary does not run (/usr/bin/baton replaced by a non-program,
#      SIGUSR2): the journal says "cannot re-execute", same MainPID, still serving; with the
#      binary restored, the next SIGUSR2 re-executes it
# Ends with the check that the teardown left no process, cgroup or mount behind, the timings
# and a line "upgrade: N passed, M failed"; exits non-zero if any check failed. The
# containers are always torn down (trap). The harness is lib.sh's.
#
# To add a check: write a function check_X (see check_a) and its check_title[X], and add X to
# all_checks below. It runs in a subshell of the suite's job ($SUITE, its container $NAME,
# `inside_t SECS CMD...` to run CMD in it, $work/$SUITE bound at /opt/test), with lib.sh's
# fail/note/transcript (a fail does not end the check). Checks run in order and may use what
# earlier ones left in the container or in $work/$SUITE.
#
# Environment:
#   RIG_CACHE      rootfs trees, default /var/cache/baton-rig (SUITE/ each; built if missing)
#   RIG_SUITES     suites, default "bookworm trixie"
#   RIG_PARALLEL   1 (default): the suites run at once; 0: one after another
#   CHECKS         only these checks, e.g. "a b" (default: all; later checks need earlier ones)
#   BATON_DEB      use this baton .deb, never build one
#   UPG_BUILD      0: never (re)build baton's .deb, use the one in out/ as it is

# shellcheck disable=SC2016  # single-quoted $...: dpkg-query fields and scripts run inside
set -uo pipefail

# shellcheck source=Tests/system/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
all_checks=(a b c d e f g h i)
read -r -a checks <<<"${CHECKS:-${all_checks[*]}}"
myapp_out=$repo/out/debian-app
port=8080
check_strict=0      # a failed assertion does not end the check: the next ones need what it goes on to do
REEXEC_ID=$(mid 'baton: .* re-executed its upgraded binary in place$')

rig_start upgrade-tests upg
bind_of() { echo "$work/$1"; }

indent() { sed "s/^/${1:-#   }/"; }
oneline() { tr '\n' ' ' <<<"$1" | sed 's/ $//'; }

inside() { "$rig" exec "$NAME" "$@"; }
# inside_t SECS CMD...: inside, killed after SECS seconds.
inside_t() { local t=$1; shift; timeout -k 5 "$t" "$rig" exec "$NAME" "$@"; }

# On failure: the app's journal.
check_diagnostics() {
    [[ $1 != host ]] || return 0
    echo "journalctl -u myapp -n 50 --no-pager:"
    NAME=$(name_of "$1") inside_t 20 journalctl -u myapp -n 50 --no-pager 2>&1 | indent "  "
}

# ----------------------------------------------------------------------------- helpers

apt_install() { # apt_install LOG ARGS...: apt-get install -y ARGS in /opt/test; its status
    local log=$1; shift
    inside_t 300 sh -c 'cd /opt/test && exec env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"' \
        sh "$@" >"$log" 2>&1
}

# curl_body: the body of GET / (empty if it failed).
curl_body() { inside_t 20 curl -sS --max-time 10 "http://127.0.0.1:$port/" 2>&1; }
version_of() { sed -n 's/.* version \([^ ]*\)$/\1/p' <<<"$1"; }
generation_of() { sed -n 's/^hello from generation \([0-9]*\) .*/\1/p' <<<"$1"; }

prop() { inside_t 20 systemctl show -P "$2" "$1" 2>/dev/null; }   # prop UNIT PROPERTY
state() { inside_t 20 systemctl is-active "$1" 2>/dev/null; }
wait_state() { # wait_state UNIT STATE SECS
    local deadline=$(($(now_ms) + $3 * 1000))
    until [[ $(state "$1") == "$2" ]]; do
        (($(now_ms) < deadline)) || return 1
        sleep 0.2
    done
}

# load_start TAG: loadgen inside the container (16 clients, mixed, every 8th request of a
# client asks for 1500 ms) until /opt/test/TAG.stop exists (at most 180 s).
load_start() {
    local tag=$1 dir=$work/$SUITE
    rm -f "$dir/$tag.stop" "$dir/$tag.json"
    inside_t 240 python3 /opt/test/loadgen.py --url "http://127.0.0.1:$port/" --clients 16 \
        --mode mixed --slow-every 8 --slow-ms 1500 --until-file "/opt/test/$tag.stop" \
        --duration 180 --json "/opt/test/$tag.json" </dev/null >"$dir/$tag.log" 2>&1 &
    load_pid=$!
    sleep 2     # let every client get going
}

# load_stop TAG: stop it, wait for its summary; fails the check on any failed request.
# Sets load_json.
load_stop() {
    local tag=$1 dir=$work/$SUITE
    touch "$dir/$tag.stop"
    wait "$load_pid"
    load_json=$dir/$tag.json
    if [[ ! -s $load_json ]]; then
        fail "loadgen wrote no summary"
        transcript "loadgen output" "$dir/$tag.log"
        return 1
    fi
    note "load: $(json "$load_json" '"ok=%d failed=%d (refused %d, reset %d, eof %d/%d/%d, timeout %d, non2xx %d) generations=%s final=%s" % (d["ok"], d["failed"], d["refused"], d["reset"], d["eof_idle"], d["eof_new"], d["eof_mid"], d["timeout"], d["non2xx"], d["generations"], d["final_generations"])')"
    (($(json "$load_json" 'd["failed"]') == 0)) || fail "$(json "$load_json" 'd["failed"]') failed requests"
    (($(json "$load_json" 'd["ok"]') > 0)) || fail "no request succeeded"
}

# json FILE EXPR: EXPR evaluated with d = the parsed FILE.
json() { python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }

# --------------------------------------------------------------------------------- checks

check_a() {
    local log=$work/$SUITE/a.apt body
    apt_install "$log" "./$baton_deb_name" ./myapp_1.0_all.deb || { fail "apt-get install exited $?"; transcript "apt-get" "$log"; }
    grep -q '^Get:.*http' "$log" && fail "apt-get downloaded something (expected an offline install)"
    [[ $(inside_t 20 systemctl is-enabled myapp.socket 2>&1) == enabled ]] ||
        fail "myapp.socket is $(inside_t 20 systemctl is-enabled myapp.socket 2>&1), not enabled"
    [[ $(state myapp.socket) == active ]] || fail "myapp.socket is $(state myapp.socket), not active"
    [[ $(state myapp.service) == inactive ]] ||
        fail "myapp.service is $(state myapp.service) before the first connection (expected inactive: socket activation)"
    [[ $(prop myapp.socket Listen) == *":$port (Stream)"* ]] ||
        fail "myapp.socket listens on '$(prop myapp.socket Listen)', not port $port"
    body=$(curl_body)
    note "curl: $body"
    [[ $(version_of "$body") == 1.0 ]] || fail "curl answered '$body', not version 1.0"
    # The first worker may answer while the others are still starting (service "activating").
    wait_state myapp.service active 15 || fail "myapp.service is $(state myapp.service) 15s after the first connection"
}

check_b() {
    local log=$work/$SUITE/b.apt body pid_before pid_after gen t0 rc
    pid_before=$(prop myapp.service MainPID)
    [[ $pid_before =~ ^[1-9][0-9]*$ ]] || fail "myapp.service has no MainPID before the upgrade ('$pid_before')"
    load_start b
    t0=$(now_ms)
    apt_install "$log" ./myapp_1.1_all.deb; rc=$?
    note "apt-get install ./myapp_1.1_all.deb: exit $rc in $(secs $(($(now_ms) - t0)))s"
    ((rc == 0)) || { fail "apt-get install exited $rc"; transcript "apt-get" "$log"; }
    sleep 2.5   # longer than a slow request: every client's last answer comes after the reload
    load_stop b
    body=$(curl_body)
    gen=$(generation_of "$body")
    note "curl: $body"
    [[ $(version_of "$body") == 1.1 ]] || fail "curl answered '$body', not version 1.1"
    if [[ -s $load_json && -n $gen ]]; then
        [[ $(json "$load_json" 'len(d["generations"])') -ge 2 ]] ||
            fail "the load did not span the reload (generations $(json "$load_json" 'd["generations"]'))"
        [[ $(json "$load_json" 'sorted(d["final_generations"])') == "['$gen']" ]] ||
            fail "the clients' last answers came from generations $(json "$load_json" 'd["final_generations"]'), not only from generation $gen (version 1.1)"
    fi
    pid_after=$(prop myapp.service MainPID)
    note "MainPID $pid_before -> $pid_after, NRestarts=$(prop myapp.service NRestarts)"
    [[ $pid_after == "$pid_before" ]] || fail "MainPID changed from $pid_before to $pid_after: restarted, not reloaded"
    [[ $(prop myapp.service NRestarts) == 0 ]] || fail "NRestarts=$(prop myapp.service NRestarts)"
    inside_t 20 journalctl -u myapp.service --no-pager -o cat | grep -q '^Reloaded myapp.service' ||
        fail "no 'Reloaded myapp.service' in the journal"
}

check_c() {
    local log=$work/$SUITE/c.apt body pid_before pid_after rc t0
    pid_before=$(prop myapp.service MainPID)
    load_start c
    t0=$(now_ms)
    apt_install "$log" ./myapp_1.2_all.deb; rc=$?
    note "apt-get install ./myapp_1.2_all.deb: exit $rc in $(secs $(($(now_ms) - t0)))s"
    load_stop c
    ((rc != 0)) || fail "apt-get install of the broken 1.2 succeeded"
    grep -q 'reloading myapp.service failed' "$log" ||
        fail "the apt output does not report the failed reload (postinst message missing)"
    grep -q 'baton: reload failed' "$log" || fail "the apt output does not show baton's reason"
    grep -q 'myapp 1.2: broken release' "$log" || fail "the apt output does not show the worker's stderr"
    grep -q 'post-installation script subprocess returned error' "$log" || fail "dpkg does not report the failed postinst"
    note "apt output, from the failed reload on:"
    local line
    while IFS= read -r line; do note "  | $line"; done < <(sed -n '/^Setting up myapp/,$p' "$log" | tr -d '\r')
    body=$(curl_body)
    note "curl: $body"
    [[ $(version_of "$body") == 1.1 ]] || fail "curl answered '$body', not version 1.1"
    [[ $(state myapp.service) == active ]] || fail "myapp.service is $(state myapp.service) after the failed reload"
    pid_after=$(prop myapp.service MainPID)
    [[ $pid_after == "$pid_before" ]] || fail "MainPID changed from $pid_before to $pid_after"
}

check_d() {
    local log=$work/$SUITE/d.apt status body pid_before pid_after rc
    pid_before=$(prop myapp.service MainPID)
    status=$(inside_t 20 dpkg-query -W -f='${Status} ${Version} ${Config-Version}' myapp 2>&1)
    note "dpkg after the failed upgrade: $status"
    [[ $status == "install ok half-configured 1.2 1.1" ]] ||
        fail "dpkg state is '$status', expected 'install ok half-configured 1.2 1.1'"
    inside_t 120 dpkg --configure -a >"$work/$SUITE/d.configure" 2>&1; rc=$?
    note "dpkg --configure -a: exit $rc (it runs 1.2's postinst again)"
    ((rc != 0)) || fail "dpkg --configure -a succeeded with the broken 1.2"
    [[ $(version_of "$(curl_body)") == 1.1 ]] || fail "1.1 no longer serving after dpkg --configure -a"
    apt_install "$log" --allow-downgrades ./myapp_1.1_all.deb; rc=$?
    note "apt-get install -y --allow-downgrades ./myapp_1.1_all.deb: exit $rc"
    ((rc == 0)) || { fail "apt-get install of 1.1 exited $rc"; transcript "apt-get" "$log"; }
    status=$(inside_t 20 dpkg-query -W -f='${Status} ${Version}' myapp 2>&1)
    [[ $status == "install ok installed 1.1" ]] || fail "dpkg state is '$status' after reinstalling 1.1"
    body=$(curl_body)
    note "curl: $body"
    [[ $(version_of "$body") == 1.1 ]] || fail "curl answered '$body', not version 1.1"
    pid_after=$(prop myapp.service MainPID)
    [[ $pid_after == "$pid_before" ]] || fail "MainPID changed from $pid_before to $pid_after"
}

check_e() {
    local log=$work/$SUITE/e.apt rc procs result
    # What purge (check f) must leave no trace of.
    inside_t 20 dpkg -L myapp >"$work/$SUITE/files" 2>&1 || fail "dpkg -L myapp failed"
    inside_t 20 sh -c 'ps -o uid= -p "$(systemctl show -P MainPID myapp.service)"' 2>/dev/null | tr -d ' ' >"$work/$SUITE/dyn_uid"
    inside_t 120 env DEBIAN_FRONTEND=noninteractive apt-get remove -y myapp >"$log" 2>&1; rc=$?
    ((rc == 0)) || { fail "apt-get remove exited $rc"; transcript "apt-get" "$log"; }
    [[ $(state myapp.service) == inactive ]] || fail "myapp.service is $(state myapp.service), not inactive"
    [[ $(state myapp.socket) == inactive ]] || fail "myapp.socket is $(state myapp.socket), not inactive"
    result=$(prop myapp.service Result)
    [[ $result == success ]] || fail "myapp.service stopped with Result=$result"
    procs=$(inside_t 20 ps -eo pid=,comm=,args= | awk '$2 == "baton" || $2 == "node"')
    [[ -z $procs ]] || fail "processes left: $procs"
    inside_t 20 curl -sS --max-time 5 "http://127.0.0.1:$port/" >/dev/null 2>&1 &&
        fail "port $port still answers after the removal"
    note "dpkg after remove: $(inside_t 20 dpkg-query -W -f='${Status}' myapp 2>&1)"
    local line
    inside_t 20 journalctl -u myapp.service -u myapp.socket --no-pager -o cat -n 4 >"$work/$SUITE/e.journal" 2>&1
    while IFS= read -r line; do note "journal: $line"; done <"$work/$SUITE/e.journal"
}

check_f() {
    local log=$work/$SUITE/f.apt rc left status
    [[ -s $work/$SUITE/files ]] || inside_t 20 dpkg -L myapp >"$work/$SUITE/files" 2>&1
    inside_t 120 env DEBIAN_FRONTEND=noninteractive apt-get purge -y myapp >"$log" 2>&1; rc=$?
    ((rc == 0)) || { fail "apt-get purge exited $rc"; transcript "apt-get" "$log"; }
    status=$(inside_t 20 dpkg-query -W -f='${Status}' myapp 2>/dev/null)
    [[ -z $status || $status == "unknown ok not-installed" ]] || fail "dpkg still knows myapp: '$status'"
    # The package's files: gone, except directories other packages still use.
    # (A directory may also be a symlink to one: /lib -> usr/lib on a merged /usr.)
    left=$(inside_t 30 sh -c 'while read -r f; do
                if [ -d "$f" ]; then [ -n "$(ls -A "$f")" ] || echo "$f (empty directory)"
                elif [ -e "$f" ] || [ -L "$f" ]; then echo "$f"; fi
            done' <"$work/$SUITE/files")
    [[ -z $left ]] || fail "left from dpkg -L myapp: $(oneline "$left")"
    note "$(grep -c . "$work/$SUITE/files") paths from dpkg -L myapp: none left"
    # Anything named after it, or pointing at it: unit symlinks, deb-systemd-helper state,
    # runtime directory, dynamic user, private tmp dirs, dpkg info files.
    left=$(inside_t 60 sh -c 'find / /run /tmp /var/tmp -xdev \( -path /opt/test -o -path /proc \) -prune -o \
                \( -name "*myapp*" -o -lname "*myapp*" \) -print 2>/dev/null | sort -u')
    [[ -z $left ]] || fail "left, named after or pointing at myapp: $(oneline "$left")"
    left=$(inside_t 20 sh -c 'grep -rl myapp /etc/systemd /var/lib/systemd 2>/dev/null')
    [[ -z $left ]] || fail "files mentioning myapp: $(oneline "$left")"
    dyn_uid=$(cat "$work/$SUITE/dyn_uid" 2>/dev/null)
    if [[ -n $dyn_uid ]]; then
        note "dynamic user of the service was uid $dyn_uid"
        inside_t 20 test -e "/run/systemd/dynamic-uid/$dyn_uid" && fail "dynamic uid $dyn_uid still allocated"
    fi
    # Everything new since boot must be baton's (or the system's own bookkeeping).
    inside_t 60 sh -c "$snapshot_cmd" >"$work/$SUITE/after.paths"
    inside_t 20 dpkg -L baton >"$work/$SUITE/baton.paths" 2>/dev/null
    comm -13 "$work/$SUITE/before.paths" "$work/$SUITE/after.paths" >"$work/$SUITE/new.paths"
    left=$(grep -vxFf "$work/$SUITE/baton.paths" "$work/$SUITE/new.paths" | grep -vE "$snapshot_noise")
    note "$(grep -c . "$work/$SUITE/new.paths") paths new since boot: all baton's or the system's bookkeeping"
    [[ -z $left ]] || fail "new since boot and not baton's: $(oneline "$left")"
}

check_g() {
    local log=$work/$SUITE/g.apt body first rc st
    apt_install "$log" ./myapp_1.0_all.deb || { fail "apt-get install of 1.0 exited $?"; transcript "apt-get" "$log"; }
    # Workers that take 3 s to listen: the upgrade lands in the middle of the start.
    inside_t 20 sh -c 'mkdir -p /run/systemd/system/myapp.service.d &&
        printf "[Service]\nEnvironment=STARTUP_MS=3000\n" >/run/systemd/system/myapp.service.d/slow.conf &&
        systemctl daemon-reload'
    inside_t 30 curl -sS --max-time 20 "http://127.0.0.1:$port/" >"$work/$SUITE/g.first" 2>&1 &
    local curl_pid=$!
    sleep 0.7
    st=$(state myapp.service)
    note "myapp.service is $st when the upgrade starts"
    [[ $st == activating ]] || fail "myapp.service is $st, not activating: the test missed the start"
    apt_install "$log" ./myapp_1.1_all.deb; rc=$?
    ((rc == 0)) || { fail "apt-get install of 1.1 exited $rc"; transcript "apt-get" "$log"; }
    wait "$curl_pid"
    first=$(cat "$work/$SUITE/g.first")
    # The reload returns once 1.1 serves; generation 1's workers then drain, and the example app keeps answering
    # (with Connection: close) for a grace second while it does, on the shared socket: a new connection may still
    # reach one of them. 1.1 must answer within the drain, not necessarily the first connection after apt.
    local tries=0
    body=$(curl_body)
    while [[ $(version_of "$body") != 1.1 ]] && ((tries < 30)); do
        sleep 0.1
        tries=$((tries + 1))
        body=$(curl_body)
    done
    note "the connection that started it: $first"
    note "after the upgrade: $body (after $tries connection(s) answered by the draining generation)"
    [[ $(version_of "$first") == 1.0 ]] || fail "the connection during the start got '$first', not version 1.0"
    [[ $(version_of "$body") == 1.1 ]] || fail "after the upgrade: '$body', not version 1.1"
    inside_t 20 rm -rf /run/systemd/system/myapp.service.d
    inside_t 60 env DEBIAN_FRONTEND=noninteractive apt-get purge -y myapp >"$log" 2>&1 ||
        { fail "apt-get purge exited $?"; transcript "apt-get" "$log"; }
}

# The journal's "reexecuted" event (MESSAGE_ID), and what a failed re-execution logs.
reexec_events() { inside_t 20 journalctl --no-pager -o cat "MESSAGE_ID=$REEXEC_ID" 2>/dev/null; }
reexec_failures() { inside_t 20 journalctl --no-pager -o cat -u myapp.service 2>/dev/null | grep 'cannot re-execute'; }
# wait_more N SECS FN: until FN prints more than N lines (at most SECS seconds); prints them.
wait_more() {
    local n=$1 deadline=$(($(now_ms) + $2 * 1000)) out
    while :; do
        out=$("$3")
        (($(grep -c . <<<"$out") > n)) && { echo "$out"; return 0; }
        (($(now_ms) < deadline)) || { echo "$out"; return 1; }
        sleep 0.3
    done
}
count() { grep -c . <<<"$1"; }
# status_json FILE: `baton status --name myapp --json` into FILE.
status_json() { inside_t 20 baton status --name myapp --json >"$1" 2>&1; }
workers_of() { json "$1" 'sorted((g["id"], w["slot"], w["pid"]) for g in d["generations"] for w in g["workers"])'; }
serving_of() { json "$1" '" ".join(str(g["id"]) for g in d["generations"] if g["state"] == "serving")'; }

check_h() {
    if [[ -z $next_deb_name ]]; then fail "no baton ${next:-next} package (see the build output above)"; return; fi
    local log=$work/$SUITE/h.apt dir=$work/$SUITE st body pid_before pid_after nr_before rc t0 t_apt events n first
    # baton (the version under test) and myapp 1.1, serving: what check d leaves, set up again
    # if checks e-g (or CHECKS=) left something else.
    st=$(inside_t 20 dpkg-query -W -f='${Status} ${Version}' baton 2>/dev/null)
    [[ $st == "install ok installed $base_version" ]] ||
        apt_install "$dir/h.setup" --allow-downgrades "./$baton_deb_name" ||
        { fail "cannot install baton $base_version"; transcript "apt-get" "$dir/h.setup"; }
    st=$(inside_t 20 dpkg-query -W -f='${Status} ${Version}' myapp 2>/dev/null)
    [[ $st == "install ok installed 1.1" ]] || apt_install "$dir/h.setup" --allow-downgrades ./myapp_1.1_all.deb ||
        { fail "cannot install myapp 1.1"; transcript "apt-get" "$dir/h.setup"; }
    curl_body >/dev/null
    wait_state myapp.service active 20 || fail "myapp.service is $(state myapp.service), not active, before the upgrade"
    pid_before=$(prop myapp.service MainPID) nr_before=$(prop myapp.service NRestarts)
    status_json "$dir/h.status-before"
    note "before: baton $(json "$dir/h.status-before" 'd["version"]') pid $pid_before, serving generation $(serving_of "$dir/h.status-before"), workers (generation, slot, pid) $(workers_of "$dir/h.status-before")"
    n=$(count "$(reexec_events)")
    load_start h
    t0=$(now_ms)
    apt_install "$log" "./$next_deb_name"; rc=$?
    t_apt=$(now_ms)
    note "apt-get install ./$next_deb_name: exit $rc in $(secs $((t_apt - t0)))s"
    ((rc == 0)) || { fail "apt-get install exited $rc"; transcript "apt-get" "$log"; }
    if events=$(wait_more "$n" 30 reexec_events); then
        note "reexecuted event $(secs $(($(now_ms) - t_apt)))s after apt-get returned: $(tail -n1 <<<"$events")"
        [[ $(tail -n1 <<<"$events") == "re-executed /usr/bin/baton in place: $base_version -> $next, still serving generation $(serving_of "$dir/h.status-before")" ]] ||
            fail "unexpected reexecuted event: $(tail -n1 <<<"$events")"
    else
        fail "no reexecuted event (MESSAGE_ID=$REEXEC_ID) within 30s of the upgrade"
    fi
    sleep 2.5   # the load goes on after the re-execution: longer than a slow request
    load_stop h
    pid_after=$(prop myapp.service MainPID)
    note "MainPID $pid_before -> $pid_after, NRestarts $nr_before -> $(prop myapp.service NRestarts), /proc/$pid_after/exe -> $(inside_t 20 readlink "/proc/$pid_after/exe")"
    [[ $pid_after == "$pid_before" ]] || fail "MainPID changed from $pid_before to $pid_after"
    [[ $(prop myapp.service NRestarts) == "$nr_before" ]] || fail "NRestarts changed from $nr_before to $(prop myapp.service NRestarts)"
    [[ $(inside_t 20 readlink "/proc/$pid_after/exe") == /usr/bin/baton ]] ||
        fail "the launcher does not run /usr/bin/baton: /proc/$pid_after/exe -> $(inside_t 20 readlink "/proc/$pid_after/exe")"
    first=$(inside_t 20 baton status --name myapp 2>&1 | head -n1)
    note "baton status: $first"
    [[ $first == "baton myapp (pid $pid_before, version $next)" ]] ||
        fail "baton status says '$first', not 'baton myapp (pid $pid_before, version $next)'"
    status_json "$dir/h.status-after"
    if [[ $(workers_of "$dir/h.status-after" 2>&1) != "$(workers_of "$dir/h.status-before" 2>&1)" ]]; then
        fail "the workers changed: $(workers_of "$dir/h.status-before" 2>&1) -> $(workers_of "$dir/h.status-after" 2>&1)"
    fi
    [[ $(json "$dir/h.status-after" 'd["pid"], d["version"]' 2>&1) == "($pid_before, '$next')" ]] ||
        fail "baton status --json: pid, version = $(json "$dir/h.status-after" 'd["pid"], d["version"]' 2>&1)"
    # The re-executed launcher still reloads.
    inside_t 60 systemctl reload myapp.service >"$dir/h.reload" 2>&1; rc=$?
    ((rc == 0)) || { fail "systemctl reload myapp after the re-execution exited $rc"; transcript "systemctl reload" "$dir/h.reload"; }
    # The reload returns once the new generation serves: the draining one may still take a new connection within
    # its drain grace (1 s), so the new generation is looked for for up to 5 s.
    for _ in $(seq 50); do
        body=$(curl_body)
        [[ $(generation_of "$body") -gt $(serving_of "$dir/h.status-before") ]] 2>/dev/null && break
        sleep 0.1
    done
    note "after systemctl reload (exit $rc): $body"
    [[ $(version_of "$body") == 1.1 ]] || fail "curl answered '$body', not version 1.1"
    [[ $(generation_of "$body") -gt $(serving_of "$dir/h.status-before") ]] 2>/dev/null ||
        fail "the reload did not start a new generation (curl: '$body')"
    [[ $(prop myapp.service MainPID) == "$pid_before" ]] || fail "MainPID changed on the reload"
}

check_i() {
    local dir=$work/$SUITE pid body n m events
    pid=$(prop myapp.service MainPID)
    [[ $pid =~ ^[1-9][0-9]*$ ]] || { fail "myapp.service has no MainPID ('$pid')"; return; }
    n=$(count "$(reexec_failures)") m=$(count "$(reexec_events)")
    # Renamed over, not written into: the running launcher's binary is busy (ETXTBSY).
    inside_t 20 sh -c 'ln /usr/bin/baton /usr/bin/baton.upg-saved && printf "not a program\n" >/usr/bin/baton.upg-new &&
        chmod 755 /usr/bin/baton.upg-new && mv -f /usr/bin/baton.upg-new /usr/bin/baton' ||
        { fail "cannot replace /usr/bin/baton"; return; }
    inside_t 20 kill -USR2 "$pid"
    if events=$(wait_more "$n" 20 reexec_failures); then
        note "journal: $(tail -n1 <<<"$events")"
    else
        fail "no 'cannot re-execute' in the journal within 20s of SIGUSR2"
    fi
    sleep 1
    [[ $(prop myapp.service MainPID) == "$pid" ]] || fail "MainPID changed from $pid to $(prop myapp.service MainPID)"
    [[ $(state myapp.service) == active ]] || fail "myapp.service is $(state myapp.service)"
    body=$(curl_body)
    note "curl: $body"
    [[ $(version_of "$body") == 1.1 ]] || fail "curl answered '$body', not version 1.1"
    inside_t 20 mv -f /usr/bin/baton.upg-saved /usr/bin/baton || fail "cannot restore /usr/bin/baton"
    # Once the binary runs again, the same launcher re-executes it.
    inside_t 20 kill -USR2 "$pid"
    if events=$(wait_more "$m" 20 reexec_events); then
        note "with /usr/bin/baton restored, SIGUSR2: $(tail -n1 <<<"$events")"
    else
        fail "with /usr/bin/baton restored, no reexecuted event within 20s of SIGUSR2"
    fi
    [[ $(prop myapp.service MainPID) == "$pid" ]] || fail "MainPID changed from $pid to $(prop myapp.service MainPID)"
    [[ $(version_of "$(curl_body)") == 1.1 ]] || fail "not serving version 1.1 at the end"
}

# Paths compared before install and after purge (check f), and what may change there anyway.
snapshot_cmd='find / /run /tmp /var/tmp -xdev \( -path /opt/test -o -path /proc -o -path /sys -o -path /dev \) -prune -o -print 2>/dev/null | sort -u'
snapshot_noise='^/var/lib/dpkg/|^/var/cache/|^/var/log/|^/run/log/|^/var/lib/apt/|^/run/systemd/|^/var/lib/systemd/(deb-systemd-helper-enabled|catalog)|^/etc/ld\.so\.cache|^/tmp/systemd-private-[^/]*-systemd-|^/var/tmp/systemd-private-[^/]*-systemd-|^/run/udev|^/run/user|^/var/lib/systemd/random-seed'

check_title+=(
    [a]="install baton and myapp 1.0: socket enabled and active, service socket-activated, version 1.0"
    [b]="upgrade to 1.1 under load: 0 failed requests, version 1.1, reloaded not restarted"
    [c]="upgrade to the broken 1.2 under load: apt fails and says why, 1.1 keeps serving"
    [d]="after the failed upgrade: half-configured; dpkg --configure -a fails again; installing 1.1 recovers"
    [e]="remove: service and socket stopped cleanly, no baton or node left"
    [f]="purge: no file, symlink, state or runtime directory left"
    [g]="upgrade while the service is starting: the postinst waits for the start, then reloads to 1.1"
    [i]="a re-execution whose new binary does not run: logged, the running baton carries on"
)

# ----------------------------------------------------------------------------- one suite

# After the boot: what the container has, and the paths check f compares with.
setup_suite() {
    local NAME
    NAME=$(name_of "$1")
    echo "$NAME: $(inside systemctl --version | head -n1), node $(inside node --version)"
    inside_t 60 sh -c "$snapshot_cmd" >"$work/$1/before.paths"
}

run_checks() {
    local c
    for c in "${checks[@]}"; do
        if declare -F "check_$c" >/dev/null; then check "$1" "$c"; else echo "not ok - $1 $c: no such check"; fi
    done
}

# --------------------------------------------------------------------------------- build

newest_mtime() { find "$@" -type f -printf '%T@\n' 2>/dev/null | sort -n | tail -n1 | cut -d. -f1; }
mtime() { stat -c %Y "$1" 2>/dev/null || echo 0; }

build_baton() {
    if [[ -n ${BATON_DEB:-} ]]; then
        baton_deb=$(realpath "$BATON_DEB") || return 1
        echo "# baton: using BATON_DEB=$baton_deb"
        return 0
    fi
    local version arch
    version=$(dpkg-parsechangelog -l "$repo/packaging/debian/changelog" -S Version)
    arch=$(dpkg --print-architecture)
    baton_deb=$repo/out/baton_${version}_${arch}.deb
    local src
    src=$(newest_mtime "$repo/Sources" "$repo/systemd" "$repo/Package.swift" \
        "$repo/packaging/debian/control" "$repo/packaging/debian/rules" "$repo/packaging/debian/changelog")
    if [[ -f $baton_deb ]] && { [[ ${UPG_BUILD:-1} == 0 ]] || (($(mtime "$baton_deb") >= src)); }; then
        echo "# baton: using $baton_deb"
        return 0
    fi
    [[ ${UPG_BUILD:-1} == 0 ]] && { echo "UPG_BUILD=0 but no $baton_deb"; return 1; }
    # build-deb.sh takes out/.build-deb.lock itself (flock, its own open file): taking it here
    # too would wait for ourselves forever.
    echo "# baton: building $baton_deb (packaging/build-deb.sh)"
    local t0; t0=$(now_ms)
    (cd "$repo" && bash packaging/build-deb.sh) >"$work/build-deb.log" 2>&1 ||
        { tail -n 30 "$work/build-deb.log"; return 1; }
    echo "# baton: built $baton_deb in $(secs $(($(now_ms) - t0)))s"
}

# The next baton (checks h and i): the package under test with the version one higher (0.1.0 ->
# 0.1.1). The code is the same; the binary is another file that reports another version, which
# is what an upgrade of baton replaces. Its version record is rewritten in place
# (tools/set-version.py, the way VersionTests checks), then the control file's Version, a new
# changelog entry and the md5sums follow, and dpkg-deb packs it again: a second build of baton
# would cost minutes for the same bytes.

# next_version V: V with its last number one higher.
next_version() { [[ $1 =~ ^(.*[^0-9])?([0-9]+)$ ]] && echo "${BASH_REMATCH[1]}$((BASH_REMATCH[2] + 1))"; }

build_next_baton() {
    local version arch dir=$work/next-deb log=$work/build-next.log changes sums
    if ! version=$(dpkg-deb -f "$baton_deb" Version) || ! next=$(next_version "$version"); then
        echo "# baton next: cannot tell the version of $baton_deb"; return 1
    fi
    arch=$(dpkg --print-architecture)
    next_deb=$work/baton_${next}_${arch}.deb
    changes=$dir/usr/share/doc/baton/changelog.Debian.gz
    rm -rf "$dir"
    if ! { dpkg-deb -R "$baton_deb" "$dir" &&
        python3 "$repo/tools/set-version.py" "$dir/usr/bin/baton" "$version" "$next" &&
        sed -i "s/^Version: .*/Version: $next/" "$dir/DEBIAN/control" &&
        { printf 'baton (%s) unstable; urgency=medium\n\n' "$next"
          printf '  * Made by Tests/system/upgrade-tests.sh: %s with the version raised.\n\n' "$version"
          zcat "$changes" | grep -m1 '^ -- '; echo; zcat "$changes"; } | gzip -9n >"$changes.new" &&
        mv "$changes.new" "$changes" &&
        sums=$(cd "$dir" && md5sum usr/bin/baton usr/share/doc/baton/changelog.Debian.gz) &&
        awk 'NR == FNR { sum[$2] = $0; next } ($2 in sum) { print sum[$2]; next } { print }' \
            <(echo "$sums") "$dir/DEBIAN/md5sums" >"$dir/DEBIAN/md5sums.new" &&
        mv "$dir/DEBIAN/md5sums.new" "$dir/DEBIAN/md5sums" &&
        dpkg-deb --root-owner-group -Zgzip -z1 -b "$dir" "$next_deb" &&
        [[ $(dpkg-deb -f "$next_deb" Version) == "$next" ]]; } >"$log" 2>&1; then
        echo "# baton $next: cannot make it from $baton_deb:"; tail -n 30 "$log"; return 1
    fi
    echo "# baton $next: $next_deb, from $baton_deb with the version raised"
}

build_myapp() {
    local src v pids=() rc=0 pid
    src=$(newest_mtime "$repo/examples/debian-app" "$repo/examples/node/app.js")
    for v in 1.0 1.1 1.2; do
        if (($(mtime "$myapp_out/myapp_${v}_all.deb") >= src)); then continue; fi
        if [[ $v == 1.2 ]]; then
            "$repo/examples/debian-app/build.sh" "$v" --broken "$myapp_out" >"$work/build-$v.log" 2>&1 &
        else
            "$repo/examples/debian-app/build.sh" "$v" "$myapp_out" >"$work/build-$v.log" 2>&1 &
        fi
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
    ((${#pids[@]})) && echo "# myapp: built ${#pids[@]} package(s) into $myapp_out" ||
        echo "# myapp: using $myapp_out (up to date)"
    ((rc == 0)) || cat "$work"/build-*.log
    return "$rc"
}

# lintian on the three myapp packages, on the host, in the background (a check of its own).
check_title[lintian]="myapp 1.0, 1.1, 1.2 have no errors or warnings"
check_lintian() {
    if ! command -v lintian >/dev/null; then
        note "not run: lintian is not installed (apt-get install lintian)"
    else
        local out rc
        (cd "$myapp_out" && lintian --fail-on error,warning myapp_1.0_all.deb myapp_1.1_all.deb \
            myapp_1.2_all.deb) >"$work/lintian.log" 2>&1; rc=$?
        out=$(grep -v 'running with root privileges' "$work/lintian.log")
        ((rc == 0)) || fail "lintian exited $rc"
        if [[ -z $out ]]; then note "lintian: no tags"; else note "lintian: $(oneline "$out")"; fi
    fi
}

# ---------------------------------------------------------------------------------- main

# The packages under test: baton's (a snapshot, checked whole: someone else's build may replace out/'s
# .deb at any time), the next baton's (for checks h and i, which fail without it) and myapp's.
build_packages() {
    local try t1
    build_baton || { echo "upgrade: cannot build baton's package"; exit 1; }
    for try in 1 2 3 4 5 6; do
        cp "$baton_deb" "$work/baton.deb" && dpkg-deb --contents "$work/baton.deb" >/dev/null 2>&1 && break
        ((try < 6)) || { echo "upgrade: $baton_deb is not a valid package"; exit 1; }
        echo "# baton: $baton_deb is being rewritten; trying again in 5s"
        sleep 5
    done
    baton_deb_name=$(basename "$baton_deb")
    base_version=$(dpkg-deb -f "$work/baton.deb" Version)
    next_deb_name="" next=""
    t1=$(now_ms)
    if build_next_baton && cp "$next_deb" "$work/baton-next.deb" &&
        dpkg-deb --contents "$work/baton-next.deb" >/dev/null 2>&1; then
        next_deb_name=$(basename "$next_deb")
    fi
    echo "# baton $next: $(secs $(($(now_ms) - t1)))s"
    build_myapp || { echo "upgrade: cannot build myapp"; exit 1; }
}

step build build_packages
check_title[h]="upgrade baton to ${next:-the next version} under load: re-executed in place, same pid and workers, 0 failed requests"
rootfs_phase
if ((phase_rc)); then record "not ok" host rootfs 0; summary upgrade; exit 1; fi
for s in "${suites[@]}"; do
    mkdir -p "$work/$s"
    cp "$myapp_out"/myapp_1.{0,1,2}_all.deb "$repo/tools/loadgen.py" "$work/$s/"
    cp "$work/baton.deb" "$work/$s/$baton_deb_name"
    [[ -n $next_deb_name ]] && cp "$work/baton-next.deb" "$work/$s/$next_deb_name"
done

check host lintian &
lint_pid=$!
jobs_running=("$lint_pid")
boot_phase setup_suite
if ((${#booted[@]})); then phase checks run_checks "${booted[@]}"; fi
wait "$lint_pid"
jobs_running=()
teardown_phase

echo "== timings (seconds)"
timings boot "${checks[@]}" teardown
# A suite that stopped early (or a check that never reported) counts as failed.
summary upgrade $((${#suites[@]} * ${#checks[@]} + 2))
