#!/usr/bin/env bash
# baton's main job, end to end: the example Node app under baton, continuous load, reloads while it runs.
# Prints "N requests, 0 failed, K reloads". Options: RELOADS=10 WORKERS=2 PORT=8080.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
RELOADS=${RELOADS:-10}
WORKERS=${WORKERS:-2}
PORT=${PORT:-8080}
swift build --product baton >/dev/null
baton=$(swift build --show-bin-path)/baton
bash preload/build.sh "$(swift build --show-bin-path)" >/dev/null
node=$(command -v node || command -v nodejs)
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT

echo "demo: baton run --listen 127.0.0.1:$PORT --workers $WORKERS --ready fd -- node examples/node/app.js" >&2
"$baton" run --name demo --control "$work/control.sock" --listen "127.0.0.1:$PORT" --workers "$WORKERS" --ready fd \
  -- "$node" examples/node/app.js >"$work/app.log" 2>"$work/baton.log" &
pid=$!
# Ready when `baton status` answers with a serving generation.
until "$baton" status --control "$work/control.sock" 2>/dev/null | grep -q serving; do
  kill -0 "$pid" 2>/dev/null || { cat "$work/baton.log" >&2; exit 1; }
  sleep 0.1
done

python3 tools/loadgen.py --url "http://127.0.0.1:$PORT/" --clients 16 --mode mixed --slow-every 10 --slow-ms 300 \
  --until-file "$work/stop" --duration 600 --json "$work/load.json" 2>"$work/load.log" &
load=$!
for i in $(seq 1 "$RELOADS"); do
  "$baton" reload --quiet --control "$work/control.sock" | sed "s/^/demo: reload $i: /" >&2
done
touch "$work/stop"
wait "$load"
"$baton" status --control "$work/control.sock" >&2
python3 - "$work/load.json" "$RELOADS" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
kinds = ", ".join(f"{k} {s[k]}" for k in ("refused", "reset", "eof_idle", "eof_new", "eof_mid", "timeout", "non2xx") if s.get(k))
print(f"{s['requests']} requests, {s['failed']} failed, {sys.argv[2]} reloads" + (f" ({kinds})" if kinds else ""))
sys.exit(1 if s["failed"] else 0)
PY
