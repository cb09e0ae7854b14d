#!/usr/bin/env bash
# scripts/startup_time.sh BUNDLE [RUNS]: start-up to online of `blipd serve` on
# BUNDLE with a state_dir (embedded broker on a free port). The first start
# hashes the bundle, the next ones trust the verified stamps (docs/PERFORMANCE.md).
# Warm page cache; needs target/release/blipd and bc.
set -euo pipefail
bundle="$1"; runs="${2:-3}"
d=$(mktemp -d); port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
cat > "$d/blipd.toml" <<TOML
device_id = "startup"
threads = 2
model = "$bundle"
state_dir = "$d/state"
[mqtt]
embedded_listen = "127.0.0.1:$port"
TOML
cat "$bundle"/*.onnx* "$bundle"/llm.gguf > /dev/null   # warm page cache
for i in $(seq 1 "$runs"); do
  : > "$d/log.$i"
  t0=$(date +%s.%N)
  "$(dirname "$0")/../target/release/blipd" serve --config "$d/blipd.toml" 2> "$d/log.$i" &
  pid=$!
  until grep -q "MQTT connected" "$d/log.$i"; do sleep 0.05; done
  t1=$(date +%s.%N)
  printf "start %d: %.1f s to online; %s\n" "$i" "$(echo "$t1 - $t0" | bc)" "$(grep -o 'bundle verified.*' "$d/log.$i" | sed 's/\x1b\[[0-9;]*m//g')"
  kill "$pid"; wait "$pid" || true
done
rm -rf "$d"
