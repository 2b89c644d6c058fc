#!/usr/bin/env bash
# rig.sh - boot a real systemd as PID 1 of a systemd-nspawn container, for system tests.
#
# Works on hosts whose PID 1 is not systemd (no system bus, no machined), with hybrid
# (cgroup v1 + cgroup2 at /sys/fs/cgroup/unified), legacy or pure cgroup2 hierarchies.
# Run as root.
#
# Usage:
#   rig.sh deps                     install debootstrap + systemd-container if missing
#   rig.sh rootfs SUITE DIR         debootstrap SUITE (bookworm, trixie) into DIR, once:
#                                   DIR/.rig-complete marks a finished tree
#   rig.sh boot NAME DIR HOSTDIR    boot DIR as container NAME (HOSTDIR bound to /opt/test),
#                                   return when systemd is "running" or "degraded"
#   rig.sh exec NAME CMD...         run CMD inside NAME (stdin/stdout/exit status preserved)
#   rig.sh stop NAME                stop NAME and remove its cgroups and state (idempotent)
#   rig.sh status NAME              exit 0 if NAME is booted, print its PIDs
#
#   e.g. rig.sh exec NAME systemctl --version      (systemd version inside)
#
# Environment:
#   RIG_STATE    state dir root, default /run/baton-rig (per container: $RIG_STATE/NAME/,
#                holding nspawn.pid, leader.pid, nspawn.log)
#   RIG_TIMEOUT  seconds for each bounded wait during boot, default 60
#   RIG_CGROUP   cgroup layout inside the container: "unified" (pure cgroup2, as on a
#                stock Debian 12/13 host; the default when the host has a cgroup2 mount),
#                "hybrid" (what nspawn picks by itself on a hybrid host), or "auto"
#                (leave it to nspawn)
#   RIG_MIRROR   Debian mirror for debootstrap; default: the host's apt mirror for its own
#                release (from /etc/apt/sources.list*), else http://deb.debian.org/debian
#
# Every boot starts from the clean tree (--volatile=overlay: writes go to a tmpfs), so one
# rootfs can back several containers at once. The container has only its own loopback
# (--private-network). The container's cgroups are named baton-rig-NAME.
# See also the notes at the end of this file.

set -euo pipefail

SELF=$(realpath "${BASH_SOURCE[0]}")
RIG_STATE=${RIG_STATE:-/run/baton-rig}
RIG_TIMEOUT=${RIG_TIMEOUT:-60}
CONTAINER_PATH=/usr/sbin:/usr/bin:/sbin:/bin
PACKAGES=systemd,systemd-sysv,libsystemd0,dbus,curl,iproute2,procps,nodejs,python3

die() { echo "rig: $*" >&2; exit 1; }
note() { echo "rig: $*" >&2; }

need_root() { [[ $(id -u) == 0 ]] || die "must run as root"; }

check_name() {
    [[ $1 =~ ^[A-Za-z0-9][A-Za-z0-9-]{0,39}$ ]] ||
        die "bad container name '$1' (letters, digits, '-'; at most 40 characters)"
}

# True if PID exists and is not a zombie.
alive() {
    local stat
    [[ -n ${1:-} ]] || return 1
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }            # field 3 (state) follows the ")" closing comm
    [[ ${stat%% *} != Z ]]
}

dead() { ! alive "$1"; }

# True if PID is alive and runs the executable named $2 (basename).
runs() {
    local exe
    alive "$1" || return 1
    exe=$(readlink "/proc/$1/exe" 2>/dev/null) || return 1
    [[ ${exe##*/} == "$2" ]]
}

now_ms() { local t=${EPOCHREALTIME//[!0-9]/}; echo $((t / 1000)); }

# Run "$@" until it succeeds, for at most $1 seconds. Polls every 50 ms.
wait_for() {
    local secs=$1; shift
    local deadline=$(($(now_ms) + secs * 1000))
    until "$@"; do
        (($(now_ms) < deadline)) || return 1
        sleep 0.05
    done
}

# ---------------------------------------------------------------------------------- deps

cmd_deps() {
    need_root
    local missing=()
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
    command -v nsenter >/dev/null || missing+=(util-linux)
    command -v pgrep >/dev/null || missing+=(procps)
    ((${#missing[@]})) || return 0
    # apt-cache knows nothing before the first "apt-get update": update once if needed.
    if ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then
        apt-get update -qq
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# -------------------------------------------------------------------------------- rootfs

# The host's Debian mirror: the URI serving the host's own release (not -security,
# -updates...), from one-line .list files or deb822 .sources files.
host_mirror() {
    if [[ -n ${RIG_MIRROR:-} ]]; then echo "$RIG_MIRROR"; return; fi
    local codename="" uri=""
    # shellcheck disable=SC1091
    codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}") || true
    if [[ -n $codename ]]; then
        local lists=() sources=() f
        for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
            [[ -f $f ]] && lists+=("$f")
        done
        for f in /etc/apt/sources.list.d/*.sources; do
            [[ -f $f ]] && sources+=("$f")
        done
        if ((${#lists[@]})); then
            # deb [options] URI SUITE COMPONENT...
            uri=$(awk -v s="$codename" '
                $1 == "deb" {
                    i = 2
                    if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                    if ($(i + 1) != s) next
                    for (j = i + 2; j <= NF; j++) if ($j == "main") { print $i; exit }
                }' "${lists[@]}")
        fi
        if [[ -z $uri ]] && ((${#sources[@]})); then
            # deb822 paragraphs: Types, URIs, Suites, Components (single-line values).
            uri=$(awk -v s="$codename" '
                function check() {
                    if (!found && types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " s " ") &&
                        comps ~ /(^| )main( |$)/ && enabled != "no") {
                        split(uris, u, " "); print u[1]; found = 1; exit
                    }
                    types = uris = suites = comps = enabled = ""
                }
                /^[ \t]*$/ { check(); next }
                /^[Tt]ypes:/      { sub(/^[^:]*:[ \t]*/, ""); types = $0 }
                /^URIs:/          { sub(/^[^:]*:[ \t]*/, ""); uris = $0 }
                /^[Ss]uites:/     { sub(/^[^:]*:[ \t]*/, ""); suites = $0 }
                /^[Cc]omponents:/ { sub(/^[^:]*:[ \t]*/, ""); comps = $0 }
                /^[Ee]nabled:/    { sub(/^[^:]*:[ \t]*/, ""); enabled = tolower($0) }
                END { check() }' "${sources[@]}")
        fi
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

# Unmount whatever an interrupted debootstrap left mounted under $1 (it may bind-mount
# the host's /dev, /proc, /sys there), then delete $1 without crossing into other
# file systems.
remove_tree() {
    local dir=$1 mnt
    [[ -e $dir ]] || return 0
    while read -r mnt; do
        umount -l "$mnt" 2>/dev/null || true
    done < <(findmnt -rn -o TARGET | awk -v d="$dir/" 'index($0, d) == 1' | sort -r)
    rm -rf --one-file-system "$dir"
}

cmd_rootfs() {
    (($# == 2)) || die "usage: rig.sh rootfs SUITE DIR"
    need_root
    local suite=$1 dir
    dir=$(realpath -m "$2")
    [[ -e $dir/.rig-complete ]] && return 0
    command -v debootstrap >/dev/null || die "debootstrap missing: run 'rig.sh deps'"

    # One build per tree at a time: a second caller waits, then finds the tree done.
    mkdir -p "$(dirname "$dir")"
    exec 9>"$dir.lock"
    flock 9
    [[ -e $dir/.rig-complete ]] && return 0
    [[ -e $dir ]] && die "$dir exists but is not a finished rig tree; remove it"

    local tmp=$dir.tmp mirror log=$dir.debootstrap.log
    mirror=$(host_mirror)
    remove_tree "$tmp"          # left by an interrupted build
    note "building $suite rootfs in $dir from $mirror (1 to 3 minutes)"
    if ! debootstrap --variant=minbase --include="$PACKAGES" \
            "$suite" "$tmp" "$mirror" >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        remove_tree "$tmp"
        die "debootstrap of $suite failed (log: $log)"
    fi

    # No login prompt on the console: nothing reads it, and it would wait forever.
    ln -sf /dev/null "$tmp/etc/systemd/system/console-getty.service"
    # debootstrap copies the host's /etc/hostname, which would override the container
    # name that nspawn sets; and minbase has no /etc/hosts, so "localhost" would not
    # resolve.
    rm -f "$tmp/etc/hostname"
    printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' \
        >"$tmp/etc/hosts"
    # Keep the tree small: no docs, man pages, translations or apt caches.
    rm -rf "$tmp"/usr/share/{doc,man,info,locale}/* "$tmp"/var/cache/apt/*.bin \
        "$tmp"/var/cache/apt/archives/*.deb
    find "$tmp/var/lib/apt/lists" -maxdepth 1 -type f ! -name lock -delete

    local version
    # shellcheck disable=SC2016  # ${Version} is a dpkg-query field, not a shell variable
    version=$(chroot "$tmp" dpkg-query -W -f='${Version}' systemd)
    printf 'suite=%s\nmirror=%s\nsystemd=%s\nbuilt=%s\n' \
        "$suite" "$mirror" "$version" "$(date -u +%FT%TZ)" >"$tmp/.rig-complete"
    mv -T "$tmp" "$dir"
    rm -f "$log"
}

# ------------------------------------------------------------------------------- cgroups

# The cgroup directories of container NAME, one per line: in the hybrid layout one in the
# cgroup2 tree (/sys/fs/cgroup/unified) and one in the named systemd v1 tree; on a pure
# cgroup2 host one at the top.
cgroup_dirs() {
    local name=baton-rig-$1 root=/sys/fs/cgroup
    if [[ $(stat -fc %T "$root" 2>/dev/null) == cgroup2fs ]]; then
        echo "$root/$name"
        return
    fi
    local h
    for h in unified systemd; do
        if mountpoint -q "$root/$h"; then echo "$root/$h/$name"; fi
    done
}

# Remove cgroup directories deepest first; kill what is still in them (only processes of
# this container can be there). Retries while the kernel finishes freeing them.
remove_cgroups() {
    local d pid left try
    for d in "$@"; do
        [[ -d $d ]] || continue
        for ((try = 0; try < 50; try++)); do
            while read -r pid; do
                kill -KILL "$pid" 2>/dev/null || true
            done < <(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null)
            find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
            [[ -d $d ]] || break
            sleep 0.1
        done
        if [[ -d $d ]]; then
            left=$(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | tr '\n' ' ')
            note "could not remove cgroup $d (processes: ${left:-none})"
        fi
    done
}

# ---------------------------------------------------------------------------- boot/stop

state_dir() { echo "$RIG_STATE/$1"; }

# The container's PID 1 as seen from the host: the child of nspawn running systemd.
find_leader() {
    local nspawn=$1 child
    for child in $(pgrep -P "$nspawn" 2>/dev/null); do
        if runs "$child" systemd; then echo "$child"; return 0; fi
    done
    return 1
}

boot_failed() {
    local name=$1 msg=$2 log
    log=$(state_dir "$name")/nspawn.log
    note "boot of $name failed: $msg"
    if [[ -s $log ]]; then
        note "last lines of $log:"
        tail -n 30 "$log" | tr -d '\r' | sed 's/^/  | /' >&2
    fi
    cmd_stop "$name"
    exit 1
}

cmd_boot() {
    (($# == 3)) || die "usage: rig.sh boot NAME DIR HOSTDIR"
    need_root
    local name=$1 dir hostdir state
    check_name "$name"
    dir=$(realpath -e "$2" 2>/dev/null) || die "no rootfs at $2"
    hostdir=$(realpath -e "$3" 2>/dev/null) || die "no host directory $3"
    [[ -e $dir/.rig-complete ]] || die "$dir is not a finished rootfs: run 'rig.sh rootfs'"

    local cgroups=() d
    mapfile -t cgroups < <(cgroup_dirs "$name")

    # SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 gives the container pure cgroup2 (our cgroup in
    # the host's cgroup2 tree becomes its root); 0 gives it the hybrid layout.
    local mode=${RIG_CGROUP:-} unified=""
    if [[ -z $mode ]]; then
        mode=auto
        if [[ ${cgroups[0]:-} == /sys/fs/cgroup/unified/* ||
              $(stat -fc %T /sys/fs/cgroup) == cgroup2fs ]]; then mode=unified; fi
    fi
    case $mode in
        unified) unified=1 ;;
        hybrid) unified=0 ;;
        auto) ;;
        *) die "RIG_CGROUP must be unified, hybrid or auto, not '$mode'" ;;
    esac

    state=$(state_dir "$name")
    if [[ -e $state ]]; then
        runs "$(cat "$state/nspawn.pid" 2>/dev/null)" systemd-nspawn &&
            die "container $name is already running"
        cmd_stop "$name"          # stale state from a crashed run
    fi
    mkdir -p "$state"
    echo "$dir" >"$state/rootfs"
    echo "$mode" >"$state/cgroup-mode"
    for d in "${cgroups[@]}"; do mkdir -p "$d"; done

    # A subshell joins the container's cgroups and becomes nspawn (exec keeps its PID), so
    # the caller stays where it is. setsid: the caller's Ctrl-C or hang-up must not reach
    # nspawn; "rig.sh stop" ends it. All output goes to the log, never to the caller's
    # stdout (a caller reading our stdout through a pipe would otherwise never see EOF).
    (
        for d in "${cgroups[@]}"; do echo "$BASHPID" >"$d/cgroup.procs"; done
        if [[ -n $unified ]]; then export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=$unified; fi
        export TERM=dumb        # passed on to the container: a log without colour codes
        # nspawn's own seccomp filter (on top of the units' own) refuses pidfd_getfd always and process_vm_readv without
        # CAP_SYS_PTRACE (EPERM), which a real host does not do: the connection rescue and --ready listen's look into
        # poll/select need them. The units under test still drop every capability and keep their SystemCallFilter=.
        exec setsid systemd-nspawn -b -D "$dir" -M "$name" \
            --register=no --keep-unit --settings=no --console=read-only --capability=CAP_SYS_PTRACE --system-call-filter=pidfd_getfd \
            --private-network --volatile=overlay --bind="$hostdir:/opt/test"
    ) </dev/null >"$state/nspawn.log" 2>&1 &
    local nspawn=$! leader=""
    disown "$nspawn"            # no "Killed" job report from this shell if we kill it
    echo "$nspawn" >"$state/nspawn.pid"

    local deadline=$(($(now_ms) + RIG_TIMEOUT * 1000))
    until leader=$(find_leader "$nspawn"); do
        alive "$nspawn" || boot_failed "$name" "systemd-nspawn exited"
        (($(now_ms) < deadline)) ||
            boot_failed "$name" "no systemd child of nspawn ($nspawn) after ${RIG_TIMEOUT}s"
        sleep 0.05
    done
    echo "$leader" >"$state/leader.pid"

    wait_for "$RIG_TIMEOUT" test -S "/proc/$leader/root/run/systemd/private" ||
        boot_failed "$name" "no /run/systemd/private inside after ${RIG_TIMEOUT}s"

    local status
    status=$(timeout "$RIG_TIMEOUT" "$SELF" exec "$name" \
        systemctl is-system-running --wait 2>&1) || true
    case $status in
        running) ;;
        degraded)
            note "$name is degraded; failed units:"
            "$SELF" exec "$name" systemctl --failed --no-legend --plain >&2 || true
            ;;
        *) boot_failed "$name" "system state '${status:-timed out}' after ${RIG_TIMEOUT}s" ;;
    esac
}

cmd_exec() {
    (($# >= 2)) || die "usage: rig.sh exec NAME CMD..."
    local name=$1 state leader; shift
    state=$(state_dir "$name")
    leader=$(cat "$state/leader.pid" 2>/dev/null) || die "container $name is not booted"
    runs "$leader" systemd || die "container $name is not running (PID 1 $leader is gone)"
    exec nsenter -t "$leader" -a env -i PATH="$CONTAINER_PATH" "$@"
}

cmd_status() {
    (($# == 1)) || die "usage: rig.sh status NAME"
    local state nspawn leader
    state=$(state_dir "$1")
    nspawn=$(cat "$state/nspawn.pid" 2>/dev/null) || return 1
    leader=$(cat "$state/leader.pid" 2>/dev/null) || return 1
    runs "$nspawn" systemd-nspawn && runs "$leader" systemd || return 1
    echo "nspawn=$nspawn leader=$leader cgroup=$(cat "$state/cgroup-mode")" \
        "rootfs=$(cat "$state/rootfs")"
}

cmd_stop() {
    (($# == 1)) || die "usage: rig.sh stop NAME"
    need_root
    local name=$1 state nspawn leader
    check_name "$name"
    state=$(state_dir "$name")
    nspawn=$(cat "$state/nspawn.pid" 2>/dev/null) || nspawn=""
    if runs "$nspawn" systemd-nspawn; then
        leader=$(find_leader "$nspawn") || leader=""
        # SIGTERM: nspawn asks the container's systemd to halt, and exits after it.
        kill -TERM "$nspawn" 2>/dev/null || true
        if ! wait_for 10 dead "$nspawn"; then
            note "$name did not halt within 10s; killing it"
            if runs "$leader" systemd; then kill -KILL "$leader" 2>/dev/null || true; fi
            kill -KILL "$nspawn" 2>/dev/null || true
            wait_for 5 dead "$nspawn" || note "nspawn $nspawn of $name survived SIGKILL"
        fi
    fi
    local cgroups=()
    mapfile -t cgroups < <(cgroup_dirs "$name")
    remove_cgroups "${cgroups[@]}"
    rm -rf "$state"
}

# ---------------------------------------------------------------------------------- main

main() {
    (($#)) || { sed -n '2,/^$/s/^# \{0,1\}//p' "$0" >&2; exit 2; }
    local cmd=$1; shift
    case $cmd in
        deps) cmd_deps "$@" ;;
        rootfs) cmd_rootfs "$@" ;;
        boot) cmd_boot "$@" ;;
        exec) cmd_exec "$@" ;;
        status) cmd_status "$@" ;;
        stop) cmd_stop "$@" ;;
        -h|--help|help) sed -n '2,/^$/s/^# \{0,1\}//p' "$0" ;;
        *) die "unknown command '$cmd' (deps, rootfs, boot, exec, status, stop)" ;;
    esac
}

main "$@"

# Notes, found by doing it (Debian 12 host with hybrid cgroups, PID 1 not systemd):
# - Without --register=no --keep-unit nspawn needs the system bus and fails.
# - Without our own cgroups nspawn puts its "payload"/"supervisor" cgroups in the root.
# - machinectl and systemd-run -M need machined on the host: use "rig.sh exec" instead.
# - Both 252 and 257 boot in either cgroup layout; "unified" is the default because it is
#   what a stock Debian 12/13 host runs, and systemd 256+ deprecates cgroup v1.
# - Commands run by "rig.sh exec" are in the container's namespaces but not in its
#   cgroups (/proc/self/cgroup shows "/../.."): systemd inside does not track them. Run
#   what must be supervised as a unit (systemd-run). They die with the container anyway.
# - debootstrap copies the host's /etc/hostname into the tree (the container would be
#   called like the host), and minbase has no /etc/hosts: "rootfs" fixes both.
# - An interrupted debootstrap can leave /proc (and more) mounted inside the tree:
#   never "rm -rf" a half-built tree without unmounting first (remove_tree does).
# - The container's systemd may not halt within 10 s of SIGTERM while a start job is
#   still running (e.g. a oneshot that blocks boot): "stop" then SIGKILLs.
# - On a host whose PID 1 reaps orphans late, a stopped nspawn shows as <defunct> for a
#   few seconds: zombies count as gone here.
# - The pure cgroup2 host path (our cgroup at /sys/fs/cgroup/baton-rig-NAME) is written
#   from the kernel's rules, but was not tried on such a host.
