#!/usr/bin/env bash
# Soak test (not in CI): a real mosquitto and the release daemon with two
# watches, steady requests for DURATION seconds; samples the daemon's RSS
# every 10 s and prints the slope per hour (least squares), requests sent
# and answered, and reconnects. Needs `cargo build --release` and mosquitto.
#   scripts/soak.sh [DURATION_S=3600] [RATE_PER_S=2]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-3600}
RATE=${2:-2}
BIN=./target/release/blipd
DIR=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$DIR/mosquitto.conf" <<CONF
listener $PORT 127.0.0.1
allow_anonymous true
persistence false
user $(id -un)
CONF
cat > "$DIR/blipd.toml" <<CONF
device_id = "soak"
threads = 1
state_dir = "$DIR/state"
[limits]
queue = 64
[[camera]]
name = "test"
type = "test_pattern"
[[watch]]
name = "shapes"
prompt = "How many circles are there?"
every = "5s"
[[watch]]
name = "scene"
prompt = "Describe the scene."
every = "7s"
[mqtt]
url = "mqtt://127.0.0.1:$PORT"
CONF
mosquitto -c "$DIR/mosquitto.conf" >/dev/null 2>&1 &
MOSQ=$!
sleep 0.5
"$BIN" serve --config "$DIR/blipd.toml" 2> "$DIR/blipd.log" &
PID=$!
trap 'kill $PID $MOSQ $SUB 2>/dev/null || true; wait 2>/dev/null || true; echo "soak: logs in $DIR"' EXIT
for _ in $(seq 1 300); do grep -q "MQTT connected" "$DIR/blipd.log" && break; sleep 0.1; done
mosquitto_sub -p "$PORT" -t 'blipd/soak/answer/#' > "$DIR/answers" &
SUB=$!
t0=$(date +%s); n=0; next_sample=$t0
: > "$DIR/rss"
while (( $(date +%s) - t0 < DURATION )); do
  now=$(date +%s)
  if (( now >= next_sample )); then
    echo "$((now - t0)) $(awk '/VmRSS/ {print $2}' /proc/$PID/status)" >> "$DIR/rss"
    next_sample=$((now + 10))
  fi
  mosquitto_pub -p "$PORT" -q 1 -t blipd/soak/ask -m "{\"id\":\"s$n\",\"prompt\":\"What colour is the square?\"}"
  n=$((n + 1))
  sleep "$(awk -v r="$RATE" 'BEGIN {print 1 / r}')"
done
sleep 5
answered=$(grep -c '"id":"s' "$DIR/answers" || true)
reconnects=$(grep -c "MQTT reconnected\|MQTT connection lost" "$DIR/blipd.log" || true)
awk -v sent="$n" -v answered="$answered" -v rec="$reconnects" '
  { x[NR] = $1; y[NR] = $2; sx += $1; sy += $2; sxx += $1 * $1; sxy += $1 * $2 }
  END {
    m = (NR * sxy - sx * sy) / (NR * sxx - sx * sx)
    printf "soak: %d s, sent %d, answered %d, reconnects %d\n", x[NR], sent, answered, rec
    printf "soak: RSS %d KiB at start, %d KiB at end; slope %.1f KiB/hour over %d samples\n", y[1], y[NR], m * 3600, NR
  }' "$DIR/rss"
