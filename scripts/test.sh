#!/usr/bin/env bash
# baton's test command: installs what it needs, builds once, runs every test.
#   unit tests (the lifecycle state machine, parsers) without processes;
#   system tests with real processes and sockets;
#   end-to-end tests: the example Node and Python apps under load across 20 reloads each.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
swift build --build-tests
swift test --skip-build
