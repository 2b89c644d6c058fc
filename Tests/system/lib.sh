# shellcheck shell=bash disable=SC2154
# Shared by the container scripts (smoke.sh, systemd-tests.sh, upgrade-tests.sh); source it, don't run it.
# Expects the caller's arrays jobs_running (background job PIDs) and names (container names) and $rig.

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
