#!/usr/bin/env bash
# scripts/serve_memory.sh BUNDLE [CONFIG_LINE ...]: what `blipd serve` holds
# while answering (docs/PERFORMANCE.md, "Choosing for a board"). Starts the
# release daemon on BUNDLE (embedded broker on a free port, test-pattern
# camera, threads = 2), times start-up to online, asks two questions about
# the camera over MQTT with `blipd ask --mqtt`, then prints the daemon's
# peak and current resident memory (VmHWM, VmRSS from /proc). Extra
# arguments are top-level config lines, e.g. 'n_ctx = 512' 'llm_repack = false'.
# Not in CI (it wants a full-size bundle); needs target/release/blipd.
set -euo pipefail
cd "$(dirname "$0")/.."
bundle="$(realpath "$1")"; shift
bin=./target/release/blipd
d=$(mktemp -d)
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
{
  echo 'device_id = "memcheck"'
  echo 'threads = 2'
  echo "model = \"$bundle\""
  echo "state_dir = \"$d/state\""
  for line in "$@"; do echo "$line"; done
  echo '[[camera]]'
  echo 'name = "test"'
  echo 'type = "test_pattern"'
  echo '[mqtt]'
  echo "embedded_listen = \"127.0.0.1:$port\""
} > "$d/blipd.toml"
out=$("$bin" check-config "$d/blipd.toml" 2>&1) || { echo "$out" >&2; exit 1; }
: > "$d/log"
t0=$(date +%s.%N)
"$bin" serve --config "$d/blipd.toml" 2> "$d/log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$d"' EXIT
until grep -q "MQTT connected" "$d/log"; do
  kill -0 "$pid" 2>/dev/null || { cat "$d/log" >&2; exit 1; }
  sleep 0.05
done
t1=$(date +%s.%N)
for q in "What is in the picture?" "Describe the scene in detail."; do
  "$bin" ask --mqtt "mqtt://127.0.0.1:$port" --device memcheck --timeout 600 "$q" > /dev/null
done
status=/proc/$pid/status
printf "%s %s: online in %.1f s; answering: peak %s MiB, now %s MiB\n" "$(basename "$bundle")" "$*" \
  "$(echo "$t1 - $t0" | bc)" "$(awk '/VmHWM/ {print int($2/1024)}' $status)" "$(awk '/VmRSS/ {print int($2/1024)}' $status)"
