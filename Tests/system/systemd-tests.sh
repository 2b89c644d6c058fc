#!/usr/bin/env bash
# systemd-tests.sh - baton under a real systemd: Debian 12 (systemd 252) and Debian 13 (257),
# each booted as PID 1 of a systemd-nspawn container by rig.sh.
#
# Usage: Tests/system/systemd-tests.sh        (as root)
#
# Phases (each timed): deps (rig.sh deps), build (the static baton, reused when newer than
# Sources/ and Package.swift), rootfs (rig.sh rootfs, cached), boot (and install), checks,
# teardown; the harness (phases, checks, the count) is lib.sh's.
# Into each container it installs /usr/bin/baton, the units of systemd/ (baton@.service,
# baton@.socket), the catalog, the example Node app as /usr/share/baton/examples/node/app.js,
# /etc/baton/demo.conf, and a drop-in making baton@demo.socket listen on 127.0.0.1:8080.
# Then the checks, in this order (each prints "ok - SUITE X: ..." or "not ok - ..." with its
# transcript and the unit's journal, and the next check runs anyway):
#   a  socket activation: the first connection starts the service, generation 1 answers,
#      `systemctl status` shows baton's STATUS= line
#   b  `systemctl reload` exits 0, and the next generation answers (within 5 s: the draining one
#      may still take a connection in its drain grace) and is in
#      StatusText
#   c  a broken release of the app (exits 1 at start): `systemctl reload` fails, the old
#      generation keeps serving, the journal has the reload-failed MESSAGE_ID
#   d  10 `systemctl reload`s under load (loadgen inside, 16 clients, mixed, slow requests):
#      0 failed requests, the final responses come from the newest generation
#   e  the journal: reload events by MESSAGE_ID; one generation's entries (BATON_GENERATION=)
#      hold both baton's events and the workers' own lines; `journalctl -x` shows the catalog
#   f  watchdog (WatchdogSec=2 drop-in): baton pings in time; SIGSTOPped, it is killed for
#      "Watchdog timeout" and restarted, and the socket unit's listener still answers
#   g  `kill -9` of baton under load: systemd restarts it; 0 refused connections (the other
#      failure kinds are printed: systemd SIGKILLs the orphaned workers with their requests)
#   h  `systemctl stop` lets a request in flight (?sleep=2000) complete with a 200, and
#      systemd had nothing left to kill
#   i  fd store without a socket unit (batonfd.service, --listen http=127.0.0.1:8081):
#      `systemctl restart` and `kill -9` under load, 0 refused; the listener was stored
#      once (MESSAGE_ID ...e642) and never bound again (...e641)
#   j  systemd >= 254 only: Type=notify-reload (systemd/notify-reload.conf): SIGHUP reload
#      (a SKIP on 252, not counted)
#   k  `systemd-analyze verify` of both units is clean; `systemd-analyze security` score
#   l  `systemctl reload` returns while the old generation still drains a slow request
#      (?sleep=6000): StatusText and `baton status --json` show it draining 1 connection, the
#      request then gets its 200 from the old generation, and the journal has one
#      drain-finished entry (MESSAGE_ID ...e606) for it with BATON_CONNECTIONS=0
#   m  health probes (batonhealth.service, --health http:/healthz): a release whose probe socket
#      answers 503 makes `systemctl reload` fail with the probe's result (reload-failed MESSAGE_ID,
#      BATON_REASON), generation 1 serving; then generation 1's probes fail: its workers are
#      replaced (probe-failed MESSAGE_ID) and the service answers throughout
#   n  metrics: `--metrics 127.0.0.1:9464` added to BATON_OPTIONS in /etc/baton/demo.conf works under
#      the unit's hardening; after a restart and one reload, GET /metrics shows serving generation 2
#      and baton_reloads_total{result="ok"} 1
#   p  --min-ready 5s in BATON_OPTIONS: a release that crashes 2 s after it starts (after it is ready)
#      makes `systemctl reload` fail, the old generation serves on, and the reload-failed entry
#      (MESSAGE_ID) says "within --min-ready 5s"; the good release then reloads
#   o  canary and held reloads: `baton reload --hold` leaves the next generation serving beside the
#      old one (StatusText says so) and `systemctl reload` is refused meanwhile; `baton promote`
#      finishes it. With `--canary 3s` in BATON_OPTIONS, a release that crashes 2 s after it
#      starts makes `systemctl reload` fail, the old generation serves on, and the journal has the
#      canary-failed MESSAGE_ID with the reason; the good release then passes its canary
# and finally (counted as one more check, "host teardown") that the teardown left no process,
# cgroup or mount behind. A check that passes prints its notes (timings, load summaries, journal lines).
# Ends with the timings and "systemd: N passed, M failed"; exits non-zero if any failed.
# The suites share only the staging directory (each writes under out/SUITE/); within a suite
# the checks share one container, and e reads the reloads of b and d.
#
# Environment:
#   RIG_CACHE      rootfs trees, default /var/cache/baton-rig (SUITE/ each)
#   RIG_SUITES     suites, default "bookworm trixie"
#   RIG_PARALLEL   1 (default): the suites run at once; 0: one after another
#   BATON_BIN      use this baton binary instead of building one
#   BATON_UNITS    directory holding the unit files, catalog and demo.conf to test
#                  (default: the repository's systemd/)
#   CHECKS         only these checks, e.g. "a b f" (default: all)
#   CHECK_TIMEOUT  seconds after which a check is killed and fails, default 240

set -euo pipefail

# shellcheck source=Tests/system/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
units=${BATON_UNITS:-$repo/systemd}
read -r -a only <<<"${CHECKS:-}"
check_timeout=${CHECK_TIMEOUT:-240}

# MESSAGE_IDs of baton's events (systemd/baton.catalog).
MID_GEN_READY=$(mid 'baton: generation .* is ready$')
MID_RELOAD_OK=$(mid 'baton: reload of .* succeeded$')
MID_RELOAD_FAILED=$(mid 'baton: reload of .* failed$')
MID_DRAINED=$(mid 'baton: generation .* finished draining$')
MID_LISTENER_BOUND=$(mid 'baton: .* bound a listening socket$')
MID_LISTENER_STORED=$(mid 'baton: .* stored a listening socket in the fd store$')
MID_PROBE_FAILED=$(mid 'baton: worker .* failed its health probes$')
MID_CANARY_PASSED=$(mid 'baton: the canary of .* passed$')
MID_CANARY_FAILED=$(mid 'baton: the canary of .* failed$')
MID_HELD=$(mid 'baton: generation .* is held beside the old generation$')

rig_start systemd-tests bt
stage=$work/opt            # bind-mounted at /opt/test in every container
bind_of() { echo "$stage"; }

# ---------------------------------------------------------------------------- build

baton_bin=${BATON_BIN:-$repo/.build-static/release/baton}

build_baton() {
    if [[ -n ${BATON_BIN:-} ]]; then
        [[ -x $BATON_BIN ]] || { echo "BATON_BIN=$BATON_BIN is not executable"; return 1; }
        echo "using BATON_BIN=$BATON_BIN"
        return 0
    fi
    local newer=""
    if [[ -x $baton_bin ]]; then
        newer=$(find "$repo/Sources" "$repo/Package.swift" -newer "$baton_bin" -print -quit)
        if [[ -z $newer ]]; then
            echo "reusing $baton_bin (newer than Sources/ and Package.swift)"
            return 0
        fi
        echo "rebuilding: $newer is newer than $baton_bin"
    fi
    # In the background, so that an interrupt is handled at once (and ends the build).
    (cd "$repo" && exec swift build -c release --static-swift-stdlib --scratch-path .build-static \
        --product baton) >"$work/build.log" 2>&1 &
    jobs_running=("$!")
    if ! wait "$!"; then
        jobs_running=()
        tail -n 30 "$work/build.log"
        return 1
    fi
    jobs_running=()
    tail -n 1 "$work/build.log"
    [[ -x $baton_bin ]]
}

# ---------------------------------------------------------------------------- staging

write_stage() {
    local fx=$stage/fixtures
    mkdir -p "$stage/tools" "$stage/out" "$fx"
    cp "$baton_bin" "$stage/baton"
    cp -r "$units" "$stage/systemd"
    cp -r "$repo/examples" "$stage/examples"
    cp "$repo/tools/loadgen.py" "$stage/tools/"

    cat >"$fx/listen.conf" <<'EOF'
[Socket]
ListenStream=
ListenStream=127.0.0.1:8080
EOF
    # A release that serves, then crashes 2 s after it started (good.js is the real app).
    cat >"$fx/late-crash-app.js" <<'EOF'
'use strict';
setTimeout(() => { console.error('late-crash release: crashing now (test)'); process.exit(1); }, 2000);
require('./good.js');
EOF
    # A broken release of the app, as an upgrade might ship: exits 1 at start.
    cat >"$fx/broken-app.js" <<'EOF'
'use strict';
console.error('broken release: cannot load configuration, exiting');
process.exit(1);
EOF
    cat >"$fx/watchdog.conf" <<'EOF'
[Service]
WatchdogSec=2
EOF
    cat >"$fx/batonfd.service" <<'EOF'
[Unit]
Description=baton with a listener of its own, kept in the fd store

[Service]
Type=notify
NotifyAccess=main
ExecStart=/usr/bin/baton run --name batonfd --listen http=127.0.0.1:8081 --workers 2 --ready fd -- /usr/bin/node /usr/share/baton/examples/node/app.js
RuntimeDirectory=batonfd
FileDescriptorStoreMax=4
KillMode=mixed
Restart=on-failure
RestartSec=1
EOF
    cat >"$fx/batonhealth.service" <<'EOF'
[Unit]
Description=baton probing its workers (--health)

[Service]
Type=notify
NotifyAccess=main
ExecStart=/usr/bin/baton run --name batonhealth --listen http=127.0.0.1:8082 --workers 2 --ready fd --ready-timeout 3s --health http:/healthz --health-interval 300ms -- /usr/bin/node /usr/share/baton/health-app.js
ExecReload=/usr/bin/baton reload --quiet --name batonhealth
RuntimeDirectory=batonhealth
KillMode=mixed
EOF
    # The example app, whose probe socket (the listener named health, at BATON_HEALTH_ADDRESS) answers
    # 503 while /run/health-sick-GENERATION exists; the shared socket serves as usual.
    cat >"$fx/health-app.js" <<'EOF'
'use strict';
const fs = require('fs');
const http = require('http');
const port = Number((process.env.BATON_HEALTH_ADDRESS || '').split(':').pop());
const sick = `/run/health-sick-${process.env.BATON_GENERATION}`;
const emit = http.Server.prototype.emit;
http.Server.prototype.emit = function (event, request, response, ...rest) {
  if (event === 'request' && request.socket.localPort === port && fs.existsSync(sick)) {
    response.writeHead(503, { Connection: 'close' });
    response.end('unhealthy\n');
    return true;
  }
  return emit.call(this, event, request, response, ...rest);
};
require('/usr/share/baton/examples/node/app.js');
EOF
    # jafter.py CURSOR [FIELD=VALUE...]: the MESSAGE of every entry after CURSOR that has all
    # the fields given. (journalctl 252 --after-cursor finds nothing when given a field match.)
    cat >"$fx/jafter.py" <<'EOF'
import json, subprocess, sys
out = subprocess.run(["journalctl", "--no-pager", "-o", "json", "--after-cursor", sys.argv[1]],
                     capture_output=True, text=True, check=True).stdout
want = [m.split("=", 1) for m in sys.argv[2:]]
for line in out.splitlines():
    e = json.loads(line)
    if all(str(e.get(k)) == v for k, v in want):
        m = e.get("MESSAGE")
        print(bytes(m).decode(errors="replace") if isinstance(m, list) else m)
EOF
    cat >"$fx/install.sh" <<'EOF'
#!/bin/sh
# Runs inside the container: install baton, its units, the catalog and the demo app.
set -eu
t=/opt/test
install -m 0755 $t/baton /usr/bin/baton
install -m 0644 $t/systemd/baton@.service $t/systemd/baton@.socket /etc/systemd/system/
install -d /usr/lib/systemd/catalog /etc/baton /usr/share/baton/examples/node \
    /etc/systemd/system/baton@demo.socket.d
install -m 0644 $t/systemd/baton.catalog /usr/lib/systemd/catalog/baton.catalog
journalctl --update-catalog
install -m 0644 $t/examples/node/app.js /usr/share/baton/examples/node/app.js
install -m 0644 $t/systemd/demo.conf /etc/baton/demo.conf
install -m 0644 $t/fixtures/listen.conf /etc/systemd/system/baton@demo.socket.d/listen.conf
systemctl daemon-reload
EOF
}

# ---------------------------------------------------------------------------- set-up

# Inside a booted container: install baton, its units, the catalog and the demo app.
install_in() {
    local n
    n=$(name_of "$1")
    mkdir -p "$stage/out/$1"
    "$rig" exec "$n" sh /opt/test/fixtures/install.sh 2>&1 && "$rig" exec "$n" test -x /usr/bin/baton || return 1
    echo "$("$rig" exec "$n" systemctl --version | sed -n 1p), node $("$rig" exec "$n" node --version)"
}

# ---------------------------------------------------------------------------- check helpers
# These run inside a check: a subshell with "set -e" (any unexpected failure ends the check),
# stdout = the check's transcript (shown if it fails), fd 3 = its notes (always shown).

SUITE="" NAME=""
in_c() { "$rig" exec "$NAME" "$@"; }


# x CMD...: run CMD in the container; its output goes to the transcript and into $OUT.
# Returns CMD's status (with "set -e", a failure ends the check unless tested).
OUT=""
x() {
    local rc=0
    printf '+ %s\n' "$*"
    OUT=$(in_c "$@" 2>&1) || rc=$?
    if [[ -n $OUT ]]; then printf '%s\n' "$OUT" | sed 's/^/  | /'; fi
    if ((rc)); then printf '  (exit status %d)\n' "$rc"; fi
    return "$rc"
}

# get URL: one request with curl inside; sets CODE and BODY.
CODE="" BODY=""
get() {
    local out
    out=$(in_c curl -sS --max-time 20 -w '\n%{http_code}' "$1" 2>&1) || true
    CODE=${out##*$'\n'}
    BODY=${out%$'\n'*}
    [[ $out == *$'\n'* ]] || BODY=$out
    BODY=${BODY%$'\n'}
    printf '+ curl %s -> %s %s\n' "$1" "$CODE" "$BODY"
}

show() { in_c systemctl show -p "$2" --value "$1"; }

# answers_gen G: a new connection is answered by generation G, polled for at most 5 s. A reload returns as soon
# as G serves; the old generation, draining, may still answer a new connection within its drain grace (the
# example app keeps serving with "Connection: close" for 1 s after SIGTERM).
answers_gen() {
    local deadline=$(($(now_ms) + 5000))
    while :; do
        get http://127.0.0.1:8080/
        [[ $CODE == 200 && $BODY == "hello from generation $1 "* ]] && return 0
        (($(now_ms) < deadline)) || return 1
        sleep 0.1
    done
}

# The generation in StatusText ("serving generation N ..."), or nothing.
serving_gen() {
    local st
    st=$(show baton@demo.service StatusText)
    [[ $st =~ ^serving\ generation\ ([0-9]+) ]] && echo "${BASH_REMATCH[1]}"
}

# until_ok SECS CMD...: run CMD (on the host side; use in_c for the container) every 0.1 s
# until it succeeds, for at most SECS seconds.
until_ok() {
    local secs=$1; shift
    local deadline=$(($(now_ms) + secs * 1000))
    until "$@"; do
        (($(now_ms) < deadline)) || return 1
        sleep 0.1
    done
}

is_active() { [[ $(show "$1" ActiveState) == active ]]; }
# ensure_active UNIT: start UNIT unless it is active (or becomes so within 10 s).
ensure_active() {
    until_ok 10 is_active "$1" && return 0
    x timeout 90 systemctl start "$1"
    is_active "$1" || fail "$1 is not active"
}
# main_pid UNIT: its MainPID, or the check fails if there is none. (Never signal a MainPID
# of 0: "kill -9 0" inside would hit this script's own process group.)
main_pid() {
    local pid
    pid=$(show "$1" MainPID)
    if ! [[ $pid =~ ^[0-9]+$ ]] || ((pid <= 1)); then
        fail "$1 has no main process (MainPID=$pid)"
    fi
    echo "$pid"
}
# restarted UNIT N0: NRestarts went past N0 and the unit is active again.
restarted() { (($(show "$1" NRestarts) > $2)) && is_active "$1"; }

# A journal cursor at the current end, to look only at what comes after it.
cursor() { in_c journalctl -q -n 0 --show-cursor | sed -n 's/^-- cursor: //p'; }
# jafter CURSOR [FIELD=VALUE...]: x of the messages of the entries after CURSOR with these fields.
jafter() { x python3 /opt/test/fixtures/jafter.py "$@"; }

# Start the load client inside, in the background: loadgen_start TAG URL. The summary goes
# to /opt/test/out/SUITE/TAG.json; loadgen_stop TAG ends it and prints the summary.
declare -A loadgen_pid=()
loadgen_start() {
    local tag=$1 url=$2 dir=/opt/test/out/$SUITE port
    port=${url#http://*:}; port=${port%%/*}
    in_c rm -f "$dir/$tag.stop" "$dir/$tag.json"
    in_c python3 /opt/test/tools/loadgen.py --url "$url" --clients 16 --mode mixed \
        --slow-every 8 --slow-ms 300 --until-file "$dir/$tag.stop" --duration 240 \
        --json "$dir/$tag.json" >"$stage/out/$SUITE/$tag.log" 2>&1 &
    loadgen_pid[$tag]=$!
    # Going once it has connections to the port (bounded poll).
    until_ok 10 in_c sh -c "ss -Htn state established '( dport = :$port )' | grep -q ." ||
        note "warning: no load connections seen after 10 s"
    sleep 0.5
}
# loadgen_stop TAG [GEN]: with GEN, each client first goes on until a response of its own came from
# generation GEN (loadgen's --until-file), so that "the final responses came from GEN" is not a race with the
# old generation's drain grace.
loadgen_stop() {
    local tag=$1 rc=0
    in_c sh -c "printf '%s' '${2:-}' >/opt/test/out/$SUITE/$tag.stop"
    wait "${loadgen_pid[$tag]}" || rc=$?
    unset "loadgen_pid[$tag]"
    sed 's/^/  | /' "$stage/out/$SUITE/$tag.log"
    ((rc == 0)) || fail "loadgen exited with status $rc"
    [[ -s $stage/out/$SUITE/$tag.json ]] || fail "no loadgen summary"
}
# field TAG KEY: a value from the summary (JSON for dicts).
field() {
    in_c python3 -c 'import json,sys; v=json.load(open(sys.argv[1]))[sys.argv[2]]
print(json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v)' \
        "/opt/test/out/$SUITE/$1.json" "$2"
}
load_summary() {
    in_c python3 -c 'import json,sys; d=json.load(open(sys.argv[1]))
kinds=["non2xx","refused","reset","eof_idle","eof_new","eof_mid","timeout","other"]
print("requests=%d ok=%d failed=%d (%s) p50=%sms p99=%sms max=%sms rps=%s" % (d["requests"], d["ok"],
      d["failed"], " ".join("%s=%d" % (k, d[k]) for k in kinds), d["p50_ms"], d["p99_ms"],
      d["max_ms"], d["rps"]))
print("generations=%s final_generations=%s" % (json.dumps(d["generations"], sort_keys=True),
      json.dumps(d["final_generations"], sort_keys=True)))
if d["other_samples"]: print("other samples: %s" % d["other_samples"][:5])' \
        "/opt/test/out/$SUITE/$1.json"
}

# ---------------------------------------------------------------------------- checks

check_a() { # socket activation
    x systemctl start baton@demo.socket
    x systemctl is-active baton@demo.socket
    if x systemctl is-active baton@demo.service; then
        fail "baton@demo.service is active before any connection"
    fi
    get http://127.0.0.1:8080/
    [[ $CODE == 200 ]] || fail "expected 200, got '$CODE'"
    [[ $BODY == "hello from generation 1 "* ]] || fail "expected generation 1, got '$BODY'"
    until_ok 30 is_active baton@demo.service || fail "baton@demo.service not active after 30 s"
    x systemctl status -l --no-pager baton@demo.service
    grep -q 'Status: "serving generation 1' <<<"$OUT" ||
        fail "systemctl status shows no 'Status: \"serving generation 1' line"
    note "$(grep 'Status:' <<<"$OUT" | sed 's/^ *//')"
}

check_b() { # systemctl reload
    local g t0 ms
    g=$(serving_gen) || fail "not serving: StatusText='$(show baton@demo.service StatusText)'"
    t0=$(now_ms)
    x timeout 90 systemctl reload baton@demo.service
    ms=$(($(now_ms) - t0))
    answers_gen $((g + 1)) ||
        fail "after the reload: expected generation $((g + 1)), got $CODE '$BODY'"
    x systemctl show -p StatusText baton@demo.service
    [[ $OUT == "StatusText=serving generation $((g + 1))"* ]] ||
        fail "StatusText does not say 'serving generation $((g + 1))'"
    note "reload $g -> $((g + 1)) took $(secs "$ms")s; $OUT"
}

check_c() { # a broken release: the reload fails, the old generation keeps serving
    local g cur app=/usr/share/baton/examples/node/app.js
    g=$(serving_gen) || fail "not serving: StatusText='$(show baton@demo.service StatusText)'"
    cur=$(cursor)
    x cp /opt/test/fixtures/broken-app.js "$app"
    # Whatever happens, the good app goes back.
    trap 'in_c install -m 0644 /opt/test/examples/node/app.js '"$app"' || true' EXIT
    if x timeout 90 systemctl reload baton@demo.service; then
        fail "systemctl reload exited 0 with a broken app"
    fi
    note "systemctl reload failed as expected: ${OUT//$'\n'/ }"
    get http://127.0.0.1:8080/
    [[ $CODE == 200 && $BODY == "hello from generation $g "* ]] ||
        fail "expected the old generation $g to answer, got $CODE '$BODY'"
    x systemctl show -p StatusText -p ActiveState baton@demo.service
    grep -q '^ActiveState=active' <<<"$OUT" || fail "the service is not active"
    note "${OUT//$'\n'/; }"
    jafter "$cur" "MESSAGE_ID=$MID_RELOAD_FAILED"
    [[ -n $OUT ]] || fail "no reload-failed entry (MESSAGE_ID=$MID_RELOAD_FAILED)"
    note "journal, reload-failed: $OUT"
    x install -m 0644 /opt/test/examples/node/app.js "$app"
}

check_d() { # 10 reloads under load
    local g i t0 ms durs=() failed finals newest n
    g=$(serving_gen) || fail "not serving: StatusText='$(show baton@demo.service StatusText)'"
    loadgen_start d http://127.0.0.1:8080/
    trap 'in_c touch /opt/test/out/$SUITE/d.stop || true' EXIT
    for i in 1 2 3 4 5 6 7 8 9 10; do
        t0=$(now_ms)
        x timeout 90 systemctl reload baton@demo.service || fail "reload $i exited non-zero"
        ms=$(($(now_ms) - t0))
        durs+=("$(secs "$ms")")
    done
    sleep 0.5
    loadgen_stop d "$(serving_gen)"
    note "10 reloads from generation $g, each (s): ${durs[*]}"
    note "$(load_summary d)"
    failed=$(field d failed)
    finals=$(field d final_generations)
    newest=$(serving_gen) || fail "not serving after the reloads"
    ((failed == 0)) || fail "$failed failed requests"
    ((newest >= g + 10)) || fail "serving generation $newest after 10 reloads from $g"
    [[ $finals =~ ^\{\"$newest\":\ [0-9]+\}$ ]] ||
        fail "final responses not all from the newest generation $newest: $finals"
    # The connection rescue works under the unit's hardening (SystemCallFilter= allows pidfd_getfd).
    x journalctl --no-pager -o cat -u baton@demo.service
    ! grep -q 'connection rescue is off' <<<"$OUT" ||
        fail "$(grep -m1 'connection rescue is off' <<<"$OUT")"
    n=$(grep -c 'took over' <<<"$OUT" || true)
    # Under the unit sock_diag is not allowed (RestrictAddressFamilies=): the rescue reads /proc/net/tcp instead.
    ((n >= 1)) || fail "no retired worker had connections taken over in 10 reloads under keep-alive load"
    note "connection rescue: $n retired worker(s) had connections taken over"
}

check_e() { # the journal
    local n g
    x journalctl --no-pager -o cat "MESSAGE_ID=$MID_RELOAD_OK"
    n=$(grep -c . <<<"$OUT" || true)
    ((n >= 1)) || fail "no entry with MESSAGE_ID=$MID_RELOAD_OK"
    note "$n reload-succeeded entries, e.g. '$(sed -n 1p <<<"$OUT")'"
    # The generation of the first successful reload.
    x journalctl --no-pager -o verbose -n 1 "MESSAGE_ID=$MID_RELOAD_OK"
    g=$(sed -n 's/^ *BATON_GENERATION=//p' <<<"$OUT" | head -n 1)
    [[ $g =~ ^[0-9]+$ ]] || fail "the reload-succeeded entry has no BATON_GENERATION field"
    grep -q '^ *BATON_DURATION_MS=[0-9]' <<<"$OUT" || fail "no BATON_DURATION_MS field"
    grep -q '^ *BATON_INSTANCE=demo' <<<"$OUT" || fail "no BATON_INSTANCE=demo field"
    x journalctl --no-pager -o verbose -u baton@demo.service "BATON_GENERATION=$g"
    grep -q '^ *BATON_EVENT=' <<<"$OUT" || fail "no baton event for generation $g"
    grep -q "^ *MESSAGE_ID=$MID_GEN_READY" <<<"$OUT" || fail "no generation-ready event for generation $g"
    grep -q '^ *BATON_WORKER=' <<<"$OUT" || fail "no worker output line (BATON_WORKER=) for generation $g"
    grep -q "^ *MESSAGE=\[app pid [0-9]* gen $g worker" <<<"$OUT" ||
        fail "no line of the app itself for generation $g"
    x journalctl --no-pager -o cat -u baton@demo.service "BATON_GENERATION=$g"
    note "journalctl -u baton@demo BATON_GENERATION=$g: $(grep -c . <<<"$OUT") entries:"
    note "    ${OUT//$'\n'/$'\n'    }"
    x journalctl --no-pager -x -n 1 -u baton@demo.service "MESSAGE_ID=$MID_RELOAD_OK"
    grep -q 'Subject: baton: reload of demo to generation [0-9]* succeeded' <<<"$OUT" ||
        fail "journalctl -x shows no catalog subject"
    grep -q 'The new generation serves and the old one has been told to stop' <<<"$OUT" ||
        fail "journalctl -x shows no catalog text"
    note "journalctl -x: $(grep -m1 'Subject:' <<<"$OUT" | sed 's/^[^A-Za-z]*//')"
}

check_f() { # watchdog
    local n0 pid pid2 cur
    x install -D -m 0644 /opt/test/fixtures/watchdog.conf \
        /etc/systemd/system/baton@demo.service.d/watchdog.conf
    trap 'in_c sh -c "rm -f /etc/systemd/system/baton@demo.service.d/watchdog.conf
        systemctl daemon-reload; systemctl restart baton@demo.service" || true' EXIT
    x systemctl daemon-reload
    x timeout 90 systemctl restart baton@demo.service
    x systemctl show -p WatchdogUSec -p NRestarts -p MainPID baton@demo.service
    note "${OUT//$'\n'/ }"
    [[ $OUT == *WatchdogUSec=2s* ]] || fail "the WatchdogSec=2 drop-in is not in effect"
    n0=$(show baton@demo.service NRestarts)
    pid=$(main_pid baton@demo.service)
    # Alive for more than one interval: baton pings at least every second.
    cur=$(cursor)
    sleep 3
    [[ $(show baton@demo.service NRestarts) == "$n0" && $(show baton@demo.service MainPID) == "$pid" ]] ||
        fail "baton was restarted within 3 s without being stopped (does it ping WATCHDOG=1?)"
    cur=$(cursor)
    x kill -STOP "$pid"
    until_ok 30 restarted baton@demo.service "$n0" ||
        fail "no restart within 30 s after SIGSTOP (NRestarts=$(show baton@demo.service NRestarts))"
    pid2=$(show baton@demo.service MainPID)
    jafter "$cur" UNIT=baton@demo.service
    grep -q 'Watchdog timeout' <<<"$OUT" || fail "no 'Watchdog timeout' in the journal"
    note "journal: $(grep -m1 'Watchdog timeout' <<<"$OUT")"
    note "NRestarts $n0 -> $(show baton@demo.service NRestarts), MainPID $pid -> $pid2"
    get http://127.0.0.1:8080/
    [[ $CODE == 200 ]] || fail "expected 200 after the restart, got '$CODE'"
}

check_g() { # kill -9 under load
    local n0 pid pid2 refused t0 ms
    ensure_active baton@demo.service
    n0=$(show baton@demo.service NRestarts)
    pid=$(main_pid baton@demo.service)
    loadgen_start g http://127.0.0.1:8080/
    trap 'in_c touch /opt/test/out/$SUITE/g.stop || true' EXIT
    t0=$(now_ms)
    x kill -9 "$pid"
    until_ok 30 restarted baton@demo.service "$n0" ||
        fail "not restarted and active within 30 s (NRestarts=$(show baton@demo.service NRestarts))"
    ms=$(($(now_ms) - t0))
    pid2=$(show baton@demo.service MainPID)
    sleep 1
    loadgen_stop g
    note "restarted in $(secs "$ms")s: MainPID $pid -> $pid2, NRestarts $n0 -> $(show baton@demo.service NRestarts)"
    note "$(load_summary g)"
    refused=$(field g refused)
    ((refused == 0)) || fail "$refused connections refused"
    get http://127.0.0.1:8080/
    [[ $CODE == 200 ]] || fail "expected 200 after the restart, got '$CODE'"
}

check_h() { # systemctl stop drains a request in flight
    local t0 ms out rc=0 curlpid cur
    ensure_active baton@demo.service
    in_c curl -sS --max-time 30 -w '\n%{http_code}' 'http://127.0.0.1:8080/?sleep=2000' \
        >"$stage/out/$SUITE/h.curl" 2>&1 &
    curlpid=$!
    # Accepted by a worker: the server side of the connection belongs to node.
    until_ok 10 in_c sh -c "ss -Htnp state established '( sport = :8080 )' | grep -q node" ||
        fail "the slow request was not accepted by a worker within 10 s"
    x ss -Htnp state established '( sport = :8080 )'
    cur=$(cursor)
    t0=$(now_ms)
    x timeout 60 systemctl stop baton@demo.service
    ms=$(($(now_ms) - t0))
    jafter "$cur" UNIT=baton@demo.service
    if grep -E 'Killing process|State .* timed out' <<<"$OUT"; then
        fail "systemd had to kill what baton left behind"
    fi
    jafter "$cur" _SYSTEMD_UNIT=baton@demo.service
    grep -q 'drained, exiting' <<<"$OUT" || fail "no worker said 'drained, exiting'"
    wait "$curlpid" || rc=$?
    out=$(cat "$stage/out/$SUITE/h.curl")
    printf '+ curl ?sleep=2000 (exit %d): %s\n' "$rc" "${out//$'\n'/ }"
    [[ $rc == 0 && ${out##*$'\n'} == 200 && $out == "hello from generation "*$'\n'200 ]] ||
        fail "the request in flight did not complete with a 200: exit $rc, '${out//$'\n'/ }'"
    out=${out//$'\n\n'/$'\n'}
    note "stop took $(secs "$ms")s; the request in flight got ${out##*$'\n'}: ${out%$'\n'*}"
    x systemctl start baton@demo.service
}

check_i() { # fd store without a socket unit
    local cur0 cur1 n0 pid pid1 refused stored bound
    x install -m 0644 /opt/test/fixtures/batonfd.service /etc/systemd/system/batonfd.service
    x systemctl daemon-reload
    trap 'in_c touch /opt/test/out/$SUITE/i1.stop /opt/test/out/$SUITE/i2.stop || true
        in_c systemctl stop batonfd.service || true' EXIT
    cur0=$(cursor)
    x timeout 90 systemctl start batonfd.service
    get http://127.0.0.1:8081/
    [[ $CODE == 200 ]] || fail "expected 200 from batonfd, got '$CODE'"
    # Under load (one run each): systemctl restart, then kill -9.
    pid1=$(show batonfd.service MainPID)
    loadgen_start i1 http://127.0.0.1:8081/
    cur1=$(cursor)
    x timeout 90 systemctl restart batonfd.service
    until_ok 30 is_active batonfd.service || fail "batonfd not active 30 s after the restart"
    sleep 1
    loadgen_stop i1
    note "systemctl restart (MainPID $pid1 -> $(show batonfd.service MainPID)): $(load_summary i1)"
    n0=$(show batonfd.service NRestarts)
    pid=$(main_pid batonfd.service)
    loadgen_start i2 http://127.0.0.1:8081/
    x kill -9 "$pid"
    until_ok 30 restarted batonfd.service "$n0" ||
        fail "batonfd not restarted and active within 30 s after kill -9"
    sleep 1
    loadgen_stop i2
    note "kill -9 (MainPID $pid -> $(show batonfd.service MainPID)): $(load_summary i2)"
    jafter "$cur0" _SYSTEMD_UNIT=batonfd.service "MESSAGE_ID=$MID_LISTENER_STORED"
    stored=$(grep -c . <<<"$OUT" || true)
    note "first start: ${OUT//$'\n'/; }"
    jafter "$cur1" _SYSTEMD_UNIT=batonfd.service "MESSAGE_ID=$MID_LISTENER_BOUND"
    bound=$(grep -c . <<<"$OUT" || true)
    jafter "$cur1" _SYSTEMD_UNIT=batonfd.service
    note "after the first start: $(grep -c 'passed by the service manager' <<<"$OUT" || true) start(s) took the listener from the fd store"
    note "$(grep -m1 'passed by the service manager' <<<"$OUT" || true)"
    refused=$(($(field i1 refused) + $(field i2 refused)))
    ((refused == 0)) || fail "$refused connections refused"
    ((stored >= 1)) || fail "no listener-stored event (MESSAGE_ID=$MID_LISTENER_STORED) on the first start"
    ((bound == 0)) || fail "baton bound the listener again after the first start ($bound listener-bound events)"
    get http://127.0.0.1:8081/
    [[ $CODE == 200 ]] || fail "expected 200 from batonfd at the end, got '$CODE'"
}

check_j() { # Type=notify-reload (systemd >= 254)
    local g v d=/etc/systemd/system/baton@demo.service.d
    v=$(in_c systemctl --version | awk 'NR == 1 {print $2}')
    if ((v < 254)); then
        echo "SKIP: systemd $v has no Type=notify-reload"
        return 0
    fi
    x install -D -m 0644 /opt/test/systemd/notify-reload.conf "$d/notify-reload.conf"
    trap 'in_c sh -c "rm -f '"$d"'/notify-reload.conf; systemctl daemon-reload
        systemctl restart baton@demo.service" || true' EXIT
    x systemctl daemon-reload
    x timeout 90 systemctl restart baton@demo.service
    x systemctl show -p Type -p ExecReload baton@demo.service
    [[ $OUT == *Type=notify-reload* ]] || fail "Type is not notify-reload"
    [[ $OUT != *ExecReload=*path=* ]] || fail "ExecReload= is set: not the SIGHUP path"
    g=$(serving_gen) || fail "not serving: StatusText='$(show baton@demo.service StatusText)'"
    x timeout 90 systemctl reload baton@demo.service
    answers_gen $((g + 1)) ||
        fail "after the reload: expected generation $((g + 1)), got $CODE '$BODY'"
    [[ $(serving_gen) == $((g + 1)) ]] || fail "StatusText is not generation $((g + 1))"
    note "SIGHUP reload $g -> $((g + 1)); $(show baton@demo.service StatusText)"
}

check_m() { # health probes: a release failing its probe, then a serving worker failing its probes
    local cur0 cur1
    x rm -f /run/health-sick-1 /run/health-sick-2
    x install -m 0644 /opt/test/fixtures/health-app.js /usr/share/baton/health-app.js
    x install -m 0644 /opt/test/fixtures/batonhealth.service /etc/systemd/system/batonhealth.service
    x systemctl daemon-reload
    x timeout 60 systemctl start batonhealth.service
    get http://127.0.0.1:8082/
    [[ $CODE == 200 && $BODY == "hello from generation 1 "* ]] || fail "expected generation 1, got $CODE '$BODY'"
    cur0=$(cursor)
    x touch /run/health-sick-2
    if x timeout 60 systemctl reload batonhealth.service; then
        fail "systemctl reload exited 0 with a release whose probe answers 503"
    fi
    # The rolled-back workers drain first (they share the socket and answer while they do).
    until_ok 20 eval '[[ $(show batonhealth.service StatusText) != *"failed, stopping"* ]]' ||
        fail "generation 2 still stopping: $(show batonhealth.service StatusText)"
    get http://127.0.0.1:8082/
    [[ $CODE == 200 && $BODY == "hello from generation 1 "* ]] ||
        fail "expected generation 1 to serve on, got $CODE '$BODY'"
    jafter "$cur0" _SYSTEMD_UNIT=batonhealth.service "MESSAGE_ID=$MID_RELOAD_FAILED"
    [[ $OUT == *"probe http:/healthz got 503"* ]] ||
        fail "no reload-failed entry (MESSAGE_ID=$MID_RELOAD_FAILED) naming the probe's result"
    note "journal, reload-failed: $OUT"
    x journalctl --no-pager -o verbose -u batonhealth.service "MESSAGE_ID=$MID_RELOAD_FAILED"
    grep -q 'BATON_REASON=.*probe http:/healthz got 503' <<<"$OUT" || fail "no BATON_REASON with the probe's result"
    cur1=$(cursor)
    x touch /run/health-sick-1
    # Replaced: the replacements fail too while the file exists; the old workers serve on.
    until_ok 20 in_c sh -c "journalctl --no-pager -u batonhealth.service MESSAGE_ID=$MID_PROBE_FAILED | grep -q 'replacing worker'" ||
        fail "no probe-failed entry 'replacing worker' (MESSAGE_ID=$MID_PROBE_FAILED)"
    get http://127.0.0.1:8082/
    [[ $CODE == 200 ]] || fail "the service stopped answering while its workers failed their probes: $CODE"
    x rm -f /run/health-sick-1
    until_ok 30 in_c sh -c "journalctl --no-pager -u batonhealth.service MESSAGE_ID=$MID_PROBE_FAILED | grep -q 'replaced by pid'" ||
        fail "no worker was replaced after its probes passed again"
    jafter "$cur1" _SYSTEMD_UNIT=batonhealth.service "MESSAGE_ID=$MID_PROBE_FAILED"
    note "journal, probe-failed: $(head -n 2 <<<"$OUT" | tr '\n' ' ')"
    x systemctl is-active batonhealth.service
    x systemctl stop batonhealth.service
}

check_k() { # systemd-analyze verify and security
    local score rc=0
    x sh -c 'cd / && systemd-analyze verify --man=no /etc/systemd/system/baton@.service \
        /etc/systemd/system/baton@.socket baton@demo.service baton@demo.socket' || rc=$?
    ((rc == 0)) || fail "systemd-analyze verify exited $rc"
    [[ -z $OUT ]] || fail "systemd-analyze verify printed something"
    x sh -c 'cd / && systemd-analyze verify baton@demo.service 2>&1' || true
    if [[ -n $OUT ]]; then note "with the man page check: ${OUT//$'\n'/; }"; fi
    x systemd-analyze security --no-pager baton@demo.service
    score=$(grep -o 'Overall exposure level for baton@demo.service: .*' <<<"$OUT" |
        sed 's/.*: //')
    [[ -n $score ]] || fail "no overall exposure level"
    echo "$SUITE $score" >"$stage/out/$SUITE/security"
    note "security: $score; not set: $(awk '$1 != "✓" && $2 ~ /=/ {printf "%s ", $2}' <<<"$OUT")"
}

# StatusText shows generation $1 draining one connection; the journal has a drain-finished entry for generation $2
# after cursor $1.
l_status_drains() { [[ $(show baton@demo.service StatusText) == *"generation $1 draining: 1 connection, "* ]]; }
l_drain_logged() {
    [[ -n $(in_c python3 /opt/test/fixtures/jafter.py "$1" "MESSAGE_ID=$MID_DRAINED" "BATON_GENERATION=$2") ]]
}

check_l() { # systemctl reload returns while the old generation drains a slow request
    local g cur slow code
    ensure_active baton@demo.service
    g=$(serving_gen) || fail "not serving: StatusText='$(show baton@demo.service StatusText)'"
    cur=$(cursor)
    in_c curl -sS --max-time 40 -o "/opt/test/out/$SUITE/l.body" -w '%{http_code}' \
        'http://127.0.0.1:8080/?sleep=6000' >"$stage/out/$SUITE/l.code" 2>&1 &
    slow=$!
    trap 'kill '"$slow"' 2>/dev/null || true' EXIT
    until_ok 10 in_c sh -c "ss -Htn state established '( sport = :8080 )' | grep -q ." ||
        fail "the slow request is not connected"
    x timeout 90 systemctl reload baton@demo.service
    kill -0 "$slow" 2>/dev/null ||
        fail "the slow request ended before systemctl reload returned: the reload waited for the drain"
    until_ok 5 l_status_drains "$g" ||
        fail "StatusText does not show generation $g draining 1 connection: $(show baton@demo.service StatusText)"
    note "right after systemctl reload: $(show baton@demo.service StatusText)"
    x baton status --name demo --json
    in_c python3 -c 'import json,sys; g=[x for x in json.loads(sys.argv[1])["generations"] if x["id"]==int(sys.argv[2])]
assert g and g[0]["state"] == "draining" and g[0]["connections"] == 1 and 0 < g[0]["drainSecondsLeft"] <= 30, g' \
        "$OUT" "$g" || fail "baton status --json does not show generation $g draining 1 connection"
    wait "$slow" || fail "the slow request failed: $(cat "$stage/out/$SUITE/l.code")"
    code=$(cat "$stage/out/$SUITE/l.code")
    x cat "/opt/test/out/$SUITE/l.body"
    [[ $code == 200 && $OUT == "hello from generation $g "* ]] ||
        fail "the slow request: expected 200 from generation $g, got $code '$OUT'"
    until_ok 30 l_drain_logged "$cur" "$g" ||
        fail "no drain-finished entry (MESSAGE_ID=$MID_DRAINED) for generation $g"
    x journalctl --no-pager -o verbose -n 1 "MESSAGE_ID=$MID_DRAINED" "BATON_GENERATION=$g"
    grep -q '^ *BATON_CONNECTIONS=0' <<<"$OUT" || fail "the drain-finished entry has no BATON_CONNECTIONS=0"
    note "journal: $(sed -n 's/^ *MESSAGE=//p' <<<"$OUT")"
}

check_n() { # --metrics through BATON_OPTIONS
    local conf=/etc/baton/demo.conf
    x cp "$conf" /tmp/demo.conf.orig
    trap 'in_c sh -c "cp /tmp/demo.conf.orig '"$conf"'; systemctl restart baton@demo.service" || true' EXIT
    x sed -i 's|^BATON_OPTIONS=.*|& --metrics 127.0.0.1:9464|' "$conf"
    x timeout 90 systemctl restart baton@demo.service
    until_ok 30 is_active baton@demo.service || fail "baton@demo.service not active 30 s after the restart"
    [[ $(serving_gen) == 1 ]] || fail "not serving generation 1: StatusText='$(show baton@demo.service StatusText)'"
    x timeout 90 systemctl reload baton@demo.service
    local page
    get http://127.0.0.1:9464/metrics
    page=$BODY
    [[ $CODE == 200 ]] || fail "expected 200 from /metrics, got '$CODE'"
    grep -qx 'baton_serving_generation 2.0' <<<"$page" || fail "the page does not show serving generation 2"
    grep -qx 'baton_reloads_total{result="ok"} 1' <<<"$page" || fail "the page does not show one reload ok"
    get http://127.0.0.1:9464/
    [[ $CODE == 404 ]] || fail "expected 404 for /, got '$CODE'"
    note "$(grep -E '^(baton_serving_generation|baton_reloads_total|process_resident_memory_bytes|process_open_fds)[ {]' \
        <<<"$page" | tr '\n' ' ')"
}

check_o() { # canary and held reloads
    local g cur conf=/etc/baton/demo.conf node=/usr/share/baton/examples/node
    g=$(serving_gen) || fail "not serving: StatusText='$(show baton@demo.service StatusText)'"
    cur=$(cursor)
    trap 'in_c sh -c "install -m 0644 /opt/test/examples/node/app.js '"$node"'/app.js
        install -m 0644 /opt/test/systemd/demo.conf '"$conf"'; systemctl restart baton@demo.service" || true' EXIT
    x timeout 90 baton reload --quiet --name demo --hold || fail "baton reload --hold failed"
    [[ $OUT == "generation $((g + 1)) serving beside generation $g; run 'baton promote' or 'baton rollback'" ]] ||
        fail "baton reload --hold did not say the generation is held"
    x systemctl show -p StatusText -p ActiveState baton@demo.service
    [[ $OUT == *"generation $((g + 1)) held beside generation $g"* ]] || fail "StatusText does not show the hold"
    grep -q '^ActiveState=active' <<<"$OUT" || fail "the service is not active while held"
    note "held: ${OUT//$'\n'/; }"
    if x timeout 90 systemctl reload baton@demo.service; then fail "systemctl reload exited 0 while held"; fi
    x timeout 90 baton promote --name demo || fail "baton promote failed"
    [[ $(serving_gen) == $((g + 1)) ]] || fail "not serving generation $((g + 1)) after promote"
    jafter "$cur" "MESSAGE_ID=$MID_HELD"
    [[ -n $OUT ]] || fail "no generation-held entry (MESSAGE_ID=$MID_HELD)"
    note "journal, held: $OUT"

    # A canary for every reload, from BATON_OPTIONS.
    x sed -i 's/^BATON_OPTIONS=/BATON_OPTIONS=--canary 3s /' "$conf"
    x timeout 90 systemctl restart baton@demo.service
    until_ok 30 is_active baton@demo.service || fail "not active after the restart"
    g=$(serving_gen) || fail "not serving after the restart"
    cur=$(cursor)
    x install -m 0644 /opt/test/examples/node/app.js "$node/good.js"
    x install -m 0644 /opt/test/fixtures/late-crash-app.js "$node/app.js"
    if x timeout 90 systemctl reload baton@demo.service; then fail "systemctl reload exited 0 with a late crash"; fi
    get http://127.0.0.1:8080/
    [[ $CODE == 200 && $BODY == "hello from generation $g "* ]] ||
        fail "expected the old generation $g to answer, got $CODE '$BODY'"
    jafter "$cur" "MESSAGE_ID=$MID_CANARY_FAILED"
    [[ $OUT == *"canary worker 1 (pid "*") exited with exit 1 after "*" of its 3s canary window"* ]] ||
        fail "no canary-failed entry with the reason (MESSAGE_ID=$MID_CANARY_FAILED): '$OUT'"
    note "journal, canary failed: $OUT"
    x install -m 0644 /opt/test/examples/node/app.js "$node/app.js"
    cur=$(cursor)
    x timeout 90 systemctl reload baton@demo.service || fail "systemctl reload of the good release failed"
    jafter "$cur" "MESSAGE_ID=$MID_CANARY_PASSED"
    [[ -n $OUT ]] || fail "no canary-passed entry (MESSAGE_ID=$MID_CANARY_PASSED)"
    note "journal, canary passed: $OUT"
}

check_p() { # a soak window: a release that crashes after it is ready fails systemctl reload
    local g cur conf=/etc/baton/demo.conf node=/usr/share/baton/examples/node
    trap 'in_c sh -c "install -m 0644 /opt/test/examples/node/app.js '"$node"'/app.js
        install -m 0644 /opt/test/systemd/demo.conf '"$conf"'; systemctl restart baton@demo.service" || true' EXIT
    x sed -i 's/^BATON_OPTIONS=/BATON_OPTIONS=--min-ready 5s /' "$conf"
    x timeout 90 systemctl restart baton@demo.service
    until_ok 30 is_active baton@demo.service || fail "not active after the restart"
    g=$(serving_gen) || fail "not serving after the restart"
    cur=$(cursor)
    x install -m 0644 /opt/test/examples/node/app.js "$node/good.js"
    x install -m 0644 /opt/test/fixtures/late-crash-app.js "$node/app.js"
    if x timeout 90 systemctl reload baton@demo.service; then fail "systemctl reload exited 0 with a late crash"; fi
    note "systemctl reload failed as expected: ${OUT//$'\n'/ }"
    get http://127.0.0.1:8080/
    [[ $CODE == 200 && $BODY == "hello from generation $g "* ]] ||
        fail "expected the old generation $g to answer, got $CODE '$BODY'"
    jafter "$cur" "MESSAGE_ID=$MID_RELOAD_FAILED"
    [[ $OUT == *"within --min-ready 5s"* ]] ||
        fail "no reload-failed entry with the soak's reason (MESSAGE_ID=$MID_RELOAD_FAILED): '$OUT'"
    note "journal, reload failed: $OUT"
    x install -m 0644 /opt/test/examples/node/app.js "$node/app.js"
    x timeout 90 systemctl reload baton@demo.service || fail "systemctl reload of the good release failed"
}

check_q() { # a seccomp filter without pidfd_getfd: the rescue is off, said once at start; reloads still serve
    local g cur n dropin=/run/systemd/system/baton@demo.service.d
    trap 'in_c sh -c "rm -f '"$dropin"'/no-getfd.conf; systemctl daemon-reload;
        systemctl restart baton@demo.service" || true' EXIT
    x mkdir -p "$dropin"
    x sh -c "printf '[Service]\nSystemCallFilter=~pidfd_getfd\n' >$dropin/no-getfd.conf"
    x systemctl daemon-reload
    cur=$(cursor)
    x timeout 90 systemctl restart baton@demo.service
    until_ok 30 is_active baton@demo.service || fail "not active after the restart"
    g=$(serving_gen) || fail "not serving after the restart"
    x timeout 90 systemctl reload baton@demo.service || fail "systemctl reload failed with the rescue off"
    answers_gen $((g + 1)) || fail "generation $((g + 1)) does not answer after the reload"
    x journalctl --no-pager -o cat --after-cursor "$cur" -u baton@demo.service
    n=$(grep -c 'connection rescue is off' <<<"$OUT" || true)
    ((n == 1)) || fail "'connection rescue is off' said $n times, expected once"
    grep -q 'connection rescue is off: not permitted here' <<<"$OUT" ||
        fail "no reason given: $(grep -m1 'connection rescue is off' <<<"$OUT")"
    ! grep -q 'took over' <<<"$OUT" || fail "connections were taken over with pidfd_getfd filtered out"
    note "$(grep -m1 'connection rescue is off' <<<"$OUT")"
}

all_checks=(a b c d e f g h i j k l m n o p q)
check_title+=(
    [a]="socket activation starts generation 1, STATUS= shown"
    [b]="systemctl reload: next generation answers right after"
    [c]="broken release: reload fails, old generation serves"
    [d]="10 reloads under load: 0 failed requests"
    [e]="journal: MESSAGE_ID, BATON_GENERATION, catalog"
    [f]="watchdog: SIGSTOPped baton killed and restarted"
    [g]="kill -9 under load: restarted, 0 refused"
    [h]="systemctl stop drains a request in flight"
    [i]="fd store without a socket unit: 0 refused, bound once"
    [j]="Type=notify-reload: SIGHUP reload"
    [k]="systemd-analyze verify clean, security score"
    [l]="systemctl reload returns while the old generation drains"
    [m]="health probes: reload fails on a 503 probe, liveness replacement"
    [n]="--metrics in BATON_OPTIONS: GET /metrics under the unit"
    [p]="--min-ready: a release crashing after it is ready fails the reload"
    [o]="canary and held reloads: hold, refused reload, promote; a canary fails"
    [q]="SystemCallFilter=~pidfd_getfd: rescue off, said once; reloads serve"
)

# After a "Bad system call" (SIGSYS from SystemCallFilter=) in the journal: the kernel's
# audit lines name the system call (x86_64 numbers; the usual suspects are decoded).
seccomp_diagnostics() {
    local line nr name
    "$rig" exec "$(name_of "$1")" journalctl -u baton@demo.service --no-pager 2>/dev/null |
        grep -q 'Bad system call' || return 0
    echo "    --- seccomp: kernel audit lines (type=1326) for the last blocked system calls"
    dmesg 2>/dev/null | grep 'type=1326' | tail -n 3 | while read -r line; do
        nr=$(sed -n 's/.* syscall=\([0-9]*\).*/\1/p' <<<"$line")
        case $nr in
            329) name=pkey_mprotect ;; 330) name=pkey_alloc ;; 331) name=pkey_free ;;
            425) name=io_uring_setup ;; 426) name=io_uring_enter ;; 427) name=io_uring_register ;;
            *) name="see ausyscall $nr" ;;
        esac
        echo "    $line  [syscall $nr = $name]"
    done
}

# On failure: the unit's journal (and batonfd's for i), and what seccomp blocked.
check_diagnostics() {
    local s=$1 id=$2
    echo "--- journalctl -u baton@demo -n 50"
    "$rig" exec "$(name_of "$s")" journalctl -u baton@demo.service -n 50 --no-pager 2>&1
    seccomp_diagnostics "$s"
    if [[ $id == i ]]; then
        echo "--- journalctl -u batonfd -n 30"
        "$rig" exec "$(name_of "$s")" journalctl -u batonfd.service -n 30 --no-pager 2>&1
    fi
}

run_checks() {
    local s=$1 id
    for id in "${all_checks[@]}"; do
        if ((${#only[@]})) && [[ " ${only[*]} " != *" $id "* ]]; then continue; fi
        check "$s" "$id"
    done
}

# The timings, the security scores and the final count; fails if any check failed.
finish() {
    local s
    echo
    timings "${all_checks[@]}"
    for s in "${suites[@]}"; do
        if [[ -s $stage/out/$s/security ]]; then echo "security: $(cat "$stage/out/$s/security")"; fi
    done
    summary systemd
}

# -------------------------------------------------------------------------------- main

step build build_baton
if ((step_rc)); then
    echo "not ok - build: the static baton did not build"
    record "not ok" host build 0
    finish || true
    exit 1
fi
write_stage

rootfs_phase
if ((phase_rc)); then
    echo "not ok - rootfs: could not build the root file systems"
    record "not ok" host rootfs 0
    finish || true
    exit 1
fi
boot_phase install_in
if ((${#booted[@]})); then phase checks run_checks "${booted[@]}"; fi
teardown_phase
finish


# Notes, found by doing it:
# - Never signal a MainPID read from "systemctl show" without checking it: a failed service has
#   MainPID=0, and "kill -9 0" run through "rig.sh exec" (nsenter keeps our process group)
#   kills this script's whole process group. main_pid() refuses 0.
# - journalctl 252 (Debian 12) prints nothing for --after-cursor combined with a field match
#   (MESSAGE_ID=...), although each works alone; --cursor (inclusive) with a match works.
#   fixtures/jafter.py reads "--after-cursor -o json" and filters in Python instead.
# - --since with fractional seconds is not precise enough to separate two events.
# - "systemctl show -p ExecReload" prints nothing at all when ExecReload= is empty.
# - "systemd-analyze verify" checks Documentation=man: pages with man(1), which minbase trees
#   lack: it then says "Command 'man baton(1)' failed"; the check uses --man=no and shows that
#   output as a note.
# - The first curl through the socket can be answered while the service is still
#   "activating": the first worker accepts as soon as it listens, before baton has READY=1
#   from every worker. Check (a) waits for "active" before reading STATUS=.
# - Both suites at once: about 70 s for the checks on 2 cores; one after the other about 110 s.
