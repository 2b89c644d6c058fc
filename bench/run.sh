#!/usr/bin/env bash
# baton's bench: baton against the alternatives, same run, same machine. See bench/README.md.
#   bash bench/run.sh            full run (about 14 minutes once baton is built, 5 of them the servers scenario)
#   bash bench/run.sh --quick    about 2 minutes
#   bash bench/run.sh --only servers   uvicorn, hypercorn, Go, express, Node under wrk, with and without the rescue; nginx, HAProxy (about 5 minutes)
#   extra options go to bench/bench.py: --only node,slow,workers4,idle10k,scale,idle,servers  --keep  --no-readme
set -euo pipefail
cd "$(dirname "$0")/.."

# What the bench needs beyond baton's own build dependencies (scripts/deps.sh installs those).
bash scripts/deps.sh
need=()
/usr/bin/python3 -c "import matplotlib" 2>/dev/null || need+=(python3-matplotlib)
command -v gunicorn >/dev/null || need+=(gunicorn)
command -v cc >/dev/null || need+=(gcc)
# The servers scenario: wrk, Go with go-systemd's activation, nginx and HAProxy as peers (express and uvicorn come
# through scripts/deps.sh).
command -v wrk >/dev/null || need+=(wrk)
command -v go >/dev/null || need+=(golang-go)
[ -d /usr/share/gocode/src/github.com/coreos/go-systemd/activation ] || need+=(golang-github-coreos-go-systemd-dev)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
if [ ${#need[@]} -gt 0 ]; then
  echo "bench: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null || echo "bench: could not install ${need[*]}; going on without" >&2
fi
# hypercorn from PyPI, into the python3 on PATH (as scripts/deps.sh does for uvicorn).
if ! python3 -c 'import hypercorn' 2>/dev/null; then
  echo "bench: pip install hypercorn" >&2
  python3 -m pip install -q hypercorn 2>/dev/null || python3 -m pip install -q --break-system-packages hypercorn ||
    echo "bench: could not install hypercorn; going on without" >&2
fi
export PATH=$PATH:/usr/sbin  # nginx and haproxy live there

# 10 000 idle connections: the holder and node need more than 1024 descriptors each (10 000 + a few).
ulimit -Hn 65536 2>/dev/null || true  # needs CAP_SYS_RESOURCE; otherwise the hard limit stays
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 10100 ]; then
  echo "bench: ulimit -n is $(ulimit -n); the 10 000-connection scenario needs more" >&2
fi

# baton's release build as the package builds it (static runtime, its link layout), in a scratch path of its own
# (the tests and other builds keep theirs).
echo "bench: bash packaging/release-build.sh .build-bench" >&2
bash packaging/release-build.sh .build-bench >&2
baton=$PWD/.build-bench/release/baton
# The bind-adoption library beside it (express listens on its own port; baton serves it through adoption).
bash preload/build.sh .build-bench/release >/dev/null

# Debian's python3 (it has python3-matplotlib), also when another python3 comes first in PATH.
py=/usr/bin/python3
[ -x "$py" ] || py=python3

tiny=$(mktemp -d)/tinyapp
trap 'rm -rf "$(dirname "$tiny")"' EXIT
cc -O2 -o "$tiny" bench/tinyapp.c
goapp=$(dirname "$tiny")/goshutdown
if command -v go >/dev/null; then
  GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE=$PWD/.build-bench/go-cache go build -o "$goapp" Tests/Fixtures/rescue/goapp.go ||
    echo "bench: could not build Tests/Fixtures/rescue/goapp.go; the servers scenario goes on without Go" >&2
fi

"$py" bench/bench.py --baton "$baton" --tinyapp "$tiny" --goapp "$goapp" "$@"
