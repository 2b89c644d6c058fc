#!/usr/bin/env bash
# Installs the Debian packages baton's build, demo and tests need, when they are missing.
set -euo pipefail
need=()
command -v pkg-config >/dev/null || need+=(pkg-config)
pkg-config --exists libsystemd 2>/dev/null || need+=(libsystemd-dev)
command -v node >/dev/null || command -v nodejs >/dev/null || need+=(nodejs)
command -v python3 >/dev/null || need+=(python3)
command -v strace >/dev/null || need+=(strace)  # the tests hold baton in a race window with strace's syscall delays
for extra in "$@"; do
  command -v "${extra%%:*}" >/dev/null || need+=("${extra##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "deps: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
