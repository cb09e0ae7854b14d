#!/usr/bin/env bash
# Creates .venv-ha at the repo root with Home Assistant's own package (its
# MQTT discovery schemas), kept apart from the project's .venv. Idempotent:
# like the Makefile's .venv/.stamp, a stamp newer than requirements.txt means
# it's done. Prints the python to use on success.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
req="$root/tests/ha/requirements.txt"
venv="$root/.venv-ha"
stamp="$venv/.stamp"
python="${PYTHON:-python3}"

if [[ ! -f "$stamp" || "$req" -nt "$stamp" ]]; then
  # Start clean: pins may have changed, and a half-finished install isn't kept.
  rm -rf "$venv"
  "$python" -m venv "$venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check --upgrade pip >&2
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$req" >&2
  # Fail here, not in the validator, if the schemas don't import.
  "$venv/bin/python" -c 'import homeassistant.components.mqtt.sensor' >&2
  touch "$stamp"
fi
echo "$venv/bin/python"
