#!/usr/bin/env bash
# Creates .venv-ha with Home Assistant's own package (its MQTT discovery
# schemas, for tests/ha/validate.py); prints the python to use.
exec "$(dirname "${BASH_SOURCE[0]}")/../venv.sh" ha 'import homeassistant.components.mqtt.sensor'
