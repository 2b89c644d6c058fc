#!/usr/bin/env bash
# Installs the Debian packages baton's build, demo and tests need, when they are missing.
set -euo pipefail
need=()
command -v pkg-config >/dev/null || need+=(pkg-config)
pkg-config --exists libsystemd 2>/dev/null || need+=(libsystemd-dev)
command -v node >/dev/null || command -v nodejs >/dev/null || need+=(nodejs)
command -v python3 >/dev/null || need+=(python3)
command -v strace >/dev/null || need+=(strace)  # the tests hold baton in a race window with strace's syscall delays
# With no arguments (the demo and the tests): the C compiler and nm for the bind-adoption library and its tests,
# and the servers those tests run unchanged: express (Debian's node-express), Ruby's WEBrick, and Go's net/http with
# coreos/go-systemd's activation package (built from Debian's packages, no module download).
if [ $# -eq 0 ]; then
  command -v cc >/dev/null || need+=(gcc)
  [ -e "$(cc -print-file-name=libc.a 2>/dev/null)" ] || need+=(libc6-dev)
  command -v nm >/dev/null || need+=(binutils)
  command -v ss >/dev/null || need+=(iproute2)
  [ -d /usr/share/nodejs/express ] || need+=(node-express)
  command -v ruby >/dev/null || need+=(ruby)
  ruby -e 'require "webrick"' 2>/dev/null || need+=(ruby-webrick)
  command -v go >/dev/null || need+=(golang-go)
  [ -d /usr/share/gocode/src/github.com/coreos/go-systemd/activation ] || need+=(golang-github-coreos-go-systemd-dev)
  python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
fi
for extra in "$@"; do
  command -v "${extra%%:*}" >/dev/null || need+=("${extra##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "deps: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
# uvicorn, hypercorn and gunicorn come from PyPI, into the python3 on PATH (Debian's own python3 wants the pip flag); so do
# prometheus_client (its parser reads baton's metrics in MetricsTests) and PyYAML (the example alert rules).
if [ $# -eq 0 ] && ! python3 -c 'import uvicorn, hypercorn, gunicorn, prometheus_client, yaml' 2>/dev/null; then
  echo "deps: pip install uvicorn hypercorn gunicorn prometheus_client pyyaml" >&2
  python3 -m pip install -q uvicorn hypercorn gunicorn prometheus_client pyyaml 2>/dev/null ||
    python3 -m pip install -q --break-system-packages uvicorn hypercorn gunicorn prometheus_client pyyaml
fi
