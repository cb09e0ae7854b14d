#!/usr/bin/env bash
# `make run`: starts the daemon on its embedded defaults (embedded MQTT broker,
# test-pattern camera drawing shape scenes, the demo model), asks it one
# question over MQTT, shows the streamed answer and saves the picture it was
# about, then keeps serving until Ctrl-C.
# Extra arguments go to `blipd serve` (e.g. --config systemd/blipd.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=./target/release/blipd
PROMPT=${PROMPT:-Describe the scene.}
SNAPSHOT=${SNAPSHOT:-/tmp/blipd-scene.jpg}
LOG=$(mktemp)
"$BIN" serve "$@" 2> >(tee "$LOG" >&2) &
PID=$!
trap 'kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -f "$LOG"' EXIT
for _ in $(seq 1 300); do
  grep -q 'MQTT connected' "$LOG" && break
  kill -0 "$PID" 2>/dev/null || { echo "run.sh: blipd serve exited; see the log above" >&2; exit 1; }
  sleep 0.1
done
URL=$(grep -o 'broker="[^"]*"' "$LOG" | head -n1 | cut -d'"' -f2)
sleep 0.5
echo "== asking the daemon over MQTT at $URL: $PROMPT" >&2
"$BIN" ask --mqtt "$URL" --stream --snapshot "$SNAPSHOT" "$PROMPT"
echo "== the picture it answered about: $SNAPSHOT (a new scene every 10 s; try \"How many circles are there?\")" >&2
echo "== blipd keeps serving at $URL (topics: docs/mqtt.md); Ctrl-C stops it." >&2
wait "$PID"
