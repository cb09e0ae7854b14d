#!/usr/bin/env python3
"""Check MQTT discovery payloads against Home Assistant's own schemas.

Run with the interpreter that tests/ha/setup.sh prints (.venv-ha, which holds
the `homeassistant` package pinned in tests/ha/requirements.txt).

stdin: one JSON object per line,
    {"topic": "<prefix>/<component>/[<node_id>/]<object_id>/config",
     "payload": <the discovery object as published, or its JSON text>}
An empty payload ("", null, or {}) is a deletion, and HA validates nothing for
one, so it is skipped.

Each payload is processed as homeassistant/components/mqtt/discovery.py
(async_start's message callback) does before it hands it to a platform: the
topic must match its TOPIC_MATCHER and the component be in
SUPPORTED_COMPONENTS; keys are expanded with its ABBREVIATIONS,
DEVICE_ABBREVIATIONS and ORIGIN_ABBREVIATIONS tables (availability entries
too), the origin is checked with MQTT_ORIGIN_INFO_SCHEMA, and the `~` base
topic is substituted; `platform: mqtt` is added. The tables, regex, set and
schemas are imported from HA; the steps themselves are a line-by-line copy of
that callback (a closure that needs a running hass, so it cannot be called),
written against 2024.3.3. Then the result goes through
homeassistant.components.mqtt.<component>.DISCOVERY_SCHEMA, which is what
mixins.async_setup_entity_entry_helper calls. If the sensor module has
validate_sensor_state_and_device_class_config (later HA releases; it is part
of their sensor schema), it is run too.

DISCOVERY_SCHEMA drops keys it does not know (vol.REMOVE_EXTRA), so HA
accepts a misspelt or unsupported key in silence. These are reported as
`WARN <topic>: ignored by Home Assistant <version>: <keys>`; with --strict they
fail.

Prints the HA version first, then `FAIL <topic>: <error>` per failure and
exits 1, or `OK <n> payloads against homeassistant <version>` and exits 0.
No input at all is a failure.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import logging
import sys
from typing import Any

import voluptuous as vol
from homeassistant.const import CONF_DEVICE, CONF_PLATFORM
from homeassistant.const import __version__ as HA_VERSION
from homeassistant.components.mqtt import discovery
from homeassistant.components.mqtt.abbreviations import (
    ABBREVIATIONS,
    DEVICE_ABBREVIATIONS,
    ORIGIN_ABBREVIATIONS,
)
from homeassistant.components.mqtt.const import (
    CONF_AVAILABILITY,
    CONF_ORIGIN,
    CONF_TOPIC,
)
from homeassistant.helpers import config_validation as cv
from homeassistant.util.json import json_loads_object

# The release whose discovery.py the steps in expand() were copied from.
MIRRORED_VERSION = "2024.3.3"


class Failure(Exception):
    """A payload Home Assistant would not set up."""


def expand(payload: dict[str, Any]) -> dict[str, Any]:
    """discovery.py async_discovery_message_received, from the abbreviations
    to `platform: mqtt` (2024.3.3 lines 181-257)."""
    discovery_payload = discovery.MQTTDiscoveryPayload(payload)

    for key in list(discovery_payload):
        abbreviated_key = key
        key = ABBREVIATIONS.get(key, key)
        discovery_payload[key] = discovery_payload.pop(abbreviated_key)

    if CONF_DEVICE in discovery_payload:
        device = discovery_payload[CONF_DEVICE]
        if isinstance(device, dict):  # HA raises on anything else; the schema says why
            for key in list(device):
                abbreviated_key = key
                key = DEVICE_ABBREVIATIONS.get(key, key)
                device[key] = device.pop(abbreviated_key)

    if CONF_ORIGIN in discovery_payload:
        origin_info = discovery_payload[CONF_ORIGIN]
        try:
            for key in list(origin_info):
                abbreviated_key = key
                key = ORIGIN_ABBREVIATIONS.get(key, key)
                origin_info[key] = origin_info.pop(abbreviated_key)
            discovery.MQTT_ORIGIN_INFO_SCHEMA(discovery_payload[CONF_ORIGIN])
        except Exception as err:  # HA drops the message with a warning
            raise Failure(
                "Unable to parse origin information from discovery message, "
                f"got {discovery_payload[CONF_ORIGIN]!r}: {err}"
            ) from err

    if CONF_AVAILABILITY in discovery_payload:
        for availability_conf in cv.ensure_list(discovery_payload[CONF_AVAILABILITY]):
            if isinstance(availability_conf, dict):
                for key in list(availability_conf):
                    abbreviated_key = key
                    key = ABBREVIATIONS.get(key, key)
                    availability_conf[key] = availability_conf.pop(abbreviated_key)

    base_topic = discovery.TOPIC_BASE
    if base_topic in discovery_payload:
        base = discovery_payload.pop(base_topic)
        for key, value in discovery_payload.items():
            if isinstance(value, str) and value:
                if value[0] == base_topic and key.endswith("topic"):
                    discovery_payload[key] = f"{base}{value[1:]}"
                if value[-1] == base_topic and key.endswith("topic"):
                    discovery_payload[key] = f"{value[:-1]}{base}"
        if discovery_payload.get(CONF_AVAILABILITY):
            for availability_conf in cv.ensure_list(
                discovery_payload[CONF_AVAILABILITY]
            ):
                if not isinstance(availability_conf, dict):
                    continue
                if topic := str(availability_conf.get(CONF_TOPIC)):
                    if topic[0] == base_topic:
                        availability_conf[CONF_TOPIC] = f"{base}{topic[1:]}"
                    if topic[-1] == base_topic:
                        availability_conf[CONF_TOPIC] = f"{topic[:-1]}{base}"

    if discovery_payload:
        discovery_payload[CONF_PLATFORM] = "mqtt"
    return discovery_payload


def component_of(topic: str, prefix: str) -> str:
    """The component, as discovery.py reads it off the topic."""
    if not topic.startswith(f"{prefix}/"):
        raise Failure(f"not under the discovery prefix '{prefix}/'")
    topic_trimmed = topic.replace(f"{prefix}/", "", 1)
    if not (match := discovery.TOPIC_MATCHER.match(topic_trimmed)):
        raise Failure(
            "illegal discovery topic (Home Assistant ignores it): it does not "
            f"match {discovery.TOPIC_MATCHER.pattern}"
        )
    component = match.group("component")
    if component not in discovery.SUPPORTED_COMPONENTS:
        raise Failure(f"component '{component}' is not supported by MQTT discovery")
    return component


_schemas: dict[str, Any] = {}


def schema_of(component: str) -> Any:
    if component not in _schemas:
        module = importlib.import_module(f"homeassistant.components.mqtt.{component}")
        schema = getattr(module, "DISCOVERY_SCHEMA", None)
        if schema is None:
            raise Failure(
                f"homeassistant.components.mqtt.{component} has no DISCOVERY_SCHEMA"
            )
        _schemas[component] = schema
    return _schemas[component]


def post_checks(component: str) -> list[Any]:
    """Plain config validators HA applies beyond DISCOVERY_SCHEMA, where the
    installed release has them."""
    checks = []
    if component == "sensor":
        sensor = importlib.import_module("homeassistant.components.mqtt.sensor")
        if fn := getattr(sensor, "validate_sensor_state_and_device_class_config", None):
            checks.append(fn)
    return checks


def validate(topic: str, payload: Any, prefix: str) -> tuple[bool, list[str]]:
    """(validated, keys HA ignores); validated is False for a deletion."""
    component = component_of(topic, prefix)
    if payload is None or payload == "":
        return False, []
    if isinstance(payload, str):
        try:
            payload = json_loads_object(payload)
        except ValueError as err:
            raise Failure(f"Unable to parse JSON: {err}") from err
    elif type(payload) is not dict:  # noqa: E721 (as json_loads_object)
        raise Failure(f"Expected JSON to be parsed as a dict got {type(payload)}")
    expanded = expand(copy.deepcopy(payload))
    if not expanded:  # `{}` is a deletion to HA as well
        return False, []
    given = set(expanded) - {CONF_PLATFORM}
    try:
        config = schema_of(component)(expanded)
        for check in post_checks(component):
            config = check(config)
    except vol.Invalid as err:
        raise Failure(str(err)) from err
    return True, sorted(given - set(config))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--prefix", default="homeassistant", help="discovery prefix (default %(default)s)"
    )
    parser.add_argument(
        "--strict", action="store_true", help="fail on keys Home Assistant ignores"
    )
    args = parser.parse_args()
    # HA's own warnings (deprecated keys ...) go to stderr.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    print(f"homeassistant {HA_VERSION}", flush=True)
    if HA_VERSION != MIRRORED_VERSION:
        print(
            f"WARN validate.py copies discovery.py of {MIRRORED_VERSION}; "
            f"check expand() against {HA_VERSION}",
            file=sys.stderr,
        )

    seen = validated = skipped = failed = 0
    for lineno, line in enumerate(sys.stdin, 1):
        if not line.strip():
            continue
        seen += 1
        try:
            item = json.loads(line)
            topic = item["topic"]
            payload = item.get("payload")
        except (ValueError, KeyError, TypeError) as err:
            print(f"FAIL <stdin line {lineno}>: not a {{topic, payload}} line: {err}")
            failed += 1
            continue
        try:
            done, ignored = validate(topic, payload, args.prefix)
        except Failure as err:
            print(f"FAIL {topic}: {err}")
            failed += 1
            continue
        except Exception as err:  # HA's callback would raise too: dropped
            print(f"FAIL {topic}: {type(err).__name__}: {err}")
            failed += 1
            continue
        if not done:
            print(f"SKIP {topic}: empty payload (deletion)")
            skipped += 1
            continue
        validated += 1
        if ignored:
            verdict = "FAIL" if args.strict else "WARN"
            print(
                f"{verdict} {topic}: ignored by Home Assistant {HA_VERSION}: "
                + ", ".join(ignored)
            )
            if args.strict:
                failed += 1

    if seen == 0:
        print("FAIL no payloads on stdin")
        return 1
    if failed:
        print(f"FAILED {failed} of {seen - skipped} payloads against homeassistant {HA_VERSION}")
        return 1
    print(f"OK {validated} payloads against homeassistant {HA_VERSION}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
